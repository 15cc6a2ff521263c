//! The fault schedule of a chaos run: drawn from the seed, applied to the cluster and its peer
//! proxies, each fault held for a while and then healed.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use testkit::Cluster;

use crate::bench::XorShift;

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
    /// The fault began (true) or was healed (false).
    pub begins: bool,
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:8.2}s  {}", self.at, self.what)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
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
    cluster: &Arc<Mutex<Cluster>>,
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
            (c.members().len(), c.leader())
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
                    if let Some(net) = c.net() {
                        for other in (0..n).filter(|o| *o != l) {
                            net.cut_both(l, other);
                        }
                    }
                    what = format!("isolate the leader m{l}");
                }
                Kind::Split => {
                    let minority = (n - 1) / 2;
                    let mut members: Vec<usize> = (0..n).collect();
                    rng.shuffle(&mut members);
                    let (small, big) = members.split_at(minority.max(1));
                    if let Some(net) = c.net() {
                        for a in small {
                            for b in big {
                                net.cut_both(*a, *b);
                            }
                        }
                    }
                    what = format!("split {small:?} | {big:?}");
                }
                Kind::Asymmetric => {
                    let from = target;
                    let to = (from + 1 + rng.below(n - 1)) % n;
                    if let Some(net) = c.net() {
                        net.cut(from, to);
                    }
                    what = format!("cut m{from} -> m{to} only");
                }
                Kind::Latency => {
                    let delay = Duration::from_millis(20 + rng.below(180) as u64);
                    if let Some(net) = c.net() {
                        for other in (0..n).filter(|o| *o != target) {
                            net.slow(target, other, delay);
                            net.slow(other, target, delay);
                        }
                    }
                    what = format!("delay every link of m{target} by {delay:?}");
                }
                Kind::DropConnections => {
                    if let Some(net) = c.net() {
                        net.drop_connections();
                    }
                    what = "drop every peer connection".to_string();
                }
            }
        }
        timeline.push(Event {
            at: at(),
            what: what.clone(),
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
            begins: false,
        });
    }
    heal(cluster);
    timeline
}

/// Removes every fault: heals links, continues stopped members, restarts killed ones.
pub fn heal(cluster: &Arc<Mutex<Cluster>>) {
    let mut c = lock(cluster);
    if let Some(net) = c.net() {
        net.heal();
    }
    for i in 0..c.members().len() {
        if c.member(i).is_frozen() {
            c.thaw(i);
        }
        if !c.member(i).is_running() {
            if let Err(e) = c.restart(i) {
                eprintln!("chaos: restarting m{i} failed: {e}");
            }
        }
    }
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
}
