//! Every error of the KV API through the `etcd-client` crate: gRPC code and text, as etcd 3.4
//! answers them; each table also runs against etcd itself, so the expectations are etcd's.

use etcd_client::{
    Client, CompactionOptions, Compare, CompareOp, DeleteOptions, Error, GetOptions, PutOptions,
    Txn, TxnOp,
};
use tonic::Code;

use crate::harness::{Kind, Server};

/// What a request got: `Ok` or its status. A transport-level refusal of an oversized message
/// keeps only its code: the texts are the gRPC library's own.
type Outcome = Result<(), (Code, String)>;

fn outcome<T>(result: Result<T, Error>) -> Outcome {
    match result {
        Ok(_) => Ok(()),
        Err(Error::GRpcStatus(s)) if s.code() == Code::ResourceExhausted => {
            Err((s.code(), "<transport>".to_string()))
        }
        Err(Error::GRpcStatus(s)) => Err((s.code(), s.message().to_string())),
        Err(other) => Err((Code::Unknown, format!("not a gRPC status: {other}"))),
    }
}

fn err(code: Code, text: &str) -> Outcome {
    Err((code, text.to_string()))
}

fn invalid(text: &str) -> Outcome {
    err(Code::InvalidArgument, text)
}

const NO_KEY: &str = "etcdserver: key is not provided";
const TOO_LARGE: &str = "etcdserver: request is too large";
const TOO_MANY_OPS: &str = "etcdserver: too many operations in txn request";
const DUPLICATE: &str = "etcdserver: duplicate key given in txn request";
const COMPACTED: &str = "etcdserver: mvcc: required revision has been compacted";
const FUTURE: &str = "etcdserver: mvcc: required revision is a future revision";
const NOT_FOUND: &str = "etcdserver: key not found";

fn exhausted() -> Outcome {
    err(Code::ResourceExhausted, "<transport>")
}

fn puts(prefix: &str, n: usize) -> Vec<TxnOp> {
    (0..n)
        .map(|i| TxnOp::put(format!("{prefix}{i}"), "v", None))
        .collect()
}

fn compares(n: usize) -> Vec<Compare> {
    (0..n)
        .map(|i| Compare::version(format!("c{i}"), CompareOp::Equal, 0))
        .collect()
}

/// Runs each case in order (they share one store) and checks every outcome and the final
/// revision; all mismatches are reported at once.
async fn check(
    server: &Server,
    cases: Vec<(&'static str, Outcome, Outcome)>,
    final_revision: i64,
    mut c: Client,
) {
    let mut wrong = Vec::new();
    for (name, expected, got) in cases {
        if expected != got {
            wrong.push(format!(
                "  {name}:\n    expected {expected:?}\n    got      {got:?}"
            ));
        }
    }
    let revision = c
        .get("any", None)
        .await
        .expect("get")
        .header()
        .expect("header")
        .revision();
    if revision != final_revision {
        wrong.push(format!(
            "  final revision: expected {final_revision}, got {revision} (a refused request \
             must not write)"
        ));
    }
    assert!(
        wrong.is_empty(),
        "{:?} answered differently from etcd 3.4:\n{}",
        server.kind(),
        wrong.join("\n")
    );
}

/// `--max-request-bytes 1024 --max-txn-ops 4`: every request-check error.
async fn small_limits(kind: Kind) {
    let server = Server::start(kind, &["--max-request-bytes", "1024", "--max-txn-ops", "4"]);
    let mut c = server.client().await;
    for (k, v) in [("a", "1"), ("b", "2"), ("c", "3"), ("a", "4")] {
        c.put(k, v, None).await.expect("put");
    }
    // Revision 5. Only cases marked "writes" below move it.
    let mut cases: Vec<(&'static str, Outcome, Outcome)> = Vec::new();
    macro_rules! case {
        ($name:expr, $expected:expr, $request:expr) => {{
            let got = outcome($request.await);
            cases.push(($name, $expected, got));
        }};
    }

    // A key is required everywhere.
    case!("put without a key", invalid(NO_KEY), c.put("", "v", None));
    case!("get without a key", invalid(NO_KEY), c.get("", None));
    case!(
        "serializable get without a key",
        invalid(NO_KEY),
        c.get("", Some(GetOptions::new().with_serializable()))
    );
    case!("delete without a key", invalid(NO_KEY), c.delete("", None));
    case!(
        "txn put without a key",
        invalid(NO_KEY),
        c.txn(Txn::new().and_then([TxnOp::put("", "v", None)]))
    );
    case!(
        "txn get without a key",
        invalid(NO_KEY),
        c.txn(Txn::new().or_else([TxnOp::get("", None)]))
    );
    case!(
        "txn delete without a key",
        invalid(NO_KEY),
        c.txn(Txn::new().and_then([TxnOp::delete("", None)]))
    );

    // Size: over max-request-bytes is etcd's error; over it + 512 KiB the transport refuses.
    let big = "x".repeat(2048);
    case!(
        "put of 2 KiB",
        invalid(TOO_LARGE),
        c.put("big", big.clone(), None)
    );
    case!(
        "txn of 2 KiB",
        invalid(TOO_LARGE),
        c.txn(Txn::new().and_then([TxnOp::put("big", big.clone(), None)]))
    );
    case!(
        "put of 600 KiB (over max-request-bytes + 512 KiB)",
        exhausted(),
        c.kv_client()
            .max_encoding_message_size(16 << 20)
            .put("big", "x".repeat(600 * 1024), None)
    );

    // max-txn-ops: compares, success and failure are each limited; nested txns get what the
    // outer one leaves.
    case!(
        "txn with 5 success ops",
        invalid(TOO_MANY_OPS),
        c.txn(Txn::new().and_then(puts("s", 5)))
    );
    case!(
        "txn with 5 failure ops",
        invalid(TOO_MANY_OPS),
        c.txn(Txn::new().or_else(puts("f", 5)))
    );
    case!(
        "txn with 5 compares",
        invalid(TOO_MANY_OPS),
        c.txn(Txn::new().when(compares(5)))
    );
    case!(
        "txn with 4 compares and 4 ops in each branch (writes)",
        Ok(()),
        c.txn(
            Txn::new()
                .when(compares(4))
                .and_then(puts("s", 4))
                .or_else(puts("f", 4))
        )
    );
    case!(
        "nested txn of 4 ops inside 1",
        invalid(TOO_MANY_OPS),
        c.txn(Txn::new().and_then([TxnOp::txn(Txn::new().and_then(puts("n", 4)))]))
    );
    case!(
        "nested txn of 3 ops inside 1 (writes)",
        Ok(()),
        c.txn(Txn::new().and_then([TxnOp::txn(Txn::new().and_then(puts("n", 3)))]))
    );

    // Duplicate keys among a branch's writes.
    case!(
        "txn putting one key twice",
        invalid(DUPLICATE),
        c.txn(Txn::new().and_then([TxnOp::put("d", "1", None), TxnOp::put("d", "2", None)]))
    );
    case!(
        "txn putting and deleting one key",
        invalid(DUPLICATE),
        c.txn(Txn::new().and_then([TxnOp::put("d", "1", None), TxnOp::delete("d", None)]))
    );
    case!(
        "txn deleting a range that covers its put",
        invalid(DUPLICATE),
        c.txn(Txn::new().or_else([
            TxnOp::delete("a", Some(DeleteOptions::new().with_range("z"))),
            TxnOp::put("d", "1", None),
        ]))
    );
    case!(
        "txn putting a key the nested txn puts",
        invalid(DUPLICATE),
        c.txn(Txn::new().and_then([
            TxnOp::put("d", "1", None),
            TxnOp::txn(Txn::new().and_then([TxnOp::put("d", "2", None)])),
        ]))
    );
    case!(
        "txn putting one key in each branch (writes)",
        Ok(()),
        c.txn(
            Txn::new()
                .when([Compare::value("a", CompareOp::Equal, "4")])
                .and_then([TxnOp::put("d", "1", None)])
                .or_else([TxnOp::put("d", "2", None)])
        )
    );
    case!(
        "txn deleting one key twice (writes)",
        Ok(()),
        c.txn(Txn::new().and_then([TxnOp::delete("d", None), TxnOp::delete("d", None)]))
    );

    // ignore_value / ignore_lease.
    case!(
        "put ignore_value on a missing key",
        invalid(NOT_FOUND),
        c.put("missing", "", Some(PutOptions::new().with_ignore_value()))
    );
    case!(
        "put ignore_value with a value",
        invalid("etcdserver: value is provided"),
        c.put("a", "v", Some(PutOptions::new().with_ignore_value()))
    );
    case!(
        "put ignore_lease with a lease",
        invalid("etcdserver: lease is provided"),
        c.put(
            "a",
            "v",
            Some(PutOptions::new().with_ignore_lease().with_lease(7))
        )
    );
    case!(
        "put ignore_lease on a missing key",
        invalid(NOT_FOUND),
        c.put("missing", "v", Some(PutOptions::new().with_ignore_lease()))
    );
    case!(
        "txn put ignore_value on a missing key",
        invalid(NOT_FOUND),
        c.txn(Txn::new().and_then([TxnOp::put(
            "missing",
            "",
            Some(PutOptions::new().with_ignore_value())
        )]))
    );

    // Leases: none exists.
    case!(
        "put with a lease that does not exist",
        err(Code::NotFound, "etcdserver: requested lease not found"),
        c.put("a", "v", Some(PutOptions::new().with_lease(12345)))
    );
    case!(
        "txn put with a lease that does not exist",
        err(Code::NotFound, "etcdserver: requested lease not found"),
        c.txn(Txn::new().and_then([TxnOp::put(
            "a",
            "v",
            Some(PutOptions::new().with_lease(12345))
        )]))
    );

    // Revisions: future, then compacted.
    let at = |rev| Some(GetOptions::new().with_revision(rev));
    case!(
        "get at a future revision",
        err(Code::OutOfRange, FUTURE),
        c.get("a", at(1000))
    );
    case!(
        "serializable get at a future revision",
        err(Code::OutOfRange, FUTURE),
        c.get(
            "a",
            Some(GetOptions::new().with_revision(1000).with_serializable())
        )
    );
    case!(
        "txn get at a future revision",
        err(Code::OutOfRange, FUTURE),
        c.txn(Txn::new().and_then([TxnOp::get("a", at(1000))]))
    );
    case!(
        "compact at a future revision",
        err(Code::OutOfRange, FUTURE),
        c.compact(1000, None)
    );
    case!("compact at 4", Ok(()), c.compact(4, None));
    case!("get at the compacted revision", Ok(()), c.get("a", at(4)));
    case!(
        "get below the compacted revision",
        err(Code::OutOfRange, COMPACTED),
        c.get("a", at(3))
    );
    case!(
        "txn get below the compacted revision",
        err(Code::OutOfRange, COMPACTED),
        c.txn(Txn::new().and_then([TxnOp::get("a", at(3))]))
    );
    case!(
        "compact at the compacted revision",
        err(Code::OutOfRange, COMPACTED),
        c.compact(4, None)
    );
    case!(
        "physical compact below the compacted revision",
        err(Code::OutOfRange, COMPACTED),
        c.compact(2, Some(CompactionOptions::new().with_physical()))
    );

    // Four writing cases: revision 5 + 4.
    check(&server, cases, 9, c).await;
}

/// Default limits (1.5 MiB, 128 ops): the size errors at etcd's default sizes.
async fn default_limits(kind: Kind) {
    let server = Server::start(kind, &[]);
    let mut c = server.client().await;
    let mut cases: Vec<(&'static str, Outcome, Outcome)> = Vec::new();
    macro_rules! case {
        ($name:expr, $expected:expr, $request:expr) => {{
            let got = outcome($request.await);
            cases.push(($name, $expected, got));
        }};
    }
    const MAX: usize = 1536 * 1024;
    // etcd measures the whole raft entry, a few bytes more than the request: keep clear of
    // the exact boundary.
    case!(
        "put just under 1.5 MiB (writes)",
        Ok(()),
        c.put("big", "x".repeat(MAX - 100), None)
    );
    case!(
        "put of 1.5 MiB",
        invalid(TOO_LARGE),
        c.put("big", "x".repeat(MAX), None)
    );
    case!(
        "txn of 1.5 MiB",
        invalid(TOO_LARGE),
        c.txn(Txn::new().and_then([TxnOp::put("big", "x".repeat(MAX), None)]))
    );
    // etcdctl 3.4 cannot send this (its own limit is 2 MiB); this client can.
    case!(
        "put of 2.1 MiB (over 1.5 MiB + 512 KiB)",
        exhausted(),
        c.kv_client()
            .max_encoding_message_size(16 << 20)
            .put("big", "x".repeat(2100 * 1024), None)
    );
    // Reads are not raft entries: etcd does not apply max-request-bytes to them.
    case!(
        "get with a 1.6 MiB key",
        Ok(()),
        c.get("k".repeat(1600 * 1024), None)
    );
    case!(
        "read-only txn with a 1.6 MiB key",
        Ok(()),
        c.txn(Txn::new().and_then([TxnOp::get("k".repeat(1600 * 1024), None)]))
    );
    case!(
        "txn with 129 ops",
        invalid(TOO_MANY_OPS),
        c.txn(Txn::new().and_then(puts("p", 129)))
    );
    case!(
        "txn with 129 compares",
        invalid(TOO_MANY_OPS),
        c.txn(Txn::new().when(compares(129)))
    );
    case!(
        "txn with 128 ops (writes)",
        Ok(()),
        c.txn(Txn::new().when(compares(128)).and_then(puts("p", 128)))
    );
    check(&server, cases, 3, c).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_small_limits_metastore() {
    small_limits(Kind::Redb).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_small_limits_etcd_reference() {
    small_limits(Kind::Etcd).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_default_limits_metastore() {
    default_limits(Kind::Mem).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_default_limits_etcd_reference() {
    default_limits(Kind::Etcd).await;
}
