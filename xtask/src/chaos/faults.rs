//! The fault schedule of a chaos run: drawn from the seed, applied to the members through an
//! [`Members`] (a local cluster with its peer proxies, or containers under the Docker engine),
//! each fault held for a while and then healed. The schedule is the same code for both: only
//! how a fault is made differs.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use testkit::Cluster;

use crate::bench::XorShift;

/// The members under test and how faults are made on them.
pub trait Members: Send {
    /// How many members there are.
    fn size(&self) -> usize;
    /// Every member's client URL, in member order.
    fn endpoints(&self) -> Vec<String>;
    /// A metric of member `i` (the sum of its series), if it answers.
    fn metric(&self, i: usize, name: &str) -> Option<f64>;
    /// SIGKILL member `i`; [`Members::heal`] starts it again on its data.
    fn kill(&mut self, i: usize);
    /// Stop member `i` answering anything while it keeps its connections.
    fn freeze(&mut self, i: usize);
    /// Cut both directions between members `a` and `b`.
    fn cut_both(&mut self, a: usize, b: usize);
    /// Cut the direction from `from` to `to` only.
    fn cut(&mut self, from: usize, to: usize);
    /// Delay what `from` sends to `to`.
    fn slow(&mut self, from: usize, to: usize, delay: Duration);
    /// Close every peer connection at once.
    fn drop_connections(&mut self);
    /// Removes every fault: links, frozen members, killed ones (started again).
    fn heal(&mut self);
    /// Kills every member, starts each again on its data and waits until each answers.
    ///
    /// # Errors
    /// A member did not come back.
    fn restart_all(&mut self) -> Result<(), String>;

    /// The member that says it leads.
    fn leader(&self) -> Option<usize> {
        (0..self.size()).find(|i| self.metric(*i, "etcd_server_is_leader") == Some(1.0))
    }

    /// Waits up to `limit` for a leader.
    ///
    /// # Errors
    /// None within `limit`.
    fn wait_leader(&self, limit: Duration) -> Result<usize, String> {
        testkit::wait_leader(limit, || self.leader())
    }
}

/// Processes on this host, signals, and the in-process peer proxies.
impl Members for Cluster {
    fn size(&self) -> usize {
        self.members().len()
    }
    fn endpoints(&self) -> Vec<String> {
        Cluster::endpoints(self)
    }
    fn metric(&self, i: usize, name: &str) -> Option<f64> {
        Cluster::metric(self, i, name)
    }
    fn leader(&self) -> Option<usize> {
        Cluster::leader(self)
    }
    fn kill(&mut self, i: usize) {
        Cluster::kill(self, i);
    }
    fn freeze(&mut self, i: usize) {
        Cluster::freeze(self, i);
    }
    fn cut_both(&mut self, a: usize, b: usize) {
        if let Some(net) = self.net() {
            net.cut_both(a, b);
        }
    }
    fn cut(&mut self, from: usize, to: usize) {
        if let Some(net) = self.net() {
            net.cut(from, to);
        }
    }
    fn slow(&mut self, from: usize, to: usize, delay: Duration) {
        if let Some(net) = self.net() {
            net.slow(from, to, delay);
        }
    }
    fn drop_connections(&mut self) {
        if let Some(net) = self.net() {
            net.drop_connections();
        }
    }
    fn heal(&mut self) {
        if let Some(net) = self.net() {
            net.heal();
        }
        for i in 0..self.members().len() {
            if self.member(i).is_frozen() {
                self.thaw(i);
            }
            if !self.member(i).is_running() {
                if let Err(e) = self.restart(i) {
                    eprintln!("chaos: restarting m{i} failed: {e}");
                }
            }
        }
    }
    fn restart_all(&mut self) -> Result<(), String> {
        for i in 0..self.members().len() {
            Cluster::kill(self, i);
        }
        for i in 0..self.members().len() {
            self.restart(i)?;
        }
        Ok(())
    }
}

/// A kind of fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// SIGKILL a member (the leader or a follower), restart it when healed.
    Kill,
    /// SIGKILL a member under load and start it again within a second: what it proposed
    /// before may be applied after, by its next incarnation.
    Restart,
    /// SIGSTOP a member, SIGCONT it when healed.
    Stop,
    /// Cut both directions between the leader and every other member.
    IsolateLeader,
    /// Split the members into a minority and a majority.
    Split,
    /// Cut one direction of one link.
    Asymmetric,
    /// Delay every link of one member.
    Latency,
    /// Close every peer connection at once.
    DropConnections,
}

impl Kind {
    /// Every kind, in the order `--faults all` lists them.
    pub const ALL: [Kind; 8] = [
        Kind::Kill,
        Kind::Restart,
        Kind::Stop,
        Kind::IsolateLeader,
        Kind::Split,
        Kind::Asymmetric,
        Kind::Latency,
        Kind::DropConnections,
    ];

    /// The kinds the Docker engine can make (`--docker`): a one-way cut, a delay and a reset
    /// of connections need a packet filter inside the member's network namespace, which the
    /// image (no capabilities, no tools) does not have.
    pub const DOCKER: [Kind; 5] = [
        Kind::Kill,
        Kind::Restart,
        Kind::Stop,
        Kind::IsolateLeader,
        Kind::Split,
    ];

    /// The kinds of `list` (as [`Kind::parse_list`]) that `--docker` makes: those a group
    /// (`all`, `partition`) named and Docker cannot make are left out; one named alone is an
    /// error.
    pub fn parse_docker_list(list: &str) -> Result<Vec<Kind>, String> {
        let kinds = Kind::parse_list(list)?;
        let named: Vec<&str> = list.split(',').map(str::trim).collect();
        if let Some(k) = kinds
            .iter()
            .find(|k| !Kind::DOCKER.contains(k) && named.contains(&k.name()))
        {
            return Err(format!(
                "--docker cannot make `{}` faults; it makes: {}",
                k.name(),
                Kind::DOCKER.map(Kind::name).join(", ")
            ));
        }
        Ok(kinds
            .into_iter()
            .filter(|k| Kind::DOCKER.contains(k))
            .collect())
    }

    /// Its name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Kill => "kill",
            Kind::Restart => "restart",
            Kind::Stop => "stop",
            Kind::IsolateLeader => "isolate-leader",
            Kind::Split => "split",
            Kind::Asymmetric => "asymmetric",
            Kind::Latency => "latency",
            Kind::DropConnections => "drop-connections",
        }
    }

    /// The kinds named in a comma-separated list; `all`, and `partition` for every cut.
    pub fn parse_list(list: &str) -> Result<Vec<Kind>, String> {
        let mut out = Vec::new();
        for name in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            match name {
                "all" => out.extend(Kind::ALL),
                "partition" => out.extend([Kind::IsolateLeader, Kind::Split, Kind::Asymmetric]),
                _ => out.push(
                    Kind::ALL
                        .into_iter()
                        .find(|k| k.name() == name)
                        .ok_or_else(|| {
                            format!(
                                "unknown fault `{name}`; try: all, partition, {}",
                                Kind::ALL.map(Kind::name).join(", ")
                            )
                        })?,
                ),
            }
        }
        out.dedup();
        if out.is_empty() {
            return Err("no fault named".into());
        }
        Ok(out)
    }
}

/// One entry of the timeline: when (seconds into the run), and what.
#[derive(Clone, Debug)]
pub struct Event {
    pub at: f64,
    pub what: String,
    /// Which kind of fault.
    pub kind: Kind,
    /// The fault began (true) or was healed (false).
    pub begins: bool,
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:8.2}s  {}", self.at, self.what)
    }
}

fn lock<T: ?Sized>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// How many faults of each kind began, in [`Kind::ALL`]'s order, as `kill 3, stop 1`.
pub fn count_by_kind(timeline: &[Event]) -> String {
    Kind::ALL
        .iter()
        .filter_map(|k| {
            let n = timeline.iter().filter(|e| e.begins && e.kind == *k).count();
            (n > 0).then(|| format!("{} {n}", k.name()))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Waits `d`, or less if `stop` is set meanwhile.
fn nap(d: Duration, stop: &AtomicBool) {
    let until = Instant::now() + d;
    while Instant::now() < until && !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(20).min(until - Instant::now()));
    }
}

/// Applies faults from `kinds` until `end` (less a calm tail) or `stop`, then heals everything.
/// Returns the timeline.
pub fn run(
    cluster: &Arc<Mutex<dyn Members>>,
    kinds: &[Kind],
    seed: u64,
    start: Instant,
    end: Instant,
    stop: &AtomicBool,
) -> Vec<Event> {
    let mut rng = XorShift::new(seed ^ 0xfa17);
    let mut timeline = Vec::new();
    let at = || start.elapsed().as_secs_f64();
    let calm_tail = Duration::from_secs(5);
    loop {
        nap(Duration::from_millis(1_000 + rng.below(3_000) as u64), stop);
        if stop.load(Ordering::Relaxed) || Instant::now() + calm_tail >= end {
            break;
        }
        let kind = kinds[rng.below(kinds.len())];
        let hold = Duration::from_millis(1_500 + rng.below(4_000) as u64);
        let (n, leader) = {
            let c = lock(cluster);
            (c.size(), c.leader())
        };
        let target = if rng.below(2) == 0 {
            leader.unwrap_or(0)
        } else {
            rng.below(n)
        };
        let role = if Some(target) == leader {
            "leader"
        } else {
            "follower"
        };
        let what;
        // A restart is not held: the member comes back this soon after its kill, and in a
        // crash loop is killed again this many more times, each soon after it answered.
        let mut back_after = None;
        let mut again = 0;
        {
            let mut c = lock(cluster);
            match kind {
                Kind::Kill => {
                    c.kill(target);
                    what = format!("kill m{target} ({role})");
                }
                Kind::Restart => {
                    c.kill(target);
                    let down = Duration::from_millis(rng.below(1_000) as u64);
                    back_after = Some(down);
                    // Half of the restarts are crash loops: an incarnation that dies young
                    // has requests in flight with the small ids its successor hands out too.
                    again = if rng.below(2) == 0 {
                        1 + rng.below(2)
                    } else {
                        0
                    };
                    what = format!(
                        "restart m{target} ({role}) after {down:?}{}",
                        if again > 0 {
                            format!(", then {again} more times as soon as it answers")
                        } else {
                            String::new()
                        }
                    );
                }
                Kind::Stop => {
                    c.freeze(target);
                    what = format!("SIGSTOP m{target} ({role})");
                }
                Kind::IsolateLeader => {
                    let l = leader.unwrap_or(target);
                    for other in (0..n).filter(|o| *o != l) {
                        c.cut_both(l, other);
                    }
                    what = format!("isolate the leader m{l}");
                }
                Kind::Split => {
                    let minority = (n - 1) / 2;
                    let mut members: Vec<usize> = (0..n).collect();
                    rng.shuffle(&mut members);
                    let (small, big) = members.split_at(minority.max(1));
                    for a in small {
                        for b in big {
                            c.cut_both(*a, *b);
                        }
                    }
                    what = format!("split {small:?} | {big:?}");
                }
                Kind::Asymmetric => {
                    let from = target;
                    let to = (from + 1 + rng.below(n - 1)) % n;
                    c.cut(from, to);
                    what = format!("cut m{from} -> m{to} only");
                }
                Kind::Latency => {
                    let delay = Duration::from_millis(20 + rng.below(180) as u64);
                    for other in (0..n).filter(|o| *o != target) {
                        c.slow(target, other, delay);
                        c.slow(other, target, delay);
                    }
                    what = format!("delay every link of m{target} by {delay:?}");
                }
                Kind::DropConnections => {
                    c.drop_connections();
                    what = "drop every peer connection".to_string();
                }
            }
        }
        timeline.push(Event {
            at: at(),
            what: what.clone(),
            kind,
            begins: true,
        });
        nap(back_after.unwrap_or(hold), stop);
        heal(cluster);
        for _ in 0..again {
            nap(Duration::from_millis(rng.below(300) as u64), stop);
            lock(cluster).kill(target);
            nap(back_after.unwrap_or_default(), stop);
            heal(cluster);
        }
        timeline.push(Event {
            at: at(),
            what: format!("heal: {what}"),
            kind,
            begins: false,
        });
    }
    heal(cluster);
    timeline
}

/// Removes every fault.
pub fn heal(cluster: &Arc<Mutex<dyn Members>>) {
    lock(cluster).heal();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restarts_are_in_the_default_mix_and_can_be_named() {
        assert!(Kind::parse_list("all").unwrap().contains(&Kind::Restart));
        assert_eq!(
            Kind::parse_list("restart,kill").unwrap(),
            [Kind::Restart, Kind::Kill]
        );
    }

    #[test]
    fn faults_are_counted_by_kind() {
        let e = |kind, begins| Event {
            at: 0.0,
            what: String::new(),
            kind,
            begins,
        };
        let timeline = [
            e(Kind::Split, true),
            e(Kind::Split, false),
            e(Kind::Kill, true),
            e(Kind::Kill, false),
            e(Kind::Split, true),
        ];
        assert_eq!(count_by_kind(&timeline), "kill 1, split 2");
    }

    #[test]
    fn docker_makes_the_kinds_the_engine_can_and_refuses_the_others_by_name() {
        assert_eq!(Kind::parse_docker_list("all").unwrap(), Kind::DOCKER);
        assert_eq!(
            Kind::parse_docker_list("partition").unwrap(),
            [Kind::IsolateLeader, Kind::Split]
        );
        let e = Kind::parse_docker_list("kill,latency").unwrap_err();
        assert!(e.contains("`latency`"), "{e}");
        assert!(Kind::parse_docker_list("asymmetric").is_err());
    }
}
