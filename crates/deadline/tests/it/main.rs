//! End-to-end checks of the public API: many concurrent operations, and the metrics they leave.

// The package is `metastore-deadline`; the code knows the library by its short name.
extern crate metastore_deadline as deadline;

use std::future::pending;
use std::time::Duration;

use deadline::{within, Budgets, Deadline, Expired, Layer, Registry, WaitError};
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use tokio::runtime::Handle;
use tokio::time::Instant;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// 10,000 operations: a quarter completed, a quarter timing out in their layer, a quarter
/// aborted, a quarter dropped when the caller's own (shorter) deadline fires first.
#[tokio::test(start_paused = true)]
async fn ten_thousand_mixed_operations_leave_nothing_behind() {
    const N: usize = 10_000;
    let registry = Registry::<usize>::new("it-mixed");
    let budgets = Budgets::default().with(Layer::Commit, ms(2000));
    let baseline = Handle::current().metrics().num_alive_tasks();
    let start = Instant::now();

    let mut ops = Vec::with_capacity(N);
    for i in 0..N {
        let pending_op = registry.register();
        let id = pending_op.id();
        let commit = budgets.deadline_for(Layer::Commit, Deadline::none());
        let caller = if i % 4 == 3 {
            Deadline::after(ms(500))
        } else {
            Deadline::none()
        };
        let task = tokio::spawn(within(
            Layer::Api,
            caller,
            pending_op.wait(Layer::Commit, commit),
        ));
        ops.push((i, id, task));
    }
    assert_eq!(registry.len(), N);
    assert!(Handle::current().metrics().num_alive_tasks() >= baseline + N);

    // Half the completions and aborts land before the waiters are first polled, half while
    // they are waiting.
    for round in 0..2 {
        for (i, id, task) in &ops {
            if i / 4 % 2 != round {
                continue;
            }
            match i % 4 {
                0 => assert!(registry.complete(*id, *i)),
                2 => task.abort(),
                _ => {}
            }
        }
        if round == 0 {
            sleep_while_others_run(ms(1000)).await;
            // Gone: the first half of completed and aborted ones, and every dropped one.
            assert_eq!(registry.len(), N - N / 8 - N / 8 - N / 4);
        }
    }

    let mut counts = [0; 4];
    for (i, _, task) in ops {
        let outcome = task.await;
        match i % 4 {
            0 => assert_eq!(outcome.unwrap(), Ok(Ok(i))),
            1 => {
                let err = outcome.unwrap().unwrap().unwrap_err();
                assert!(matches!(
                    err,
                    WaitError::Expired(e) if e.layer == Layer::Commit && e.waited == ms(2000)
                ));
            }
            2 => assert!(outcome.unwrap_err().is_cancelled()),
            _ => assert!(matches!(
                outcome.unwrap(),
                Err(e @ Expired { layer: Layer::Api, .. }) if e.waited == ms(500)
            )),
        }
        counts[i % 4] += 1;
    }
    assert_eq!(counts, [N / 4; 4]);
    assert_eq!(
        start.elapsed(),
        ms(2000),
        "the commit budget bounds the slowest wait"
    );
    assert!(registry.is_empty());
    assert_eq!(Handle::current().metrics().num_alive_tasks(), baseline);
}

/// Unlike `tokio::time::advance`, a sleep under the paused clock only moves time once every
/// other task has run and parked, so all waiters start at the same instant.
async fn sleep_while_others_run(duration: Duration) {
    deadline::pause(duration).await;
}

/// A caller deadline from `grpc-timeout` beats a longer layer budget, end to end.
#[tokio::test(start_paused = true)]
async fn grpc_timeout_bounds_a_registered_wait() {
    let registry = Registry::<()>::new("it-grpc");
    let budgets = Budgets::parse_overrides("commit=5s").unwrap();
    let caller = Deadline::from_grpc_timeout("250m").unwrap();
    let start = Instant::now();
    let err = budgets
        .run(
            Layer::Commit,
            caller,
            registry
                .register()
                .wait(Layer::Commit, budgets.deadline_for(Layer::Commit, caller)),
        )
        .await;
    // The inner wait and the outer run share the deadline; the inner one reports it.
    assert!(matches!(err, Ok(Err(WaitError::Expired(e))) if e.waited == ms(250)));
    assert_eq!(start.elapsed(), ms(250));
    assert!(registry.is_empty());
}

/// One checkpoint of the recorder. Taking a snapshot drains its counters, so each checkpoint
/// reads all it needs from a single one.
struct Checkpoint(Vec<Metric>);

/// Name, labels and value of one metric.
type Metric = (String, Vec<(String, String)>, DebugValue);

impl Checkpoint {
    fn take(snapshotter: &Snapshotter) -> Self {
        let entries = snapshotter.snapshot().into_vec().into_iter();
        Self(
            entries
                .map(|(key, _, _, value)| {
                    let labels = key.key().labels();
                    let labels = labels.map(|l| (l.key().to_owned(), l.value().to_owned()));
                    (key.key().name().to_owned(), labels.collect(), value)
                })
                .collect(),
        )
    }

    fn get(&self, name: &str, label: (&str, &str)) -> Option<&DebugValue> {
        let label = (label.0.to_owned(), label.1.to_owned());
        self.0
            .iter()
            .find(|(n, labels, _)| n == name && labels.contains(&label))
            .map(|(.., value)| value)
    }

    fn pending(&self, registry: &str) -> f64 {
        match self.get("metastore_pending_operations", ("registry", registry)) {
            Some(DebugValue::Gauge(v)) => v.into_inner(),
            other => panic!("no gauge for {registry}: {other:?}"),
        }
    }

    fn expired(&self, layer: &str) -> u64 {
        match self.get("metastore_deadline_expired_total", ("layer", layer)) {
            Some(DebugValue::Counter(n)) => *n,
            None => 0,
            other => panic!("not a counter: {other:?}"),
        }
    }
}

/// Runs `body` to its end on a runtime with a paused clock, its metrics going to `recorder`.
fn run_recorded(recorder: &DebuggingRecorder, body: impl std::future::Future<Output = ()>) {
    let built = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build();
    let Ok(rt) = built else {
        panic!("no runtime: {built:?}");
    };
    metrics::with_local_recorder(recorder, || rt.block_on(body));
}

#[test]
fn metrics_track_pending_operations_and_expiries() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let now = || Checkpoint::take(&snapshotter);
    run_recorded(&recorder, async {
        let registry = Registry::<u8>::new("it-metrics");
        let done = registry.register();
        let expires = registry.register();
        let dropped = registry.register();
        assert_eq!(now().pending("it-metrics"), 3.0);

        assert!(registry.complete(done.id(), 1));
        assert_eq!(now().pending("it-metrics"), 2.0);
        drop(dropped);
        assert_eq!(now().pending("it-metrics"), 1.0);

        let err = expires.wait(Layer::Commit, Deadline::after(ms(10))).await;
        assert!(matches!(err, Err(WaitError::Expired(_))));
        let after_expiry = now();
        assert_eq!(after_expiry.pending("it-metrics"), 0.0);
        assert_eq!(after_expiry.expired("commit"), 1);

        assert_eq!(done.wait(Layer::Commit, Deadline::none()).await, Ok(1));
        within(Layer::PeerRpc, Deadline::after(ms(1)), pending::<()>())
            .await
            .unwrap_err();
        let end = now();
        assert_eq!(end.expired("peer-rpc"), 1);
        assert_eq!(
            end.expired("commit"),
            0,
            "drained by the previous checkpoint"
        );
        assert_eq!(end.expired("api"), 0);
        assert_eq!(end.pending("it-metrics"), 0.0);
    });
}

/// A pause waits its whole time and is not an expiry: the `pause()` helpers tests used to
/// write (a `within` around `pending()`) counted one against the api layer each time.
#[test]
fn a_pause_waits_its_time_and_counts_no_expiry() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    run_recorded(&recorder, async {
        let start = Instant::now();
        deadline::pause(ms(1500)).await;
        assert!(start.elapsed() >= ms(1500), "paused {:?}", start.elapsed());
        let end = Checkpoint::take(&snapshotter);
        for layer in ["api", "commit", "peer-rpc"] {
            assert_eq!(end.expired(layer), 0, "{layer}");
        }
    });
}
