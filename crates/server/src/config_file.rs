//! etcd's `--config-file`: a YAML file of etcd's key names, read as etcd 3.4 reads it.
//!
//! etcd 3.4's precedence: when a configuration file is given (`--config-file` or
//! `ETCD_CONFIG_FILE`), it is the whole configuration — every other command-line flag and every
//! `ETCD_*` variable is ignored (etcd logs that it ignores them). The file's values are typed as
//! etcd's JSON decoding types them (numbers for counts, integer nanoseconds for durations,
//! booleans for switches, lists for `log-outputs` and `cipher-suites`); a value of the wrong
//! type stops the server with etcd's words. TLS comes in the two nested maps
//! `client-transport-security` and `peer-transport-security`. Keys etcd does not read are
//! ignored by etcd; here they are warned about, except MetaStore's own flags (`engine`, ...),
//! which a file may set too (and MetaStore's `METASTORE_*` variables, not etcd's, still apply).

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use serde_yaml_ng::Value;

/// How etcd types a key's value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// A string.
    Str,
    /// A non-negative integer (Go's uint, uint32, uint64).
    Uint(&'static str),
    /// An integer (Go's int, int64).
    Int(&'static str),
    /// A boolean.
    Bool,
    /// Go's time.Duration: integer nanoseconds.
    Duration,
    /// A list of strings (joined with commas for the flag).
    List,
}

/// Every top-level key etcd 3.4 reads from its configuration file, and its type (found by
/// giving etcd 3.4.23 a value of the wrong type for each flag name).
const KEYS: &[(&str, Kind)] = &[
    ("name", Kind::Str),
    ("data-dir", Kind::Str),
    ("wal-dir", Kind::Str),
    ("snapshot-count", Kind::Uint("uint64")),
    ("heartbeat-interval", Kind::Uint("uint")),
    ("election-timeout", Kind::Uint("uint")),
    ("initial-election-tick-advance", Kind::Bool),
    ("listen-peer-urls", Kind::Str),
    ("listen-client-urls", Kind::Str),
    ("max-snapshots", Kind::Uint("uint")),
    ("max-wals", Kind::Uint("uint")),
    ("quota-backend-bytes", Kind::Int("int64")),
    ("backend-batch-interval", Kind::Duration),
    ("backend-batch-limit", Kind::Int("int")),
    ("max-txn-ops", Kind::Uint("uint")),
    ("max-request-bytes", Kind::Uint("uint")),
    ("max-concurrent-streams", Kind::Uint("uint32")),
    ("grpc-keepalive-min-time", Kind::Duration),
    ("grpc-keepalive-interval", Kind::Duration),
    ("grpc-keepalive-timeout", Kind::Duration),
    ("initial-advertise-peer-urls", Kind::Str),
    ("initial-cluster", Kind::Str),
    ("initial-cluster-state", Kind::Str),
    ("initial-cluster-token", Kind::Str),
    ("advertise-client-urls", Kind::Str),
    ("discovery", Kind::Str),
    ("discovery-proxy", Kind::Str),
    ("discovery-srv", Kind::Str),
    ("discovery-srv-name", Kind::Str),
    ("strict-reconfig-check", Kind::Bool),
    ("pre-vote", Kind::Bool),
    ("auto-compaction-retention", Kind::Str),
    ("auto-compaction-mode", Kind::Str),
    ("enable-v2", Kind::Bool),
    ("enable-grpc-gateway", Kind::Bool),
    ("cipher-suites", Kind::List),
    ("cors", Kind::Str),
    ("host-whitelist", Kind::Str),
    ("auth-token", Kind::Str),
    ("bcrypt-cost", Kind::Uint("uint")),
    ("auth-token-ttl", Kind::Uint("uint")),
    ("enable-pprof", Kind::Bool),
    ("metrics", Kind::Str),
    ("listen-metrics-urls", Kind::Str),
    ("logger", Kind::Str),
    ("log-outputs", Kind::List),
    ("log-level", Kind::Str),
    ("debug", Kind::Bool),
    ("log-package-levels", Kind::Str),
    ("proxy", Kind::Str),
    ("proxy-failure-wait", Kind::Uint("uint")),
    ("proxy-refresh-interval", Kind::Uint("uint")),
    ("proxy-dial-timeout", Kind::Uint("uint")),
    ("proxy-write-timeout", Kind::Uint("uint")),
    ("proxy-read-timeout", Kind::Uint("uint")),
    ("experimental-initial-corrupt-check", Kind::Bool),
    ("experimental-corrupt-check-time", Kind::Duration),
    ("experimental-enable-v2v3", Kind::Str),
    ("experimental-backend-bbolt-freelist-type", Kind::Str),
    ("experimental-enable-lease-checkpoint", Kind::Bool),
    ("experimental-compaction-batch-limit", Kind::Int("int")),
    (
        "experimental-watch-progress-notify-interval",
        Kind::Duration,
    ),
    ("experimental-warning-apply-duration", Kind::Duration),
    ("force-new-cluster", Kind::Bool),
];

/// The keys of `client-transport-security` and `peer-transport-security`, and the flag each
/// becomes (without the `peer-` prefix of the peer side).
const SECURITY_KEYS: &[(&str, Kind, &str)] = &[
    ("cert-file", Kind::Str, "cert-file"),
    ("key-file", Kind::Str, "key-file"),
    ("client-cert-auth", Kind::Bool, "client-cert-auth"),
    ("trusted-ca-file", Kind::Str, "trusted-ca-file"),
    ("auto-tls", Kind::Bool, "auto-tls"),
];

/// The configuration file asked for: `--config-file` on the command line (as Go reads flags:
/// one or two dashes, `=value` or the next argument), else `ETCD_CONFIG_FILE`. An empty value
/// asks for none (etcd's default).
pub fn requested(args: &[OsString], env_value: Option<&str>) -> Option<PathBuf> {
    let mut it = args.iter().skip(1);
    let mut found = None;
    while let Some(arg) = it.next() {
        let Some(text) = arg.to_str() else { continue };
        if text == "--" {
            break;
        }
        let Some(bare) = text.strip_prefix("--").or_else(|| text.strip_prefix('-')) else {
            continue;
        };
        if let Some(v) = bare.strip_prefix("config-file=") {
            found = Some(PathBuf::from(v));
        } else if bare == "config-file" {
            found = it.next().map(PathBuf::from);
        }
    }
    // etcd: an empty flag falls back to the variable.
    found
        .filter(|p| !p.as_os_str().is_empty())
        .or_else(|| env_value.map(PathBuf::from))
        .filter(|p| !p.as_os_str().is_empty())
}

/// etcd's words for a value of the wrong type.
fn wrong_type(what: &str, path: &str, go_type: &str) -> String {
    format!(
        "error unmarshaling JSON: while decoding JSON: json: cannot unmarshal {what} into Go \
         struct field {path} of type {go_type}"
    )
}

/// What JSON would call `v`.
fn json_kind(v: &Value) -> String {
    match v {
        Value::Bool(_) => "bool".into(),
        Value::Number(n) => format!("number {n}"),
        Value::String(_) => "string".into(),
        Value::Sequence(_) => "array".into(),
        Value::Mapping(_) => "object".into(),
        Value::Null => "null".into(),
        Value::Tagged(_) => "object".into(),
    }
}

/// `value` as the flag's text, if it has `kind`'s type.
fn as_flag_value(kind: Kind, value: &Value, path: &str) -> Result<String, String> {
    let go_type = match kind {
        Kind::Str => "string",
        Kind::Uint(t) | Kind::Int(t) => t,
        Kind::Bool => "bool",
        Kind::Duration => "time.Duration",
        Kind::List => "[]string",
    };
    let bad = || wrong_type(&json_kind(value), path, go_type);
    match (kind, value) {
        (Kind::Str, Value::String(s)) => Ok(s.clone()),
        (Kind::Bool, Value::Bool(b)) => Ok(b.to_string()),
        (Kind::Uint(_), Value::Number(n)) => n.as_u64().map(|u| u.to_string()).ok_or_else(bad),
        (Kind::Int(_), Value::Number(n)) => n.as_i64().map(|i| i.to_string()).ok_or_else(bad),
        (Kind::Duration, Value::Number(n)) => {
            let nanos = n.as_i64().ok_or_else(bad)?;
            if nanos < 0 {
                return Err(format!("{path}: a negative duration ({nanos}ns)"));
            }
            // Whole milliseconds when exact, so that every flag parser reads it.
            Ok(if nanos % 1_000_000 == 0 {
                format!("{}ms", nanos / 1_000_000)
            } else {
                format!("{}s", nanos as f64 / 1e9)
            })
        }
        (Kind::List, Value::Sequence(items)) => items
            .iter()
            .map(|i| match i {
                Value::String(s) => Ok(s.clone()),
                other => Err(wrong_type(&json_kind(other), path, "string")),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(|v| v.join(",")),
        _ => Err(bad()),
    }
}

/// What [`to_args`] made of a file.
#[derive(Debug, Default)]
pub struct FromFile {
    /// `metastore` followed by one `--flag=value` per key set.
    pub args: Vec<OsString>,
    /// Warnings to log (keys etcd does not read).
    pub notes: Vec<String>,
}

/// Reads the configuration file at `path` into command-line arguments (`program` first);
/// `own_flags` are the long names of MetaStore's own flags, which the file may set too.
///
/// # Errors
/// An unreadable file, YAML that does not parse, a value of the wrong type (in etcd's words).
pub fn to_args(path: &Path, program: OsString, own_flags: &[String]) -> Result<FromFile, String> {
    let shown = path.display();
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("--config-file {shown}: cannot read: {e}"))?;
    let doc: Value = serde_yaml_ng::from_str(&text)
        .map_err(|e| format!("--config-file {shown}: not valid YAML: {e}"))?;
    let mut out = FromFile {
        args: vec![program],
        notes: Vec::new(),
    };
    let map = match doc {
        Value::Mapping(m) => m,
        Value::Null => return Ok(out),
        other => {
            return Err(format!(
                "--config-file {shown}: {}",
                wrong_type(&json_kind(&other), "configYAML", "main.configYAML")
            ))
        }
    };
    let push = |out: &mut FromFile, flag: &str, value: String| {
        out.args.push(OsString::from(format!("--{flag}={value}")));
    };
    for (key, value) in &map {
        let Some(key) = key.as_str() else {
            return Err(format!(
                "--config-file {shown}: a key is not a string: {key:?}"
            ));
        };
        // A key with no value leaves etcd's default, as JSON's null does.
        if value.is_null() {
            continue;
        }
        let section = match key {
            "client-transport-security" => Some(""),
            "peer-transport-security" => Some("peer-"),
            _ => None,
        };
        if let Some(prefix) = section {
            let Value::Mapping(inner) = value else {
                return Err(format!(
                    "--config-file {shown}: {}",
                    wrong_type(
                        &json_kind(value),
                        &format!("configYAML.{key}"),
                        "embed.securityConfig"
                    )
                ));
            };
            for (sub, v) in inner {
                let Some(sub) = sub.as_str() else { continue };
                if v.is_null() {
                    continue;
                }
                match SECURITY_KEYS.iter().find(|(k, _, _)| *k == sub) {
                    Some((_, kind, flag)) => {
                        let field = format!("securityConfig.{key}.{sub}");
                        let v = as_flag_value(*kind, v, &field)
                            .map_err(|e| format!("--config-file {shown}: {e}"))?;
                        push(&mut out, &format!("{prefix}{flag}"), v);
                    }
                    None => out.notes.push(format!(
                        "--config-file {shown}: {key}.{sub} is not a key etcd reads; ignored"
                    )),
                }
            }
            continue;
        }
        if let Some((_, kind)) = KEYS.iter().find(|(k, _)| *k == key) {
            let field = format!("configYAML.{key}");
            let v = as_flag_value(*kind, value, &field)
                .map_err(|e| format!("--config-file {shown}: {e}"))?;
            push(&mut out, key, v);
        } else if own_flags.iter().any(|f| f == key) && key != "config-file" {
            // MetaStore's own flags, typed loosely: any scalar as its text.
            let v = match value {
                Value::String(s) => s.clone(),
                Value::Bool(b) => b.to_string(),
                Value::Number(n) => n.to_string(),
                other => {
                    return Err(format!(
                        "--config-file {shown}: {key}: {} is not a flag value",
                        json_kind(other)
                    ))
                }
            };
            push(&mut out, key, v);
        } else {
            out.notes.push(format!(
                "--config-file {shown}: {key} is not a key etcd reads from a configuration file; ignored"
            ));
        }
    }
    Ok(out)
}

/// The arguments and notes [`prepare`] made, and whether they came from a file.
#[derive(Debug)]
pub struct Prepared {
    /// What is left for clap.
    pub args: Vec<OsString>,
    /// Lines to log once logging is set up.
    pub notes: Vec<String>,
    /// Whether a configuration file gave the arguments: clap must then read no `ETCD_*`
    /// variable ([`parse`]).
    pub from_file: bool,
}

/// Every flag as Go reads it: [`crate::Flags`]'s and [`crate::etcd_flags::ETCD_FLAGS`]'s.
fn go_flags(command: &clap::Command) -> Vec<crate::etcd_flags::GoFlag> {
    let mut known: Vec<crate::etcd_flags::GoFlag> = command
        .get_arguments()
        .filter_map(|a| {
            Some(crate::etcd_flags::GoFlag {
                name: a.get_long()?.to_string(),
                // Booleans take no value or `=value` (`num_args = 0..=1`), as Go's.
                boolean: a.get_num_args().is_some_and(|n| n.min_values() == 0),
                env: a.get_env().map(|e| e.to_string_lossy().into_owned()),
            })
        })
        .collect();
    known.extend(crate::etcd_flags::table_go_flags());
    // clap's own, which `get_arguments` does not list (`-help`, `-version` as etcd takes them).
    known.extend(["help", "version"].map(|name| crate::etcd_flags::GoFlag {
        name: name.to_string(),
        boolean: true,
        env: None,
    }));
    known
}

/// etcd's refusal of a flag given both on the command line and as its `ETCD_*` variable
/// (checked only without a configuration file, as etcd 3.4 does); `None` when there is none.
pub fn shadowed(args: &[OsString], env: &[(String, String)]) -> Option<String> {
    use clap::CommandFactory;
    let known = go_flags(&crate::Flags::command());
    let (args, given) = crate::etcd_flags::go_style(args.to_vec(), &known);
    let env_file = env
        .iter()
        .find(|(k, _)| k == "ETCD_CONFIG_FILE")
        .map(|(_, v)| v.as_str());
    if requested(&args, env_file).is_some() {
        return None;
    }
    crate::etcd_flags::shadowed(&given, &known, env).err()
}

/// The process's arguments and environment as etcd 3.4 weighs them: the configuration file
/// alone when one is asked for, else the flags (one dash or two, as Go reads them) and
/// their `ETCD_*` variables; either way screened by [`crate::etcd_flags::screen`].
///
/// # Errors
/// An unreadable or ill-typed configuration file, a refused flag or variable.
pub fn prepare(args: Vec<OsString>, env: Vec<(String, String)>) -> Result<Prepared, String> {
    use clap::CommandFactory;
    let command = crate::Flags::command();
    // Go's flag package takes `-name` as `--name`; clap does not.
    let (args, _) = crate::etcd_flags::go_style(args, &go_flags(&command));
    // The variables clap reads; any other ETCD_* one is warned about, as etcd does.
    let known: Vec<String> = command
        .get_arguments()
        .filter_map(|a| a.get_env())
        .map(|e| e.to_string_lossy().into_owned())
        .collect();
    let env_file = env
        .iter()
        .find(|(k, _)| k == "ETCD_CONFIG_FILE")
        .map(|(_, v)| v.as_str());
    let Some(path) = requested(&args, env_file) else {
        let screened = crate::etcd_flags::screen(args, env, &known)?;
        return Ok(Prepared {
            args: screened.args,
            notes: screened.notes,
            from_file: false,
        });
    };
    let own: Vec<String> = command
        .get_arguments()
        .filter(|a| {
            a.get_env()
                .is_none_or(|e| !e.to_string_lossy().starts_with("ETCD_"))
        })
        .filter_map(|a| a.get_long().map(str::to_string))
        .collect();
    let program = args.first().cloned().unwrap_or_else(|| "metastore".into());
    let file = to_args(&path, program, &own)?;
    // The file's keys meet the same screen as flags; no variable is read.
    let screened = crate::etcd_flags::screen(file.args, Vec::new(), &known)?;
    let mut notes = vec![format!(
        "loaded server configuration from {:?}; other command-line flags and ETCD_* \
         environment variables are ignored if provided (as etcd 3.4 does)",
        path.display().to_string()
    )];
    notes.extend(file.notes);
    notes.extend(screened.notes);
    Ok(Prepared {
        args: screened.args,
        notes,
        from_file: true,
    })
}

/// Parses prepared arguments into [`crate::Flags`], exiting with clap's message on an error
/// (as `Parser::parse_from`). Arguments from a configuration file are read without any
/// `ETCD_*` variable.
pub fn parse(prepared: &Prepared) -> crate::Flags {
    use clap::{CommandFactory, FromArgMatches};
    let mut command = crate::Flags::command();
    if prepared.from_file {
        command = command.mut_args(|a| {
            if a.get_env()
                .is_some_and(|e| e.to_string_lossy().starts_with("ETCD_"))
            {
                a.env(None)
            } else {
                a
            }
        });
    }
    let matches = command.get_matches_from(prepared.args.clone());
    crate::Flags::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args_of(yaml: &str) -> Result<FromFile, String> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("etcd.yml");
        std::fs::write(&path, yaml).unwrap();
        to_args(&path, "metastore".into(), &["engine".to_string()])
    }

    fn texts(f: &FromFile) -> Vec<String> {
        f.args
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn keys_become_flags() {
        let f = args_of(
            "name: a\nheartbeat-interval: 200\nstrict-reconfig-check: false\n\
             grpc-keepalive-min-time: 5000000000\nlog-outputs: [stderr]\nwal-dir:\n\
             client-transport-security:\n  cert-file: c.pem\n  client-cert-auth: true\n\
             peer-transport-security:\n  key-file: k.pem\nengine: mem\nno-such-key: 1\n",
        )
        .unwrap();
        assert_eq!(
            texts(&f),
            [
                "metastore",
                "--name=a",
                "--heartbeat-interval=200",
                "--strict-reconfig-check=false",
                "--grpc-keepalive-min-time=5000ms",
                "--log-outputs=stderr",
                "--cert-file=c.pem",
                "--client-cert-auth=true",
                "--peer-key-file=k.pem",
                "--engine=mem",
            ]
        );
        assert_eq!(f.notes.len(), 1, "{:?}", f.notes);
        assert!(f.notes[0].contains("no-such-key"));
    }

    #[test]
    fn wrong_types_are_refused_in_etcds_words() {
        let e = args_of("heartbeat-interval: '100'\n").unwrap_err();
        assert!(
            e.contains("cannot unmarshal string into Go struct field configYAML.heartbeat-interval of type uint"),
            "{e}"
        );
        let e = args_of("grpc-keepalive-min-time: 5s\n").unwrap_err();
        assert!(e.contains("of type time.Duration"), "{e}");
        let e = args_of("log-outputs: stderr\n").unwrap_err();
        assert!(e.contains("of type []string"), "{e}");
        let e = args_of("client-transport-security:\n  auto-tls: 'yes'\n").unwrap_err();
        assert!(
            e.contains("securityConfig.client-transport-security.auto-tls of type bool"),
            "{e}"
        );
        let e = args_of("max-txn-ops: -1\n").unwrap_err();
        assert!(e.contains("number -1"), "{e}");
        assert!(args_of("name: [a\n")
            .unwrap_err()
            .contains("not valid YAML"));
    }

    #[test]
    fn the_file_is_found_as_go_reads_flags() {
        let args = |a: &[&str]| {
            std::iter::once("metastore")
                .chain(a.iter().copied())
                .map(OsString::from)
                .collect::<Vec<_>>()
        };
        assert_eq!(
            requested(&args(&["--name", "x", "-config-file", "a.yml"]), None),
            Some(PathBuf::from("a.yml"))
        );
        assert_eq!(
            requested(&args(&["--config-file=b.yml"]), Some("env.yml")),
            Some(PathBuf::from("b.yml"))
        );
        assert_eq!(
            requested(&args(&[]), Some("env.yml")),
            Some(PathBuf::from("env.yml"))
        );
        assert_eq!(requested(&args(&["--config-file="]), None), None);
    }
}
