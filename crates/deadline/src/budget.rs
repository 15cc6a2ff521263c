use std::future::Future;
use std::str::FromStr;
use std::time::Duration;

use crate::{within, BudgetError, Deadline, Expired, Layer};

// etcd's request timeout: 5s plus two election timeouts (1s each by default), long enough to ride
// out one leader election. Every layer a client request passes through gets the same cap, so the
// request's own deadline is what normally fires; the per-layer caps matter for work that has no
// caller deadline (internal proposals, lease expiry, compaction) and then fail no later than a
// client request would.
const REQUEST: Duration = Duration::from_secs(7);
// A watcher that has not drained its queue for this long is too slow: the stream is cancelled
// rather than letting it pin memory and hold back the event fan-out. A bit more than a request
// so a client busy with one request is not mistaken for a dead one.
const WATCH_SEND: Duration = Duration::from_secs(10);
// One election timeout: a raft message older than that is stale (a new election may have
// started), and the protocol retransmits anyway, so waiting longer only queues up useless work.
const PEER_RPC: Duration = Duration::from_secs(1);

/// The maximum time each [`Layer`] may wait, whatever the caller's deadline.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Budgets {
    by_layer: [Duration; Layer::ALL.len()],
}

impl Default for Budgets {
    fn default() -> Self {
        let mut budgets = Self {
            by_layer: [REQUEST; Layer::ALL.len()],
        };
        budgets.set(Layer::WatchSend, WATCH_SEND);
        budgets.set(Layer::PeerRpc, PEER_RPC);
        budgets
    }
}

impl Budgets {
    /// The budget of one layer.
    pub fn get(&self, layer: Layer) -> Duration {
        self.by_layer[layer as usize]
    }

    /// Changes the budget of one layer; [`Budgets::validate`] rejects zero.
    pub fn set(&mut self, layer: Layer, budget: Duration) {
        self.by_layer[layer as usize] = budget;
    }

    /// Returns these budgets with one layer changed, for building configs in one expression.
    #[must_use]
    pub fn with(mut self, layer: Layer, budget: Duration) -> Self {
        self.set(layer, budget);
        self
    }

    /// Checks that every layer can actually wait: a zero budget is a configuration mistake.
    pub fn validate(&self) -> Result<(), BudgetError> {
        match Layer::ALL.into_iter().find(|&l| self.get(l).is_zero()) {
            Some(layer) => Err(BudgetError::Zero { layer }),
            None => Ok(()),
        }
    }

    /// The defaults with overrides like `"commit=2s,peer-rpc=500ms"` applied, validated.
    ///
    /// Durations are an integer followed by `ms`, `s`, `m` or `h`. Empty entries are ignored so
    /// an empty flag means "defaults".
    pub fn parse_overrides(spec: &str) -> Result<Self, BudgetError> {
        let mut budgets = Self::default();
        let mut seen = [false; Layer::ALL.len()];
        for entry in spec.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let (name, value) =
                entry
                    .split_once('=')
                    .ok_or_else(|| BudgetError::MissingEquals {
                        entry: entry.to_owned(),
                    })?;
            let layer: Layer = name.trim().parse()?;
            if std::mem::replace(&mut seen[layer as usize], true) {
                return Err(BudgetError::Duplicate { layer });
            }
            let value = value.trim();
            let budget = parse_duration(value).ok_or_else(|| BudgetError::InvalidDuration {
                layer,
                value: value.to_owned(),
            })?;
            budgets.set(layer, budget);
        }
        budgets.validate()?;
        Ok(budgets)
    }

    /// The deadline for a wait in `layer`: the caller's, or the layer's budget from now if sooner.
    pub fn deadline_for(&self, layer: Layer, caller: Deadline) -> Deadline {
        caller.earliest(Deadline::after(self.get(layer)))
    }

    /// Runs `fut` in `layer` until the caller's deadline or the layer's budget, whichever is first.
    pub async fn run<F: Future>(
        &self,
        layer: Layer,
        caller: Deadline,
        fut: F,
    ) -> Result<F::Output, Expired> {
        within(layer, self.deadline_for(layer, caller), fut).await
    }
}

impl FromStr for Budgets {
    type Err = BudgetError;

    /// Same as [`Budgets::parse_overrides`], so a CLI parser can take budgets directly.
    fn from_str(spec: &str) -> Result<Self, Self::Err> {
        Self::parse_overrides(spec)
    }
}

fn parse_duration(value: &str) -> Option<Duration> {
    let split = value
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(value.len());
    let (digits, unit) = value.split_at(split);
    if digits.is_empty() {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    match unit {
        "ms" => Some(Duration::from_millis(n)),
        "s" => Some(Duration::from_secs(n)),
        "m" => n.checked_mul(60).map(Duration::from_secs),
        "h" => n.checked_mul(3600).map(Duration::from_secs),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::pending;
    use tokio::time::Instant;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn defaults_are_valid_and_documented() {
        let b = Budgets::default();
        b.validate().unwrap();
        for layer in [
            Layer::Api,
            Layer::Propose,
            Layer::Commit,
            Layer::ReadIndex,
            Layer::Apply,
        ] {
            assert_eq!(b.get(layer), Duration::from_secs(7), "{layer}");
        }
        assert_eq!(b.get(Layer::WatchSend), Duration::from_secs(10));
        assert_eq!(b.get(Layer::PeerRpc), Duration::from_secs(1));
    }

    #[test]
    fn with_and_set_change_one_layer() {
        let b = Budgets::default().with(Layer::Commit, ms(1));
        assert_eq!(b.get(Layer::Commit), ms(1));
        assert_eq!(b.get(Layer::Apply), Budgets::default().get(Layer::Apply));
        let mut b = b;
        b.set(Layer::Apply, Duration::ZERO);
        assert_eq!(
            b.validate(),
            Err(BudgetError::Zero {
                layer: Layer::Apply
            })
        );
    }

    #[test]
    fn parses_overrides() {
        let b = Budgets::parse_overrides(" commit=2s, peer-rpc = 500ms ,apply=1m,api=1h,").unwrap();
        assert_eq!(b.get(Layer::Commit), Duration::from_secs(2));
        assert_eq!(b.get(Layer::PeerRpc), ms(500));
        assert_eq!(b.get(Layer::Apply), Duration::from_secs(60));
        assert_eq!(b.get(Layer::Api), Duration::from_secs(3600));
        assert_eq!(
            b.get(Layer::Propose),
            Budgets::default().get(Layer::Propose)
        );
        assert_eq!(Budgets::parse_overrides(""), Ok(Budgets::default()));
        assert_eq!(
            "read-index=3s"
                .parse::<Budgets>()
                .unwrap()
                .get(Layer::ReadIndex),
            ms(3000)
        );
    }

    #[test]
    fn rejects_bad_overrides() {
        let invalid = |layer, value: &str| BudgetError::InvalidDuration {
            layer,
            value: value.into(),
        };
        let cases = [
            (
                "commit",
                BudgetError::MissingEquals {
                    entry: "commit".into(),
                },
            ),
            (
                "comit=2s",
                crate::ParseLayerError {
                    name: "comit".into(),
                }
                .into(),
            ),
            ("commit=2", invalid(Layer::Commit, "2")),
            ("commit=s", invalid(Layer::Commit, "s")),
            ("commit=1.5s", invalid(Layer::Commit, "1.5s")),
            ("commit=-1s", invalid(Layer::Commit, "-1s")),
            ("commit=2 s", invalid(Layer::Commit, "2 s")),
            ("commit=", invalid(Layer::Commit, "")),
            (
                "commit=99999999999999999999s",
                invalid(Layer::Commit, "99999999999999999999s"),
            ),
            (
                "commit=18446744073709551615h",
                invalid(Layer::Commit, "18446744073709551615h"),
            ),
            (
                "commit=0ms",
                BudgetError::Zero {
                    layer: Layer::Commit,
                },
            ),
            (
                "commit=1s,commit=2s",
                BudgetError::Duplicate {
                    layer: Layer::Commit,
                },
            ),
        ];
        for (spec, want) in cases {
            assert_eq!(Budgets::parse_overrides(spec), Err(want), "{spec:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn deadline_for_takes_the_earlier_of_caller_and_budget() {
        let b = Budgets::default().with(Layer::Commit, ms(2000));
        let now = Instant::now();
        let budget_end = Deadline::at(now + ms(2000));
        assert_eq!(b.deadline_for(Layer::Commit, Deadline::none()), budget_end);
        let sooner = Deadline::at(now + ms(500));
        assert_eq!(b.deadline_for(Layer::Commit, sooner), sooner);
        let later = Deadline::at(now + ms(5000));
        assert_eq!(b.deadline_for(Layer::Commit, later), budget_end);
    }

    #[tokio::test(start_paused = true)]
    async fn run_expires_exactly_at_the_budget() {
        let b = Budgets::default();
        for layer in Layer::ALL {
            let start = Instant::now();
            let err = b
                .run(layer, Deadline::none(), pending::<()>())
                .await
                .unwrap_err();
            assert_eq!(start.elapsed(), b.get(layer), "{layer}");
            assert_eq!((err.layer, err.waited), (layer, b.get(layer)));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn run_stops_at_an_earlier_caller_deadline() {
        let b = Budgets::default();
        let start = Instant::now();
        let caller = Deadline::after(ms(300));
        let err = b
            .run(Layer::Commit, caller, pending::<()>())
            .await
            .unwrap_err();
        assert_eq!(start.elapsed(), ms(300));
        assert_eq!(err.waited, ms(300));
    }

    #[tokio::test(start_paused = true)]
    async fn run_returns_the_output_when_in_time() {
        let b = Budgets::default();
        assert_eq!(
            b.run(Layer::Apply, Deadline::none(), async { 5 }).await,
            Ok(5)
        );
    }
}
