//! One server process under watch: MetaStore or etcd started with the flags that place a
//! member, its output appended to a log file, polled until it serves, signalled (SIGKILL,
//! SIGSTOP/SIGCONT, SIGTERM), started again on the same data directory, killed on drop.

use std::ffi::OsStr;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// How much of a log's end goes into a failure message.
const LOG_TAIL_BYTES: u64 = 6000;

/// How often a wait looks again.
const POLL: Duration = Duration::from_millis(50);

/// The flags that place one member, in the form both MetaStore and etcd take them.
#[derive(Clone, Debug)]
pub struct Placement {
    /// `--name`.
    pub name: String,
    /// `--data-dir`.
    pub data_dir: PathBuf,
    /// `--listen-client-urls` and `--advertise-client-urls`.
    pub client_url: String,
    /// `--listen-peer-urls`.
    pub listen_peer_url: String,
    /// `--initial-advertise-peer-urls` (a proxy's, when peers are proxied).
    pub peer_url: String,
    /// `--initial-cluster`.
    pub initial_cluster: String,
    /// `--initial-cluster-state`, when given (`new` when not).
    pub state: Option<&'static str>,
}

impl Placement {
    /// Adds the flags to `command`.
    pub fn add_to(&self, command: &mut Command) {
        command
            .args(["--name", &self.name])
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(["--listen-client-urls", &self.client_url])
            .args(["--advertise-client-urls", &self.client_url])
            .args(["--listen-peer-urls", &self.listen_peer_url])
            .args(["--initial-advertise-peer-urls", &self.peer_url])
            .args(["--initial-cluster", &self.initial_cluster]);
        if let Some(state) = self.state {
            command.args(["--initial-cluster-state", state]);
        }
    }
}

/// A command for a server `program` that reads its configuration from flags only: a stray
/// `ETCD*` or `METASTORE*` variable of the caller's would change one server alone. `etcd`:
/// it is etcd 3.4, told this architecture where it refuses it unless told.
pub fn server_command(program: impl AsRef<OsStr>, etcd: bool) -> Command {
    let mut command = Command::new(program);
    for (name, _) in std::env::vars_os() {
        let text = name.to_string_lossy();
        if text.starts_with("ETCD") || text.starts_with("METASTORE") {
            command.env_remove(&name);
        }
    }
    if etcd && std::env::consts::ARCH != "x86_64" {
        command.env("ETCD_UNSUPPORTED_ARCH", go_arch());
    }
    command
}

/// Go's name for this architecture, which `ETCD_UNSUPPORTED_ARCH` must match.
fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .args([sig, &pid.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// One server's process, one incarnation at a time, with one log for all of them.
#[derive(Debug)]
pub struct Process {
    /// What failure messages call it.
    label: String,
    log: PathBuf,
    child: Option<Child>,
    frozen: bool,
}

impl Process {
    /// A process not started yet, called `label` in messages, whose output goes to `log`.
    pub fn new(label: impl Into<String>, log: PathBuf) -> Process {
        Process {
            label: label.into(),
            log,
            child: None,
            frozen: false,
        }
    }

    /// Spawns `command` (from [`server_command`]) with its output appended to the log.
    ///
    /// # Errors
    /// The previous incarnation still runs, the log cannot be opened, or the spawn failed.
    pub fn start(&mut self, mut command: Command) -> Result<(), String> {
        if self.child.is_some() {
            return Err(format!("{} is already running", self.label));
        }
        let out = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(|e| format!("opening {}: {e}", self.log.display()))?;
        let err = out.try_clone().map_err(|e| e.to_string())?;
        let child = command
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("spawning {}: {e}", self.label))?;
        self.child = Some(child);
        self.frozen = false;
        Ok(())
    }

    /// Its process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether it runs (frozen or not), as far as it was last looked at.
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Whether it is stopped with SIGSTOP.
    pub fn is_frozen(&self) -> bool {
        self.frozen
    }

    /// Its exit status if it has ended (it is reaped then, and no longer running).
    ///
    /// # Errors
    /// The status could not be read.
    pub fn exited(&mut self) -> Result<Option<ExitStatus>, String> {
        let Some(child) = self.child.as_mut() else {
            return Ok(None);
        };
        let status = child.try_wait().map_err(|e| e.to_string())?;
        if status.is_some() {
            self.child = None;
            self.frozen = false;
        }
        Ok(status)
    }

    /// Polls `ready` until it says yes, for up to `limit`.
    ///
    /// # Errors
    /// The process exited (the message says "exited with" its status) or was not ready in
    /// time; either with the end of its log.
    pub fn wait_ready(
        &mut self,
        limit: Duration,
        mut ready: impl FnMut() -> bool,
    ) -> Result<(), String> {
        let started = Instant::now();
        loop {
            if let Some(status) = self.exited()? {
                return Err(format!(
                    "{} exited with {status}; its log:\n{}",
                    self.label,
                    self.log_tail()
                ));
            }
            if ready() {
                return Ok(());
            }
            if started.elapsed() > limit {
                return Err(format!(
                    "{} was not ready within {limit:?}; its log:\n{}",
                    self.label,
                    self.log_tail()
                ));
            }
            std::thread::sleep(POLL);
        }
    }

    /// SIGKILL it (after SIGCONT, if frozen) and reap it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            if self.frozen {
                signal(child.id(), "-CONT");
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        self.frozen = false;
    }

    /// SIGSTOP it: it holds its connections and answers nothing.
    pub fn freeze(&mut self) {
        if let Some(pid) = self.pid() {
            signal(pid, "-STOP");
            self.frozen = true;
        }
    }

    /// SIGCONT it.
    pub fn thaw(&mut self) {
        if let Some(pid) = self.pid() {
            signal(pid, "-CONT");
            self.frozen = false;
        }
    }

    /// Sends SIGTERM and waits up to `limit` for it to exit; `None` if it did not.
    ///
    /// # Errors
    /// It was not running, or the signal could not be sent.
    pub fn terminate(&mut self, limit: Duration) -> Result<Option<ExitStatus>, String> {
        let pid = self
            .pid()
            .ok_or_else(|| format!("{} is not running", self.label))?;
        let sent = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .map_err(|e| format!("running kill -TERM: {e}"))?;
        if !sent.success() {
            return Err(format!("kill -TERM {pid} failed: {sent}"));
        }
        let started = Instant::now();
        loop {
            if let Some(status) = self.exited()? {
                return Ok(Some(status));
            }
            if started.elapsed() > limit {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The log file (every incarnation's output).
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The whole log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The log's length in bytes, to read what comes after with [`Process::log_since`].
    pub fn log_len(&self) -> u64 {
        std::fs::metadata(&self.log).map_or(0, |m| m.len())
    }

    /// The log from byte `offset` on.
    pub fn log_since(&self, offset: u64) -> String {
        let mut bytes = Vec::new();
        if let Ok(mut f) = File::open(&self.log) {
            if f.seek(SeekFrom::Start(offset)).is_ok() {
                let _ = f.read_to_end(&mut bytes);
            }
        }
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// The end of the log, for failure messages.
    pub fn log_tail(&self) -> String {
        let text = self.log_since(self.log_len().saturating_sub(LOG_TAIL_BYTES));
        // A cut inside a character shows as U+FFFD at the start: drop it.
        text.trim_start_matches('\u{FFFD}').to_string()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}
