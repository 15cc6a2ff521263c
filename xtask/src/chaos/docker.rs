//! `cargo xtask chaos --docker`: the members are containers of the image (`deploy/Dockerfile`),
//! started by docker-compose, and the Docker engine makes the faults: `docker kill` (then
//! `docker start` on the member's volume), `docker pause`/`unpause`, and `docker network
//! disconnect`/`connect`.
//!
//! # Topology
//! A partition has to be real (no packet of the cut link gets through) while the chaos client
//! still reaches every member. So each pair of members has a network of its own (internal: no
//! gateway), and each member has a client network of its own that only it is on, with its
//! client port published on the host's loopback. A member's peer URL names its container;
//! Docker's resolver answers a name only on the networks the asking container shares with it,
//! so member `a` reaches member `b` through their pair network and nothing else. Cutting the
//! link `a`–`b` disconnects `a` from that network; isolating the leader, or splitting 1/2,
//! disconnects it from each of its pair networks, and the client still reaches it through its
//! client network and published port.
//!
//! Each run has its own compose project (containers, networks and volumes prefixed by it), and
//! removes them all at its end, also when it fails (`Drop`).

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use testkit::metric_sum;

use super::faults::Members;

/// How long a started member may take to answer.
const READY: Duration = Duration::from_secs(90);

/// What a run's cluster is made of.
#[derive(Clone, Debug)]
pub struct Spec {
    /// The compose project: every container, network and volume name starts with it.
    pub project: String,
    /// The image every member runs.
    pub image: String,
    /// `--engine`.
    pub engine: String,
    /// The host (loopback) port each member's client port is published on.
    pub ports: Vec<u16>,
    /// Flags every member gets after the cluster's own.
    pub extra_args: Vec<String>,
}

impl Spec {
    /// How many members.
    pub fn size(&self) -> usize {
        self.ports.len()
    }

    /// Member `i`'s container (and host) name.
    pub fn container(&self, i: usize) -> String {
        format!("{}-m{i}", self.project)
    }

    /// The network only members `a` and `b` are on.
    pub fn pair_network(&self, a: usize, b: usize) -> String {
        format!("{}-p{}{}", self.project, a.min(b), a.max(b))
    }

    /// The network only member `i` (and the host, through its published port) is on.
    pub fn client_network(&self, i: usize) -> String {
        format!("{}-c{i}", self.project)
    }

    fn volume(&self, i: usize) -> String {
        format!("{}-data-{i}", self.project)
    }

    fn peer_url(&self, i: usize) -> String {
        format!("http://{}:2380", self.container(i))
    }

    /// Member `i`'s command line after the image's entrypoint.
    pub fn command(&self, i: usize) -> Vec<String> {
        let cluster = (0..self.size())
            .map(|j| format!("m{j}={}", self.peer_url(j)))
            .collect::<Vec<_>>()
            .join(",");
        let mut args = vec![
            format!("--name=m{i}"),
            format!("--initial-advertise-peer-urls={}", self.peer_url(i)),
            format!("--initial-cluster={cluster}"),
            "--initial-cluster-state=new".to_string(),
            format!("--initial-cluster-token={}", self.project),
            format!("--engine={}", self.engine),
        ];
        args.extend(self.extra_args.iter().cloned());
        args
    }

    /// The compose file of the cluster (kept in the results folder to rerun it by hand).
    pub fn compose_file(&self) -> String {
        let n = self.size();
        let mut s = format!(
            "# `cargo xtask chaos --docker`: {n} members, a network per pair of members and a \
             client network per member.\nservices:\n"
        );
        for i in 0..n {
            let _ = writeln!(s, "  m{i}:");
            let _ = writeln!(s, "    image: {}", quote(&self.image));
            let _ = writeln!(s, "    container_name: {}", self.container(i));
            let _ = writeln!(s, "    hostname: {}", self.container(i));
            // As deploy/compose.yaml: read-only root, no capabilities, no privilege gain.
            s.push_str(
                "    read_only: true\n    cap_drop: [ALL]\n    security_opt: [\"no-new-privileges:true\"]\n",
            );
            s.push_str("    command:\n");
            for arg in self.command(i) {
                let _ = writeln!(s, "      - {}", quote(&arg));
            }
            s.push_str("    environment:\n");
            let _ = writeln!(
                s,
                "      ETCD_ADVERTISE_CLIENT_URLS: {}",
                quote(&format!("http://127.0.0.1:{}", self.ports[i]))
            );
            let _ = writeln!(
                s,
                "    ports: [{}]",
                quote(&format!("127.0.0.1:{}:2379", self.ports[i]))
            );
            let _ = writeln!(
                s,
                "    volumes: [{}]",
                quote(&format!("data-{i}:/var/lib/metastore"))
            );
            s.push_str("    networks:\n");
            let _ = writeln!(s, "      - c{i}");
            for j in (0..n).filter(|j| *j != i) {
                let _ = writeln!(s, "      - p{}{}", i.min(j), i.max(j));
            }
        }
        s.push_str("networks:\n");
        for i in 0..n {
            let _ = writeln!(s, "  c{i}:\n    name: {}", self.client_network(i));
        }
        for a in 0..n {
            for b in a + 1..n {
                let _ = writeln!(
                    s,
                    "  p{a}{b}:\n    name: {}\n    internal: true",
                    self.pair_network(a, b)
                );
            }
        }
        s.push_str("volumes:\n");
        for i in 0..n {
            let _ = writeln!(s, "  data-{i}:\n    name: {}", self.volume(i));
        }
        s
    }
}

/// A YAML double-quoted string.
fn quote(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// The faults in force: what [`State::heal`] undoes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct State {
    killed: BTreeSet<usize>,
    paused: BTreeSet<usize>,
    /// (the member disconnected, the other end of the pair network it left).
    disconnected: BTreeSet<(usize, usize)>,
}

/// `docker` and its arguments.
type Cmd = Vec<String>;

fn docker(args: &[&str]) -> Cmd {
    std::iter::once("docker")
        .chain(args.iter().copied())
        .map(String::from)
        .collect()
}

impl State {
    /// Whether member `i` answers (neither killed nor paused).
    pub fn answers(&self, i: usize) -> bool {
        !self.killed.contains(&i) && !self.paused.contains(&i)
    }

    /// Kills member `i`.
    pub fn kill(&mut self, spec: &Spec, i: usize) -> Vec<Cmd> {
        if self.killed.contains(&i) {
            return Vec::new();
        }
        let mut cmds = Vec::new();
        if self.paused.remove(&i) {
            cmds.push(docker(&["unpause", &spec.container(i)]));
        }
        self.killed.insert(i);
        cmds.push(docker(&["kill", "--signal", "KILL", &spec.container(i)]));
        // `docker kill` returns once the signal is sent: a `docker start` before the engine
        // has seen the container exit would find it running, do nothing, and leave it dead.
        cmds.push(docker(&["wait", &spec.container(i)]));
        cmds
    }

    /// Freezes member `i` (the cgroup freezer: every thread stops, connections stay open).
    pub fn pause(&mut self, spec: &Spec, i: usize) -> Vec<Cmd> {
        if self.killed.contains(&i) || !self.paused.insert(i) {
            return Vec::new();
        }
        vec![docker(&["pause", &spec.container(i)])]
    }

    /// Cuts the link `a`–`b`: `a` leaves their pair network.
    pub fn cut(&mut self, spec: &Spec, a: usize, b: usize) -> Vec<Cmd> {
        if a == b || self.disconnected.contains(&(a, b)) || self.disconnected.contains(&(b, a)) {
            return Vec::new();
        }
        self.disconnected.insert((a, b));
        vec![docker(&[
            "network",
            "disconnect",
            "--force",
            &spec.pair_network(a, b),
            &spec.container(a),
        ])]
    }

    /// Undoes every fault: links first (a member started again finds its peers), then paused
    /// members, then killed ones. Each step with its command; a step whose command fails goes
    /// back with [`State::failed`], so the next heal tries it again.
    pub fn heal(&mut self, spec: &Spec) -> Vec<(Undo, Cmd)> {
        let mut steps = Vec::new();
        for (a, b) in std::mem::take(&mut self.disconnected) {
            let cmd = docker(&[
                "network",
                "connect",
                &spec.pair_network(a, b),
                &spec.container(a),
            ]);
            steps.push((Undo::Connect(a, b), cmd));
        }
        for i in std::mem::take(&mut self.paused) {
            steps.push((Undo::Unpause(i), docker(&["unpause", &spec.container(i)])));
        }
        for i in std::mem::take(&mut self.killed) {
            steps.push((Undo::Start(i), docker(&["start", &spec.container(i)])));
        }
        steps
    }

    /// Puts back a fault whose undoing failed.
    pub fn failed(&mut self, undo: Undo) {
        match undo {
            Undo::Connect(a, b) => self.disconnected.insert((a, b)),
            Undo::Unpause(i) => self.paused.insert(i),
            Undo::Start(i) => self.killed.insert(i),
        };
    }
}

/// One step of a heal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Undo {
    /// Member `.0` joins its pair network with `.1` again.
    Connect(usize, usize),
    /// Member `.0` is unpaused.
    Unpause(usize),
    /// Member `.0` is started again on its volume.
    Start(usize),
}

/// Runs a command; its stdout, or an error with its stderr.
fn exec(cmd: &[String]) -> Result<String> {
    let (program, args) = cmd.split_first().context("an empty command")?;
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("running {}", cmd.join(" ")))?;
    if !out.status.success() {
        bail!(
            "`{}` failed ({}): {}",
            cmd.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Fails with `docker info`'s own message when there is no engine to talk to.
pub fn check_engine(image: &str) -> Result<()> {
    let out = Command::new("docker")
        .args(["info", "--format", "{{.ServerVersion}}"])
        .output()
        .context("running `docker info` (is Docker installed?)")?;
    if !out.status.success() {
        bail!(
            "`docker info` failed: {}{}",
            String::from_utf8_lossy(&out.stderr).trim(),
            String::from_utf8_lossy(&out.stdout).trim()
        );
    }
    if exec(&docker(&["image", "inspect", "--format", "{{.Id}}", image])).is_err() {
        bail!(
            "no image {image}: build it with `deploy/build-image.sh` (`PROFILE=dev` for the \
             debug binary; no registry is needed)"
        );
    }
    Ok(())
}

/// A cluster of containers; removed with everything it made when dropped.
pub struct DockerCluster {
    spec: Spec,
    compose: PathBuf,
    /// Where the members' logs are saved before the containers go.
    logs: PathBuf,
    state: State,
    /// Once `up` ran: there is something to remove.
    up: bool,
}

impl DockerCluster {
    /// Writes the compose file into `out`, starts the members and waits until each answers
    /// and one leads.
    ///
    /// # Errors
    /// The engine refused, or the cluster did not come up (everything made is removed).
    pub fn start(spec: Spec, out: &Path) -> Result<Self> {
        let compose = out.join("compose.yaml");
        std::fs::write(&compose, spec.compose_file())
            .with_context(|| format!("writing {}", compose.display()))?;
        let cluster = Self {
            spec,
            compose,
            logs: out.join("members.log"),
            state: State::default(),
            up: true,
        };
        exec(&cluster.compose_cmd(&["up", "-d", "--no-build"])).context("docker-compose up")?;
        for i in 0..cluster.spec.size() {
            cluster.wait_answers(i)?;
        }
        cluster
            .wait_leader(READY)
            .map_err(anyhow::Error::msg)
            .context("the containers elected no leader")?;
        Ok(cluster)
    }

    fn compose_cmd(&self, args: &[&str]) -> Cmd {
        let compose = self.compose.to_string_lossy();
        ["docker-compose", "-p", &self.spec.project, "-f", &compose]
            .into_iter()
            .chain(args.iter().copied())
            .map(String::from)
            .collect()
    }

    fn wait_answers(&self, i: usize) -> Result<()> {
        let started = Instant::now();
        while testkit::http_get(self.spec.ports[i], "/health").is_none() {
            if started.elapsed() > READY {
                bail!(
                    "{} did not answer within {READY:?}; see {}",
                    self.spec.container(i),
                    self.logs.display()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }

    fn run_all(cmds: &[Cmd]) {
        for cmd in cmds {
            if let Err(e) = exec(cmd) {
                eprintln!("chaos: {e:#}");
            }
        }
    }
}

impl Members for DockerCluster {
    fn size(&self) -> usize {
        self.spec.size()
    }

    fn endpoints(&self) -> Vec<String> {
        self.spec
            .ports
            .iter()
            .map(|p| format!("http://127.0.0.1:{p}"))
            .collect()
    }

    fn metric(&self, i: usize, name: &str) -> Option<f64> {
        // A paused member's published port still accepts (the engine's proxy answers), and the
        // read would wait for its timeout.
        if !self.state.answers(i) {
            return None;
        }
        let (_, body) = testkit::http_get(self.spec.ports[i], "/metrics")?;
        metric_sum(&body, name)
    }

    fn kill(&mut self, i: usize) {
        Self::run_all(&self.state.kill(&self.spec, i));
    }

    fn freeze(&mut self, i: usize) {
        Self::run_all(&self.state.pause(&self.spec, i));
    }

    fn cut_both(&mut self, a: usize, b: usize) {
        Self::run_all(&self.state.cut(&self.spec, a, b));
    }

    // One-way cuts, delays and connection resets are refused at the command line
    // (`Kind::DOCKER`): the engine has no way to make them.
    fn cut(&mut self, _from: usize, _to: usize) {}
    fn slow(&mut self, _from: usize, _to: usize, _delay: Duration) {}
    fn drop_connections(&mut self) {}

    fn heal(&mut self) {
        let mut started = Vec::new();
        for (undo, cmd) in self.state.heal(&self.spec) {
            match exec(&cmd) {
                Ok(_) => {
                    if let Undo::Start(i) = undo {
                        started.push(i);
                    }
                }
                Err(e) => {
                    eprintln!("chaos: {e:#}");
                    self.state.failed(undo);
                }
            }
        }
        for i in started {
            if let Err(e) = self.wait_answers(i) {
                eprintln!("chaos: {e:#}");
            }
        }
    }

    fn restart_all(&mut self) -> Result<(), String> {
        self.heal();
        for i in 0..self.size() {
            let cmds = self.state.kill(&self.spec, i);
            Self::run_all(&cmds);
        }
        for (_, cmd) in self.state.heal(&self.spec) {
            exec(&cmd).map_err(|e| format!("{e:#}"))?;
        }
        for i in 0..self.size() {
            self.wait_answers(i).map_err(|e| format!("{e:#}"))?;
        }
        Ok(())
    }
}

impl Drop for DockerCluster {
    fn drop(&mut self) {
        if !self.up {
            return;
        }
        self.up = false;
        // Unpause first: a paused container cannot be stopped.
        for i in std::mem::take(&mut self.state.paused) {
            let _ = exec(&docker(&["unpause", &self.spec.container(i)]));
        }
        match exec(&self.compose_cmd(&["logs", "--no-color", "--timestamps"])) {
            Ok(logs) => {
                let _ = std::fs::write(&self.logs, logs);
            }
            Err(e) => eprintln!("chaos: saving the members' logs: {e:#}"),
        }
        if let Err(e) = exec(&self.compose_cmd(&["down", "-v", "--remove-orphans", "-t", "1"])) {
            eprintln!(
                "chaos: removing project {}: {e:#}; remove its containers, networks and \
                 volumes by hand",
                self.spec.project
            );
        }
    }
}

/// A project name no other run on this engine has: the process id and the time.
pub fn project_name(seed: u64) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("mschaos-{seed}-{}-{}", std::process::id(), nanos % 100_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> Spec {
        Spec {
            project: "p".into(),
            image: "metastore:local".into(),
            engine: "mem".into(),
            ports: vec![1000, 1001, 1002],
            extra_args: vec!["--log-level=warn".into()],
        }
    }

    fn line(cmds: &[Cmd]) -> Vec<String> {
        cmds.iter().map(|c| c.join(" ")).collect()
    }

    fn heal(st: &mut State, s: &Spec) -> Vec<String> {
        let steps = st.heal(s);
        line(&steps.into_iter().map(|(_, c)| c).collect::<Vec<_>>())
    }

    /// Each member is on its own client network and on one network per peer, and on no other:
    /// so a cut link has no other path, and the client reaches an isolated member.
    #[test]
    fn every_pair_of_members_has_a_network_of_its_own() {
        let s = spec();
        let file = s.compose_file();
        let member = |i: usize| {
            let start = file.find(&format!("  m{i}:\n")).unwrap();
            let rest = &file[start + 3..];
            let end = rest
                .find("\n  m")
                .or_else(|| rest.find("\nnetworks:"))
                .unwrap();
            rest[..end].to_string()
        };
        assert!(
            member(0).contains("- c0\n      - p01\n      - p02"),
            "{file}"
        );
        assert!(
            member(1).contains("- c1\n      - p01\n      - p12"),
            "{file}"
        );
        assert!(
            member(2).contains("- c2\n      - p02\n      - p12"),
            "{file}"
        );
        assert!(
            file.contains("  p12:\n    name: p-p12\n    internal: true"),
            "{file}"
        );
        assert!(file.contains("  c2:\n    name: p-c2\n"), "{file}");
        assert!(
            !file.contains("  c2:\n    name: p-c2\n    internal"),
            "{file}"
        );
        assert!(
            member(1).contains("ports: [\"127.0.0.1:1001:2379\"]"),
            "{file}"
        );
        assert!(
            member(1).contains("volumes: [\"data-1:/var/lib/metastore\"]"),
            "{file}"
        );
        assert!(file.contains("  data-1:\n    name: p-data-1"), "{file}");
        assert_eq!(
            s.command(1),
            [
                "--name=m1",
                "--initial-advertise-peer-urls=http://p-m1:2380",
                "--initial-cluster=m0=http://p-m0:2380,m1=http://p-m1:2380,m2=http://p-m2:2380",
                "--initial-cluster-state=new",
                "--initial-cluster-token=p",
                "--engine=mem",
                "--log-level=warn",
            ]
        );
    }

    /// Isolating a member disconnects it from each pair network it is on, and healing
    /// connects it again; a kill is undone by a start on the same volume.
    #[test]
    fn faults_are_docker_commands_and_heal_undoes_each() {
        let s = spec();
        let mut st = State::default();
        let mut cmds = Vec::new();
        for other in [0, 2] {
            cmds.extend(st.cut(&s, 1, other));
        }
        // The same link again, from either end, is already cut.
        assert!(st.cut(&s, 0, 1).is_empty());
        assert_eq!(
            line(&cmds),
            [
                "docker network disconnect --force p-p01 p-m1",
                "docker network disconnect --force p-p12 p-m1",
            ]
        );
        assert_eq!(
            heal(&mut st, &s),
            [
                "docker network connect p-p01 p-m1",
                "docker network connect p-p12 p-m1",
            ]
        );
        assert_eq!(st, State::default());

        assert_eq!(line(&st.pause(&s, 2)), ["docker pause p-m2"]);
        assert!(!st.answers(2));
        // Killing a paused member unpauses it first.
        assert_eq!(
            line(&st.kill(&s, 2)),
            [
                "docker unpause p-m2",
                "docker kill --signal KILL p-m2",
                "docker wait p-m2"
            ]
        );
        assert!(st.kill(&s, 2).is_empty());
        let steps = st.heal(&s);
        assert_eq!(steps.len(), 1);
        assert_eq!(steps[0].0, Undo::Start(2));
        assert_eq!(steps[0].1.join(" "), "docker start p-m2");
        assert!(st.answers(2));
    }

    /// A heal step that failed is tried again by the next heal, so a failed `network connect`
    /// cannot leave a link cut for the rest of the run.
    #[test]
    fn a_failed_heal_step_is_retried_by_the_next_heal() {
        let s = spec();
        let mut st = State::default();
        st.cut(&s, 0, 2);
        st.kill(&s, 1);
        let steps = st.heal(&s);
        assert_eq!(st, State::default());
        for (undo, _) in steps {
            st.failed(undo);
        }
        assert_eq!(
            heal(&mut st, &s),
            ["docker network connect p-p02 p-m0", "docker start p-m1"]
        );
    }

    #[test]
    fn metrics_are_summed_over_series_and_names_match_whole() {
        let page = "# HELP x\nx_total 1\nx{a=\"1\"} 2\nx 3\nxy 10\n";
        assert_eq!(metric_sum(page, "x"), Some(5.0));
        assert_eq!(metric_sum(page, "z"), None);
    }

    #[test]
    fn quoting_keeps_yaml_strings_whole() {
        assert_eq!(quote(r#"a"b\c"#), r#""a\"b\\c""#);
    }
}
