use std::future::Future;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::{Deadline, Expired, Layer, SendError};

const EXPIRED_TOTAL: &str = "metastore_deadline_expired_total";

/// Runs `fut` until `deadline`, reporting an expiry as [`Expired`] for `layer`.
///
/// A deadline that has already passed fails at once without polling `fut`, so no work (such as
/// enqueuing a proposal) starts for a caller that has given up. If `fut` completes on the same
/// poll as the deadline passes, its output wins. With [`Deadline::none`] nothing bounds the
/// wait: most callers want [`Budgets::run`](crate::Budgets::run), which always has a budget.
// This crate is the one place allowed to call tokio's timeout, so that every bounded wait is
// counted per layer and reported with the same error.
#[allow(clippy::disallowed_methods)]
pub async fn within<F: Future>(
    layer: Layer,
    deadline: Deadline,
    fut: F,
) -> Result<F::Output, Expired> {
    let Some(at) = deadline.instant() else {
        return Ok(fut.await);
    };
    let start = Instant::now();
    if at <= start {
        return Err(expired(layer, Duration::ZERO));
    }
    tokio::time::timeout_at(at, fut)
        .await
        .map_err(|_| expired(layer, start.elapsed()))
}

/// Sends `value` on a bounded channel, waiting for room no longer than `deadline`.
///
/// Waits for capacity first and only then moves the value in, so on expiry or a closed channel
/// the value comes back in the error and nothing is half-sent.
pub async fn send<T>(
    layer: Layer,
    deadline: Deadline,
    tx: &mpsc::Sender<T>,
    value: T,
) -> Result<(), SendError<T>> {
    match within(layer, deadline, tx.reserve()).await {
        Ok(Ok(permit)) => {
            permit.send(value);
            Ok(())
        }
        Ok(Err(_closed)) => Err(SendError::Closed { value, layer }),
        Err(expired) => Err(SendError::Expired { value, expired }),
    }
}

/// Waits `d` on purpose: a test giving the system time to act, or a load generator's pacing.
///
/// Not for waiting until something happens (bound that with [`within`] and poll): a pause
/// waits its whole time, and expires nothing, so it counts no expiry.
// The one sleep outside the bounded waits, kept here beside them so the ban stays whole.
#[allow(clippy::disallowed_methods)]
pub async fn pause(d: Duration) {
    tokio::time::sleep(d).await;
}

fn expired(layer: Layer, waited: Duration) -> Expired {
    metrics::counter!(EXPIRED_TOTAL, "layer" => layer.as_str()).increment(1);
    Expired { layer, waited }
}

#[cfg(test)]
mod tests {
    use super::*;
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};
    use std::future::pending;
    use std::sync::atomic::{AtomicBool, Ordering};

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[tokio::test(start_paused = true)]
    async fn never_completing_future_expires_at_the_deadline() {
        let start = Instant::now();
        let err = within(Layer::Commit, Deadline::after(ms(2000)), pending::<()>())
            .await
            .unwrap_err();
        assert_eq!(start.elapsed(), ms(2000));
        assert_eq!(err.layer, Layer::Commit);
        assert_eq!(err.waited, ms(2000));
    }

    #[tokio::test(start_paused = true)]
    async fn expired_deadline_fails_without_polling() {
        let deadline = Deadline::after(ms(10));
        tokio::time::advance(ms(10)).await;
        let polled = AtomicBool::new(false);
        let start = Instant::now();
        let err = within(Layer::Propose, deadline, async {
            polled.store(true, Ordering::Relaxed);
        })
        .await
        .unwrap_err();
        assert!(!polled.load(Ordering::Relaxed));
        assert_eq!(start.elapsed(), Duration::ZERO);
        assert_eq!(err.waited, Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn no_deadline_just_awaits() {
        assert_eq!(
            within(Layer::Api, Deadline::none(), async { 3 }).await,
            Ok(3)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn send_waits_for_room_then_delivers() {
        let (tx, mut rx) = mpsc::channel(1);
        send(Layer::WatchSend, Deadline::after(ms(100)), &tx, 1)
            .await
            .unwrap();
        let drain = tokio::spawn(async move {
            // Frees the slot only after 50ms of (paused, auto-advanced) time.
            within(Layer::Api, Deadline::after(ms(50)), pending::<()>())
                .await
                .unwrap_err();
            (rx.recv().await, rx.recv().await)
        });
        let start = Instant::now();
        send(Layer::WatchSend, Deadline::after(ms(100)), &tx, 2)
            .await
            .unwrap();
        assert_eq!(start.elapsed(), ms(50));
        assert_eq!(drain.await.unwrap(), (Some(1), Some(2)));
    }

    #[tokio::test(start_paused = true)]
    async fn send_on_full_channel_expires_and_returns_the_value() {
        let (tx, _rx) = mpsc::channel(1);
        tx.send("first").await.unwrap();
        let start = Instant::now();
        let err = send(Layer::WatchSend, Deadline::after(ms(100)), &tx, "second")
            .await
            .unwrap_err();
        assert_eq!(start.elapsed(), ms(100));
        assert!(matches!(
            err,
            SendError::Expired { expired: Expired { layer: Layer::WatchSend, waited }, .. }
                if waited == ms(100)
        ));
        assert_eq!(err.into_inner(), "second");
    }

    #[tokio::test(start_paused = true)]
    async fn send_on_closed_channel_returns_the_value() {
        let (tx, rx) = mpsc::channel::<String>(1);
        drop(rx);
        let err = send(Layer::Propose, Deadline::none(), &tx, "v".to_owned())
            .await
            .unwrap_err();
        assert!(matches!(
            err,
            SendError::Closed {
                layer: Layer::Propose,
                ..
            }
        ));
        assert_eq!(err.into_inner(), "v");
    }

    #[test]
    fn expiry_counts_per_layer() {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        metrics::with_local_recorder(&recorder, || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .start_paused(true)
                .build()
                .unwrap();
            rt.block_on(async {
                for _ in 0..2 {
                    within(Layer::Commit, Deadline::after(ms(5)), pending::<()>())
                        .await
                        .unwrap_err();
                }
                within(Layer::PeerRpc, Deadline::after(ms(5)), pending::<()>())
                    .await
                    .unwrap_err();
                within(Layer::Apply, Deadline::after(ms(5)), async {})
                    .await
                    .unwrap();
            });
        });
        let mut counts: Vec<_> = snapshotter
            .snapshot()
            .into_vec()
            .into_iter()
            .filter(|(key, ..)| key.key().name() == EXPIRED_TOTAL)
            .map(|(key, _, _, value)| {
                let labels: Vec<_> = key
                    .key()
                    .labels()
                    .map(|l| (l.key().to_owned(), l.value().to_owned()))
                    .collect();
                (labels, value)
            })
            .collect();
        counts.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(
            counts,
            [
                (
                    vec![("layer".to_owned(), "commit".to_owned())],
                    DebugValue::Counter(2)
                ),
                (
                    vec![("layer".to_owned(), "peer-rpc".to_owned())],
                    DebugValue::Counter(1)
                ),
            ]
        );
    }
}
