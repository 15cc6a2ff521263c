//! Test support: clusters of real `metastore` processes on loopback ports, and the faults the
//! tests and `cargo xtask chaos` inject into them (SIGKILL, SIGSTOP/SIGCONT, restarts).
//!
//! It owns processes, ports and data directories; it must not know about the server's code:
//! it runs the binary it is given and reads the member's plain-HTTP endpoints. Only test code
//! and xtask depend on it.
//!
//! # Layout
//! - `ports`: free loopback ports, never handed out twice in one process.
//! - `process`: [`Process`], one server process under watch (start with a member's flags, wait
//!   until it serves, signals, restarts on the same data, its log), for every other module here,
//!   the server's tests and xtask's benchmarks.
//! - `cluster`: [`Cluster`] and its [`Member`]s.
//! - `proxy`: [`Net`], fault-injecting proxies in front of the members' peer ports.

mod cluster;
mod ports;
mod process;
mod proxy;

pub use cluster::{http_get, metric_sum, wait_leader, Cluster, ClusterOptions, Member};
pub use ports::free_port;
pub use process::{server_command, Placement, Process};
pub use proxy::{source_addr, Net};
