//! etcd's HTTP/JSON gateway and unknown paths on the client port, side by side with etcd 3.4:
//! the same requests (through `curl`, as users send them) to both, the JSON compared after
//! masking what differs by construction (ids, term, sizes, hashes, tokens, URLs).

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use serde_json::Value;

use crate::harness::{require_tool, Kind, Server};

/// One HTTP exchange: status, redirect, content type, body.
#[derive(Debug, PartialEq)]
struct Answer {
    status: u16,
    /// Where a redirect points, without the server's address.
    location: String,
    content_type: String,
    body: String,
}

/// Sends `method path` with `body` (and `token` as `Authorization`) and answers status,
/// redirect, content type and body.
fn send(server: &Server, method: &str, path: &str, body: &str, token: Option<&str>) -> Answer {
    let mut command = Command::new(require_tool("curl"));
    command.args([
        "-s",
        "--path-as-is",
        "--max-time",
        "10",
        "-X",
        method,
        "--data-binary",
        body,
    ]);
    command.args(["-w", "\n%{http_code}|%{redirect_url}|%{content_type}"]);
    if let Some(token) = token {
        command.args(["-H", &format!("Authorization: {token}")]);
    }
    let out = command
        .arg(format!("{}{path}", server.endpoint()))
        .output()
        .expect("running curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, last) = text.rsplit_once('\n').expect("curl's trailer line");
    let mut trailer = last.splitn(3, '|');
    let status = trailer.next().unwrap_or_default();
    let location = trailer.next().unwrap_or_default();
    Answer {
        status: status.parse().expect("status code"),
        location: location.replace(&server.endpoint(), ""),
        content_type: trailer.next().unwrap_or_default().to_string(),
        body: body.to_string(),
    }
}

/// The first `lines` lines a streaming call answers (curl gives up after 10 s).
fn stream(server: &Server, path: &str, body: &str, lines: usize) -> Vec<String> {
    let mut child = Command::new(require_tool("curl"))
        .args([
            "-sN",
            "--max-time",
            "10",
            "-X",
            "POST",
            "--data-binary",
            body,
        ])
        .arg(format!("{}{path}", server.endpoint()))
        .stdout(Stdio::piped())
        .spawn()
        .expect("running curl");
    let stdout = child.stdout.take().expect("curl's stdout");
    let seen: Vec<String> = BufReader::new(stdout)
        .lines()
        .take(lines)
        .map_while(Result::ok)
        .collect();
    let _ = child.kill();
    let _ = child.wait();
    seen
}

/// Replaces what differs between two fresh single-member clusters by construction.
fn mask(value: &mut Value) {
    match value {
        Value::Object(map) => {
            let lease_ttl = map.contains_key("grantedTTL");
            let member = map.contains_key("peerURLs");
            for (key, field) in map.iter_mut() {
                let differs = matches!(
                    key.as_str(),
                    "cluster_id"
                        | "member_id"
                        | "raft_term"
                        | "token"
                        | "version"
                        | "dbSize"
                        | "dbSizeInUse"
                        | "leader"
                        | "raftIndex"
                        | "raftTerm"
                        | "raftAppliedIndex"
                        | "hash"
                ) || (member && matches!(key.as_str(), "ID" | "name" | "peerURLs" | "clientURLs"))
                    // A lease's remaining TTL may have ticked on one server and not the other.
                    || (lease_ttl && key == "TTL");
                if differs {
                    *field = Value::String("<masked>".into());
                } else if let (true, Value::Array(leases)) = (key == "leases", &mut *field) {
                    // etcd lists leases in its map's (random) order.
                    leases.sort_by_key(Value::to_string);
                } else {
                    mask(field);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(mask),
        _ => {}
    }
}

/// The JSON of an answer, masked; a body that is not JSON is kept as text.
fn normalized(answer: &Answer) -> (u16, String, Value) {
    let mut body =
        serde_json::from_str(&answer.body).unwrap_or_else(|_| Value::String(answer.body.clone()));
    mask(&mut body);
    (answer.status, answer.content_type.clone(), body)
}

#[test]
fn unknown_paths_answer_404_as_etcd() {
    let etcd = Server::start(Kind::Etcd, &[]);
    let ours = Server::start(Kind::Redb, &[]);
    let mut wrong = Vec::new();
    for (method, path) in [
        ("POST", "/nope"),
        ("GET", "/nope"),
        ("POST", "/v3alpha/kv/put"),
        ("POST", "/v3/nope"),
        ("POST", "/v3/"),
        ("GET", "/v3"),
        ("POST", "/v3?a=1"),
        ("POST", "/v3beta"),
        ("GET", "/v3//kv/range"),
        ("POST", "/v3beta//kv/range"),
        ("POST", "/x//y"),
        ("GET", "/v3/./kv/../kv/range"),
        ("GET", "/v3beta/"),
        ("POST", "/v3beta/kv/nope"),
        ("POST", "/v3/maintenance/hashkv"),
        ("POST", "/v3/auth/status"),
        ("GET", "/v3/kv/range"),
        ("GET", "/v3beta/kv/put"),
    ] {
        let body = r#"{"key":"Zm9v","value":"YmFy"}"#;
        let (expected, got) = (
            send(&etcd, method, path, body, None),
            send(&ours, method, path, body, None),
        );
        if expected != got {
            wrong.push(format!(
                "{method} {path}: etcd {expected:?}, metastore {got:?}"
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    // Nothing was written through the unknown paths.
    let range =
        |s: &Server| normalized(&send(s, "POST", "/v3/kv/range", r#"{"key":"Zm9v"}"#, None));
    assert_eq!(range(&etcd), range(&ours));
}

#[test]
fn gateway_answers_as_etcd_under_v3_and_v3beta() {
    let etcd = Server::start(Kind::Etcd, &[]);
    let ours = Server::start(Kind::Redb, &[]);
    let mut wrong = Vec::new();
    let compare = |wrong: &mut Vec<String>, label: &str, expected: &Answer, got: &Answer| {
        let (e, g) = (normalized(expected), normalized(got));
        if e != g {
            wrong.push(format!("{label}:\n  etcd      {e:?}\n  metastore {g:?}"));
        }
    };
    for (round, prefix) in ["/v3", "/v3beta"].into_iter().enumerate() {
        let lease = 1000 + round;
        let unary: Vec<(&str, String)> = vec![
            ("kv/put", r#"{"key":"Zm9v","value":"YmFy"}"#.into()),
            ("kv/put", r#"{"key":"Zm9v","value":"YmF6","prev_kv":true}"#.into()),
            ("kv/put", r#"{"key":"YQ==","value":"MQ=="}"#.into()),
            ("kv/range", r#"{"key":"Zm9v"}"#.into()),
            ("kv/range", r#"{"key":"YQ==","range_end":"eg==","sort_order":"DESCEND","keys_only":true}"#.into()),
            ("kv/range", r#"{"key":"AA==","range_end":"AA==","count_only":true}"#.into()),
            (
                "kv/txn",
                r#"{"compare":[{"key":"Zm9v","target":"VALUE","result":"EQUAL","value":"YmF6"}],
                    "success":[{"request_put":{"key":"dA==","value":"dg=="}},{"request_range":{"key":"Zm9v"}}],
                    "failure":[{"request_delete_range":{"key":"Zm9v"}}]}"#
                    .into(),
            ),
            ("kv/txn", r#"{"compare":[{"key":"Zm9v","target":"VERSION","result":"GREATER","version":"9"}],"failure":[{"request_range":{"key":"dA=="}}]}"#.into()),
            ("kv/deleterange", r#"{"key":"dA==","prev_kv":true}"#.into()),
            ("kv/deleterange", r#"{"key":"bm9uZQ=="}"#.into()),
            ("kv/put", r#"{"key":""}"#.into()),
            ("lease/grant", format!(r#"{{"TTL":"60","ID":"{lease}"}}"#)),
            ("lease/grant", format!(r#"{{"TTL":"60","ID":"{lease}"}}"#)),
            ("kv/put", format!(r#"{{"key":"bA==","value":"dg==","lease":"{lease}"}}"#)),
            ("kv/put", r#"{"key":"bA==","lease":"77"}"#.into()),
            ("lease/timetolive", format!(r#"{{"ID":"{lease}","keys":true}}"#)),
            ("kv/lease/timetolive", format!(r#"{{"ID":"{lease}"}}"#)),
            ("lease/leases", "{}".into()),
            ("kv/lease/leases", "".into()),
            ("lease/revoke", format!(r#"{{"ID":"{lease}"}}"#)),
            ("kv/lease/revoke", format!(r#"{{"ID":"{lease}"}}"#)),
            ("lease/timetolive", format!(r#"{{"ID":"{lease}"}}"#)),
            ("cluster/member/list", "{}".into()),
            ("maintenance/status", "{}".into()),
            ("maintenance/alarm", r#"{"action":"GET"}"#.into()),
            ("maintenance/hash", "{}".into()),
            ("maintenance/defragment", "{}".into()),
        ];
        for (path, body) in &unary {
            let path = format!("{prefix}/{path}");
            compare(
                &mut wrong,
                &format!("POST {path} {body}"),
                &send(&etcd, "POST", &path, body, None),
                &send(&ours, "POST", &path, body, None),
            );
        }
        // Compaction at the current revision, then a read below it.
        let revision = |s: &Server| {
            let answer = send(s, "POST", "/v3/kv/range", r#"{"key":"Zm9v"}"#, None);
            let v: Value = serde_json::from_str(&answer.body).expect("range JSON");
            v["header"]["revision"]
                .as_str()
                .expect("revision")
                .to_string()
        };
        let (at, at_ours) = (revision(&etcd), revision(&ours));
        assert_eq!(at, at_ours, "both stores took the same writes");
        for (path, body) in [
            (
                "kv/compaction",
                format!(r#"{{"revision":"{at}","physical":true}}"#),
            ),
            ("kv/range", r#"{"key":"Zm9v","revision":"2"}"#.to_string()),
            ("kv/compaction", r#"{"revision":"1"}"#.to_string()),
        ] {
            let path = format!("{prefix}/{path}");
            compare(
                &mut wrong,
                &format!("POST {path} {body}"),
                &send(&etcd, "POST", &path, &body, None),
                &send(&ours, "POST", &path, &body, None),
            );
        }
        // Streams: a watch of every key from the compaction point (its history: the lease
        // revocation's delete, then a new write), a keep-alive of a fresh lease and of none.
        let watch_body = format!(
            r#"{{"create_request":{{"key":"AA==","range_end":"AA==","start_revision":"{at}"}}}}"#
        );
        let keepalive_lease = 2000 + round;
        for server in [&etcd, &ours] {
            let grant = format!(r#"{{"TTL":"30","ID":"{keepalive_lease}"}}"#);
            assert_eq!(
                send(server, "POST", "/v3/lease/grant", &grant, None).status,
                200
            );
        }
        let mut streams = Vec::new();
        for server in [&etcd, &ours] {
            let endpoint_path = format!("{prefix}/watch");
            let mut child = Command::new(require_tool("curl"))
                .args([
                    "-sN",
                    "--max-time",
                    "10",
                    "-X",
                    "POST",
                    "--data-binary",
                    &watch_body,
                ])
                .arg(format!("{}{endpoint_path}", server.endpoint()))
                .stdout(Stdio::piped())
                .spawn()
                .expect("running curl");
            let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
            let mut seen = Vec::new();
            // "created", then the history from the compaction point.
            for _ in 0..2 {
                seen.push(lines.next().and_then(Result::ok).unwrap_or_default());
            }
            let put = send(
                server,
                "POST",
                "/v3/kv/put",
                r#"{"key":"Zm9v","value":"bmV3"}"#,
                None,
            );
            assert_eq!(put.status, 200, "{put:?}");
            seen.push(lines.next().and_then(Result::ok).unwrap_or_default());
            let _ = child.kill();
            let _ = child.wait();
            let keepalive = format!(r#"{{"ID":"{keepalive_lease}"}}"#);
            seen.extend(stream(
                server,
                &format!("{prefix}/lease/keepalive"),
                &keepalive,
                1,
            ));
            seen.extend(stream(
                server,
                &format!("{prefix}/lease/keepalive"),
                r#"{"ID":"5"}"#,
                1,
            ));
            streams.push(seen);
        }
        for (i, (e, g)) in streams[0].iter().zip(&streams[1]).enumerate() {
            let parse = |line: &String| {
                let mut v = serde_json::from_str(line).unwrap_or(Value::String(line.clone()));
                mask(&mut v);
                v
            };
            if parse(e) != parse(g) {
                wrong.push(format!(
                    "{prefix} stream line {i}:\n  etcd      {e}\n  metastore {g}"
                ));
            }
        }
        assert_eq!(streams[0].len(), streams[1].len(), "{streams:?}");
    }
    // Auth: root, then a token carried by `Authorization`.
    let steps: [(&str, &str, bool); 9] = [
        (
            "/v3/auth/user/add",
            r#"{"name":"root","password":"pw"}"#,
            false,
        ),
        (
            "/v3/auth/user/grant",
            r#"{"user":"root","role":"root"}"#,
            false,
        ),
        ("/v3/auth/enable", "{}", false),
        (
            "/v3/auth/authenticate",
            r#"{"name":"root","password":"wrong"}"#,
            false,
        ),
        ("/v3/kv/range", r#"{"key":"Zm9v"}"#, false),
        (
            "/v3beta/auth/user/add",
            r#"{"name":"u2","password":"p"}"#,
            true,
        ),
        ("/v3/auth/user/get", r#"{"name":"u2"}"#, true),
        ("/v3/kv/range", r#"{"key":"Zm9v","keys_only":true}"#, true),
        ("/v3/auth/disable", "{}", true),
    ];
    let token = |s: &Server| {
        let answer = send(
            s,
            "POST",
            "/v3/auth/authenticate",
            r#"{"name":"root","password":"pw"}"#,
            None,
        );
        let v: Value = serde_json::from_str(&answer.body).unwrap_or(Value::Null);
        v["token"].as_str().map(str::to_string)
    };
    let mut tokens: [Option<String>; 2] = [None, None];
    for (path, body, with_token) in steps {
        if with_token && tokens[0].is_none() {
            tokens = [token(&etcd), token(&ours)];
            assert!(tokens.iter().all(Option::is_some), "tokens {tokens:?}");
        }
        let pick = |i: usize| {
            if with_token {
                tokens[i].as_deref()
            } else {
                None
            }
        };
        compare(
            &mut wrong,
            &format!("POST {path} {body} (token: {with_token})"),
            &send(&etcd, "POST", path, body, pick(0)),
            &send(&ours, "POST", path, body, pick(1)),
        );
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn gateway_can_be_turned_off() {
    let etcd = Server::start(Kind::Etcd, &["--enable-grpc-gateway=false"]);
    let ours = Server::start(Kind::Redb, &["--enable-grpc-gateway=false"]);
    let body = r#"{"key":"Zm9v","value":"YmFy"}"#;
    let expected = send(&etcd, "POST", "/v3/kv/put", body, None);
    assert_eq!(expected.status, 404, "{expected:?}");
    assert_eq!(expected, send(&ours, "POST", "/v3/kv/put", body, None));
    // Without the gateway, `/v3` is no subtree; unclean paths are still redirected.
    for path in ["/v3", "/v3/", "/v3//kv/put"] {
        assert_eq!(
            send(&etcd, "GET", path, "", None),
            send(&ours, "GET", path, "", None),
            "GET {path}"
        );
    }
}
