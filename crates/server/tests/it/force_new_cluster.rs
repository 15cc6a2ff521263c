//! `--force-new-cluster`, side by side with etcd 3.4: a member of a dead three-member cluster
//! restarts alone with its data, serves it as a one-member cluster, and grows again with
//! `etcdctl member add`.

use std::process::Command;
use std::time::{Duration, Instant};

use testkit::{Cluster, ClusterOptions};

use crate::harness::require_tool;

const KEYS: usize = 20;

/// etcdctl against `endpoint`: its stdout, or its stderr when it fails.
fn etcdctl(endpoint: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(require_tool("etcdctl"))
        .env("ETCDCTL_API", "3")
        .args([
            "--endpoints",
            endpoint,
            "--dial-timeout=2s",
            "--command-timeout=5s",
        ])
        .args(args)
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// Retries `f` until it returns `Some`, for at most `limit`.
fn until<T>(limit: Duration, what: &str, mut f: impl FnMut() -> Result<Option<T>, String>) -> T {
    let started = Instant::now();
    let mut last = String::new();
    loop {
        match f() {
            Ok(Some(v)) => return v,
            Ok(None) => {}
            Err(e) => last = e,
        }
        assert!(
            started.elapsed() < limit,
            "{what}: not within {limit:?} (last error: {last})"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The keys and values under `prefix` that `endpoint` serves (`serializable`: from its own
/// store).
fn pairs(endpoint: &str, prefix: &str, serializable: bool) -> Result<Vec<String>, String> {
    let consistency = if serializable {
        "--consistency=s"
    } else {
        "--consistency=l"
    };
    let out = etcdctl(endpoint, &["get", prefix, "--prefix", consistency])?;
    Ok(out.lines().map(str::to_string).collect())
}

fn expected() -> Vec<String> {
    let mut keys: Vec<(String, String)> = (0..KEYS)
        .map(|i| (format!("f/{i:02}"), format!("v{i}")))
        .collect();
    keys.sort();
    keys.into_iter().flat_map(|(k, v)| [k, v]).collect()
}

fn members(endpoint: &str) -> Result<Vec<String>, String> {
    Ok(etcdctl(endpoint, &["member", "list"])?
        .lines()
        .map(str::to_string)
        .collect())
}

/// The scenario, on either store: what a user relies on after `--force-new-cluster`.
fn force_new_cluster_scenario(mut cluster: Cluster, who: &str) {
    let all = cluster.endpoints().join(",");
    for i in 0..KEYS {
        etcdctl(&all, &["put", &format!("f/{i:02}"), &format!("v{i}")])
            .unwrap_or_else(|e| panic!("{who}: put: {e}"));
    }
    // The member that will survive holds every acknowledged write before the cluster dies.
    let survivor = cluster.member(0).endpoint();
    until(
        Duration::from_secs(20),
        "member 0 applies every write",
        || Ok((pairs(&survivor, "f/", true)? == expected()).then_some(())),
    );
    for i in 0..3 {
        cluster.kill(i);
    }
    cluster.set_member_args(0, vec!["--force-new-cluster".into()]);
    cluster
        .restart(0)
        .unwrap_or_else(|e| panic!("{who}: restart with --force-new-cluster: {e}"));
    // Alone, it leads itself and serves every key it had, linearizably.
    let got = until(
        Duration::from_secs(30),
        "linearizable read after forcing",
        || pairs(&survivor, "f/", false).map(Some),
    );
    if who == "etcd" {
        // etcd drops the entries past the commit index its WAL holds, and after a SIGKILL
        // that index can lag what the member had applied: the last writes may be gone
        // (seen: f/19 lost). What is left is an unbroken prefix of the writes.
        let all = expected();
        assert!(
            got.len() >= 2 && all.starts_with(&got),
            "{who}: the data after --force-new-cluster: {got:?}"
        );
    } else {
        // MetaStore keeps every entry of the survivor's log: nothing it applied is lost.
        assert_eq!(got, expected(), "{who}: the data after --force-new-cluster");
    }
    let listed = members(&survivor).unwrap_or_else(|e| panic!("{who}: member list: {e}"));
    assert_eq!(listed.len(), 1, "{who}: {listed:?}");
    assert!(listed[0].contains("m0"), "{who}: {listed:?}");
    etcdctl(&survivor, &["put", "f/after", "forced"])
        .unwrap_or_else(|e| panic!("{who}: put after forcing: {e}"));
    // It grows again as a one-member cluster does.
    let new = cluster.prepare_member();
    let name = cluster.member(new).name.clone();
    let peer = format!("--peer-urls={}", cluster.member(new).peer_url());
    let printed = etcdctl(&survivor, &["member", "add", &name, &peer])
        .unwrap_or_else(|e| panic!("{who}: member add: {e}"));
    assert!(
        printed.contains("ETCD_INITIAL_CLUSTER_STATE=\"existing\""),
        "{who}: {printed}"
    );
    cluster.set_initial_members(new, vec![0, new]);
    cluster
        .start_prepared(new)
        .unwrap_or_else(|e| panic!("{who}: starting the new member: {e}"));
    let joined = cluster.member(new).endpoint();
    until(Duration::from_secs(30), "the new member catches up", || {
        let got = pairs(&joined, "f/after", true)?;
        Ok((got == ["f/after", "forced"]).then_some(()))
    });
    etcdctl(&joined, &["put", "f/grown", "yes"])
        .unwrap_or_else(|e| panic!("{who}: put through the new member: {e}"));
    let got = until(Duration::from_secs(30), "both members started", || {
        let listed = members(&survivor)?;
        Ok(
            (listed.len() == 2 && !listed.iter().any(|l| l.contains("unstarted")))
                .then_some(listed),
        )
    });
    assert!(got.iter().any(|l| l.contains(&name)), "{who}: {got:?}");
    let got = pairs(&survivor, "f/grown", false).unwrap_or_else(|e| panic!("{who}: get: {e}"));
    assert_eq!(got, ["f/grown", "yes"], "{who}");
}

#[test]
fn force_new_cluster_restarts_one_member_with_its_data_and_grows_again_as_etcd() {
    let etcd = Cluster::start_etcd(require_tool("etcd"), 3, Vec::new())
        .unwrap_or_else(|e| panic!("starting etcd: {e}"));
    force_new_cluster_scenario(etcd, "etcd");
    let ours = Cluster::start(ClusterOptions {
        binary: env!("CARGO_BIN_EXE_metastore").into(),
        members: 3,
        engine: "redb".into(),
        extra_args: Vec::new(),
        proxy_peers: false,
    })
    .unwrap_or_else(|e| panic!("starting metastore: {e}"));
    force_new_cluster_scenario(ours, "metastore");
}
