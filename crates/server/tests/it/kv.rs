//! Every KV option through the `etcd-client` crate, with exact answers; the same scenario runs
//! against etcd 3.4 itself so the expectations are etcd's.

use etcd_client::{
    CompactionOptions, Compare, CompareOp, DeleteOptions, GetOptions, KeyValue, PutOptions,
    ResponseHeader, SortOrder, SortTarget, Txn, TxnOp, TxnOpResponse,
};

use crate::harness::{Kind, Server};

/// (key, value, create_revision, mod_revision, version)
type Kv = (String, String, i64, i64, i64);

fn kv(key: &str, value: &str, create: i64, modified: i64, version: i64) -> Kv {
    (
        key.to_string(),
        value.to_string(),
        create,
        modified,
        version,
    )
}

fn kvs(list: &[KeyValue]) -> Vec<Kv> {
    list.iter()
        .map(|k| {
            (
                String::from_utf8_lossy(k.key()).into_owned(),
                String::from_utf8_lossy(k.value()).into_owned(),
                k.create_revision(),
                k.mod_revision(),
                k.version(),
            )
        })
        .collect()
}

fn keys(list: &[KeyValue]) -> Vec<String> {
    list.iter()
        .map(|k| String::from_utf8_lossy(k.key()).into_owned())
        .collect()
}

/// Every header carries the cluster and member ids (nonzero), the store's revision, the term.
#[track_caller]
fn header(h: Option<&ResponseHeader>, revision: i64) {
    let h = h.expect("a response header");
    assert_ne!(h.cluster_id(), 0, "cluster_id in {h:?}");
    assert_ne!(h.member_id(), 0, "member_id in {h:?}");
    assert!(h.raft_term() >= 1, "raft_term in {h:?}");
    assert_eq!(h.revision(), revision, "revision in {h:?}");
}

/// Responses inside a txn carry etcd's bare header: only the revision.
#[track_caller]
fn inner_header(h: Option<&ResponseHeader>, revision: i64) {
    let h = h.expect("a response header");
    assert_eq!(
        (h.cluster_id(), h.member_id(), h.revision(), h.raft_term()),
        (0, 0, revision, 0),
        "{h:?}"
    );
}

async fn scenario(kind: Kind) {
    let server = Server::start(kind, &[]);
    let mut c = server.client().await;
    let ids = {
        let s = c.status().await.expect("status");
        let h = s.header().expect("status header");
        header(Some(h), 1);
        assert_eq!(s.leader(), h.member_id(), "a single member leads");
        assert!(s.raft_index() > 0 && s.raft_term() >= 1);
        assert!(!s.version().is_empty());
        (h.cluster_id(), h.member_id())
    };

    // Put, and prev_kv.
    let r = c.put("a", "1", None).await.expect("put");
    header(r.header(), 2);
    assert!(r.prev_key().is_none());
    c.put("b", "2", None).await.expect("put");
    let r = c.put("c", "3", None).await.expect("put");
    header(r.header(), 4);
    let r = c
        .put("a", "11", Some(PutOptions::new().with_prev_key()))
        .await
        .expect("put prev_kv");
    header(r.header(), 5);
    assert_eq!(
        kvs(std::slice::from_ref(r.prev_key().expect("prev_kv"))),
        [kv("a", "1", 2, 2, 1)]
    );
    let r = c
        .put("new", "n", Some(PutOptions::new().with_prev_key()))
        .await
        .expect("put prev_kv of a new key");
    header(r.header(), 6);
    assert!(r.prev_key().is_none(), "no prev_kv for a new key");
    let r = c.delete("new", None).await.expect("delete");
    header(r.header(), 7);
    assert_eq!(r.deleted(), 1);

    // Range: one key, at a revision.
    let r = c.get("a", None).await.expect("get");
    header(r.header(), 7);
    assert_eq!(kvs(r.kvs()), [kv("a", "11", 2, 5, 2)]);
    assert_eq!((r.count(), r.more()), (1, false));
    let r = c
        .get("a", Some(GetOptions::new().with_revision(4)))
        .await
        .expect("get at a revision");
    header(r.header(), 7);
    assert_eq!(kvs(r.kvs()), [kv("a", "1", 2, 2, 1)]);
    let r = c
        .get("new", Some(GetOptions::new().with_revision(6)))
        .await
        .expect("get a deleted key at an old revision");
    assert_eq!(kvs(r.kvs()), [kv("new", "n", 6, 6, 1)]);
    let r = c.get("new", None).await.expect("get a deleted key");
    assert!(r.kvs().is_empty());
    assert_eq!(r.count(), 0);

    // Ranges: [a, c), from a key, all keys, a prefix.
    let r = c
        .get("a", Some(GetOptions::new().with_range("c")))
        .await
        .expect("range");
    assert_eq!(keys(r.kvs()), ["a", "b"]);
    let r = c
        .get("b", Some(GetOptions::new().with_from_key()))
        .await
        .expect("from key");
    assert_eq!(keys(r.kvs()), ["b", "c"]);
    let all = || GetOptions::new().with_all_keys();
    let r = c.get("", Some(all())).await.expect("all keys");
    assert_eq!(
        kvs(r.kvs()),
        [
            kv("a", "11", 2, 5, 2),
            kv("b", "2", 3, 3, 1),
            kv("c", "3", 4, 4, 1)
        ]
    );
    assert_eq!(r.count(), 3);

    // limit, more, count.
    let r = c.get("", Some(all().with_limit(2))).await.expect("limit");
    header(r.header(), 7);
    assert_eq!(keys(r.kvs()), ["a", "b"]);
    assert_eq!((r.more(), r.count()), (true, 3));
    let r = c.get("", Some(all().with_limit(3))).await.expect("limit");
    assert_eq!(keys(r.kvs()), ["a", "b", "c"]);
    assert_eq!((r.more(), r.count()), (false, 3));

    // count_only, keys_only.
    let r = c
        .get("", Some(all().with_count_only()))
        .await
        .expect("count");
    header(r.header(), 7);
    assert!(r.kvs().is_empty());
    assert_eq!(r.count(), 3);
    let r = c.get("", Some(all().with_keys_only())).await.expect("keys");
    assert_eq!(
        kvs(r.kvs()),
        [
            kv("a", "", 2, 5, 2),
            kv("b", "", 3, 3, 1),
            kv("c", "", 4, 4, 1)
        ]
    );

    // Sort orders and targets, with and without a limit.
    let sorted = |target, order| all().with_sort(target, order);
    let cases = [
        (SortTarget::Key, SortOrder::Descend, ["c", "b", "a"]),
        (SortTarget::Key, SortOrder::Ascend, ["a", "b", "c"]),
        (SortTarget::Value, SortOrder::Descend, ["c", "b", "a"]),
        (SortTarget::Value, SortOrder::Ascend, ["a", "b", "c"]),
        (SortTarget::Create, SortOrder::Descend, ["c", "b", "a"]),
        (SortTarget::Mod, SortOrder::Descend, ["a", "c", "b"]),
        (SortTarget::Mod, SortOrder::Ascend, ["b", "c", "a"]),
    ];
    for (target, order, expected) in cases {
        let r = c.get("", Some(sorted(target, order))).await.expect("sort");
        assert_eq!(keys(r.kvs()), expected, "{target:?} {order:?}");
        assert_eq!((r.more(), r.count()), (false, 3));
    }
    let r = c
        .get(
            "",
            Some(sorted(SortTarget::Mod, SortOrder::Descend).with_limit(2)),
        )
        .await
        .expect("sort and limit");
    assert_eq!(keys(r.kvs()), ["a", "c"]);
    assert_eq!((r.more(), r.count()), (true, 3));
    let r = c
        .get(
            "",
            Some(sorted(SortTarget::Version, SortOrder::Descend).with_limit(1)),
        )
        .await
        .expect("sort by version");
    assert_eq!(keys(r.kvs()), ["a"]);

    // Serializable.
    let r = c
        .get("a", Some(GetOptions::new().with_serializable()))
        .await
        .expect("serializable");
    header(r.header(), 7);
    assert_eq!(kvs(r.kvs()), [kv("a", "11", 2, 5, 2)]);

    // min/max mod/create revision filter kvs; count is the range's, before filters.
    let filtered = [
        (all().with_min_mod_revision(4), vec!["a", "c"]),
        (all().with_max_mod_revision(3), vec!["b"]),
        (all().with_min_create_revision(3), vec!["b", "c"]),
        (all().with_max_create_revision(2), vec!["a"]),
        (
            all().with_min_mod_revision(4).with_max_create_revision(3),
            vec!["a"],
        ),
    ];
    for (options, expected) in filtered {
        let r = c.get("", Some(options.clone())).await.expect("filter");
        assert_eq!(keys(r.kvs()), expected, "{options:?}");
        assert_eq!(r.count(), 3, "{options:?}");
    }

    // ignore_value keeps the value; ignore_lease keeps the lease (none).
    let r = c
        .put("a", "", Some(PutOptions::new().with_ignore_value()))
        .await
        .expect("ignore_value");
    header(r.header(), 8);
    let r = c.get("a", None).await.expect("get");
    assert_eq!(kvs(r.kvs()), [kv("a", "11", 2, 8, 3)]);
    let r = c
        .put(
            "a",
            "12",
            Some(PutOptions::new().with_ignore_lease().with_prev_key()),
        )
        .await
        .expect("ignore_lease");
    header(r.header(), 9);
    assert_eq!(
        kvs(std::slice::from_ref(r.prev_key().expect("prev_kv"))),
        [kv("a", "11", 2, 8, 3)]
    );
    let r = c.get("a", None).await.expect("get");
    assert_eq!(kvs(r.kvs()), [kv("a", "12", 2, 9, 4)]);
    assert_eq!(r.kvs()[0].lease(), 0);

    // DeleteRange: one key with prev_kv, a prefix, a range, from a key.
    for (i, k) in ["p/1", "p/2", "p/3", "q", "r"].iter().enumerate() {
        let r = c.put(*k, format!("v{i}"), None).await.expect("put");
        header(r.header(), 10 + i as i64);
    }
    // Revision 14 now.
    let r = c
        .delete(
            "p/",
            Some(DeleteOptions::new().with_prefix().with_prev_key()),
        )
        .await
        .expect("delete prefix");
    header(r.header(), 15);
    assert_eq!(r.deleted(), 3);
    assert_eq!(
        kvs(r.prev_kvs()),
        [
            kv("p/1", "v0", 10, 10, 1),
            kv("p/2", "v1", 11, 11, 1),
            kv("p/3", "v2", 12, 12, 1)
        ]
    );
    let r = c
        .delete("b", Some(DeleteOptions::new().with_range("c")))
        .await
        .expect("delete range");
    header(r.header(), 16);
    assert_eq!(r.deleted(), 1);
    assert!(r.prev_kvs().is_empty(), "no prev_kvs unless asked");
    let r = c
        .delete(
            "q",
            Some(DeleteOptions::new().with_from_key().with_prev_key()),
        )
        .await
        .expect("delete from key");
    header(r.header(), 17);
    assert_eq!(keys(r.prev_kvs()), ["q", "r"]);
    let r = c
        .delete("missing", Some(DeleteOptions::new().with_prev_key()))
        .await
        .expect("delete nothing");
    header(r.header(), 17);
    assert_eq!(r.deleted(), 0);
    let r = c.get("", Some(all())).await.expect("all keys");
    assert_eq!(keys(r.kvs()), ["a", "c"]);
    // a: create 2, mod 9, version 4, value 12; c: create 4, mod 4, version 1, value 3.

    // Txn: every compare target succeeding, with every op kind in the branch.
    let compares = [
        Compare::value("a", CompareOp::Equal, "12"),
        Compare::value("c", CompareOp::Greater, "2"),
        Compare::value("c", CompareOp::Less, "4"),
        Compare::value("c", CompareOp::NotEqual, "x"),
        Compare::version("a", CompareOp::Equal, 4),
        Compare::version("missing", CompareOp::Equal, 0),
        Compare::create_revision("a", CompareOp::Equal, 2),
        Compare::create_revision("c", CompareOp::Greater, 3),
        Compare::mod_revision("a", CompareOp::Less, 10),
        Compare::mod_revision("c", CompareOp::Equal, 4),
        Compare::lease("a", CompareOp::Equal, 0),
        Compare::version("a", CompareOp::Greater, 0).with_prefix(),
        Compare::mod_revision("a", CompareOp::Less, 100).with_range("d"),
    ];
    let txn = Txn::new()
        .when(compares)
        .and_then([
            TxnOp::put("t1", "x", Some(PutOptions::new().with_prev_key())),
            TxnOp::put("a", "13", Some(PutOptions::new().with_prev_key())),
            TxnOp::get("a", None),
            TxnOp::delete("c", Some(DeleteOptions::new().with_prev_key())),
        ])
        .or_else([TxnOp::put("failed", "1", None)]);
    let r = c.txn(txn).await.expect("txn");
    header(r.header(), 18);
    assert!(r.succeeded());
    let ops = r.op_responses();
    assert_eq!(ops.len(), 4);
    match &ops[0] {
        TxnOpResponse::Put(p) => {
            inner_header(p.header(), 18);
            assert!(p.prev_key().is_none());
        }
        other => panic!("expected a put response, got {other:?}"),
    }
    match &ops[1] {
        TxnOpResponse::Put(p) => assert_eq!(
            kvs(std::slice::from_ref(p.prev_key().expect("prev_kv"))),
            [kv("a", "12", 2, 9, 4)]
        ),
        other => panic!("expected a put response, got {other:?}"),
    }
    match &ops[2] {
        TxnOpResponse::Get(g) => {
            inner_header(g.header(), 18);
            assert_eq!(kvs(g.kvs()), [kv("a", "13", 2, 18, 5)], "reads see the txn");
        }
        other => panic!("expected a range response, got {other:?}"),
    }
    match &ops[3] {
        TxnOpResponse::Delete(d) => {
            assert_eq!(d.deleted(), 1);
            assert_eq!(kvs(d.prev_kvs()), [kv("c", "3", 4, 4, 1)]);
        }
        other => panic!("expected a delete response, got {other:?}"),
    }

    // Txn: each failing compare target takes the failure branch.
    let failing = [
        Compare::value("a", CompareOp::Equal, "12"),
        Compare::version("a", CompareOp::Less, 5),
        Compare::create_revision("a", CompareOp::NotEqual, 2),
        Compare::mod_revision("a", CompareOp::Greater, 18),
        Compare::lease("a", CompareOp::Greater, 0),
        Compare::value("missing", CompareOp::Equal, ""),
    ];
    for compare in failing {
        let txn = Txn::new()
            .when([compare.clone()])
            .and_then([TxnOp::put("a", "wrong", None)])
            .or_else([TxnOp::get("a", Some(GetOptions::new().with_keys_only()))]);
        let r = c.txn(txn).await.expect("txn");
        header(r.header(), 18);
        assert!(!r.succeeded(), "{compare:?} should fail");
        match &r.op_responses()[..] {
            [TxnOpResponse::Get(g)] => assert_eq!(kvs(g.kvs()), [kv("a", "", 2, 18, 5)]),
            other => panic!("expected one range response, got {other:?}"),
        }
    }

    // An empty txn succeeds and changes nothing.
    let r = c.txn(Txn::new()).await.expect("empty txn");
    header(r.header(), 18);
    assert!(r.succeeded());
    assert!(r.op_responses().is_empty());

    // Nested txn: the inner one sees the outer one's writes.
    let inner = Txn::new()
        .when([Compare::value("t1", CompareOp::Equal, "y")])
        .and_then([TxnOp::put("inner", "yes", None)])
        .or_else([TxnOp::put("inner", "no", None), TxnOp::get("t1", None)]);
    let outer = Txn::new()
        .when([Compare::version("t1", CompareOp::Equal, 1)])
        .and_then([TxnOp::put("t1", "z", None), TxnOp::txn(inner)]);
    let r = c.txn(outer).await.expect("nested txn");
    header(r.header(), 19);
    assert!(r.succeeded());
    match &r.op_responses()[..] {
        [TxnOpResponse::Put(_), TxnOpResponse::Txn(t)] => {
            assert!(!t.succeeded(), "t1 is z inside the outer txn");
            // etcd 3.4 leaves a nested txn's header empty, even its revision.
            inner_header(t.header(), 0);
            match &t.op_responses()[..] {
                [TxnOpResponse::Put(_), TxnOpResponse::Get(g)] => {
                    assert_eq!(kvs(g.kvs()), [kv("t1", "z", 18, 19, 2)]);
                }
                other => panic!("unexpected inner responses {other:?}"),
            }
        }
        other => panic!("unexpected outer responses {other:?}"),
    }
    let r = c.get("inner", None).await.expect("get");
    assert_eq!(kvs(r.kvs()), [kv("inner", "no", 19, 19, 1)]);

    // Compact, logical then physical; the compacted revision itself stays readable.
    let r = c.compact(5, None).await.expect("compact");
    header(r.header(), 19);
    let r = c
        .get("a", Some(GetOptions::new().with_revision(5)))
        .await
        .expect("get at the compacted revision");
    assert_eq!(kvs(r.kvs()), [kv("a", "11", 2, 5, 2)]);
    let r = c
        .compact(9, Some(CompactionOptions::new().with_physical()))
        .await
        .expect("physical compact");
    header(r.header(), 19);
    let r = c
        .get("a", Some(GetOptions::new().with_revision(9)))
        .await
        .expect("get at the compacted revision");
    assert_eq!(kvs(r.kvs()), [kv("a", "12", 2, 9, 4)]);
    let r = c.get("", Some(all())).await.expect("all keys");
    header(r.header(), 19);
    assert_eq!(keys(r.kvs()), ["a", "inner", "t1"]);

    // Status and member list agree with the headers.
    let s = c.status().await.expect("status");
    header(s.header(), 19);
    let h = s.header().expect("header");
    assert_eq!((h.cluster_id(), h.member_id()), ids);
    let m = c.member_list().await.expect("member list");
    let mh = m.header().expect("member list header");
    assert_eq!((mh.cluster_id(), mh.member_id()), ids);
    match m.members() {
        [member] => {
            assert_eq!(member.id(), ids.1);
            assert_eq!(member.name(), "t");
            assert_eq!(member.peer_urls(), [server.peer_url()]);
            assert_eq!(member.client_urls(), [server.endpoint()]);
            assert!(!member.is_learner());
        }
        other => panic!("expected one member, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_options_redb() {
    scenario(Kind::Redb).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_options_mem() {
    scenario(Kind::Mem).await;
}

/// The same assertions hold for etcd 3.4: the expectations above are etcd's behaviour.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_options_etcd_reference() {
    scenario(Kind::Etcd).await;
}
