//! Test support: a FUSE filesystem that keeps only what was fsynced, so a test can cut the
//! power under running members and see what a real power loss leaves.
//!
//! A SIGKILL keeps the operating system's page cache, so crash tests on a normal filesystem
//! never lose an unsynced write. [`PowerCut`] serves a directory from memory and models what
//! POSIX promises after a power loss: a file's bytes survive only as of its last `fsync` (or
//! `fdatasync`), and a name created, renamed or removed in a directory survives only once
//! that directory was fsynced. [`PowerCut::cut`] unmounts (the kernel's caches go with it),
//! drops everything unsynced, and mounts the durable state again. Production crates never
//! depend on this crate.
//!
//! # Layout
//! - `model`: the inodes, each with its live and its durable state ([`Stats`]).
//! - `fs`: the FUSE operations over the model, and [`PowerCut`], the mount.

mod fs;
mod model;

pub use fs::PowerCut;
pub use model::Stats;
