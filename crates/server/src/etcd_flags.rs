//! etcd 3.4's flags that [`crate::Flags`] has no field for: each is either accepted with no
//! effect (it tunes an internal MetaStore does not have), accepted only at etcd's default, or
//! refused. docs/flags.md lists every etcd flag; a test keeps the two in step.

use std::ffi::OsString;

/// What MetaStore does with one of etcd's flags.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fate {
    /// Accepted, no effect here (it tunes an internal that does not exist); logged at start.
    NoEffect(&'static str),
    /// Accepted at etcd's default value (the behaviour is then the same); any other value is
    /// refused with the reason. An empty or false TLS flag asks for nothing to be secured,
    /// so it is accepted; any certificate, key or `true` is refused.
    DefaultOnly {
        /// etcd's default, as `etcd --help` shows it; `|` separates other values that
        /// behave as the default does here.
        default: &'static str,
        /// Why another value is refused.
        why: &'static str,
    },
    /// Refused, with the reason.
    Refused(&'static str),
}

/// One etcd flag and its fate.
#[derive(Clone, Copy, Debug)]
pub struct EtcdFlag {
    /// Its name, without dashes.
    pub name: &'static str,
    /// A boolean flag: `--name` alone means true, a value needs `=`.
    pub boolean: bool,
    /// What happens to it.
    pub fate: Fate,
}

const fn flag(name: &'static str, boolean: bool, fate: Fate) -> EtcdFlag {
    EtcdFlag {
        name,
        boolean,
        fate,
    }
}

const NO_TLS: &str =
    "this TLS feature is not supported yet (docs/security.md); refusing rather than serving with less security than was asked for";
const NO_V2: &str = "the v2 API and v2 proxy are not supported (MetaStore serves the v3 API only)";
const NO_DISCOVERY: &str =
    "the discovery service is not supported yet: use --initial-cluster or --discovery-srv";

/// Every etcd 3.4 flag [`crate::Flags`] has no field for.
pub const ETCD_FLAGS: &[EtcdFlag] = &[
    flag("max-snapshots", false, Fate::NoEffect("no Raft snapshot files are kept with the redb engine (its file is the snapshot), and only the newest with --engine mem, so there is no count to set")),
    flag("max-wals", false, Fate::NoEffect("the Raft log's segment files (raft-log/*.wal) are removed as soon as a Raft snapshot covers every entry they hold (openraft purges the log behind each snapshot), not kept up to a count")),
    flag("experimental-backend-bbolt-freelist-type", false, Fate::NoEffect("there is no bbolt freelist (the engine is redb or memory)")),
    flag("experimental-compaction-batch-limit", false, Fate::NoEffect("physical compaction removes history in its own bounded steps, not bbolt batches")),
    flag("experimental-warning-apply-duration", false, Fate::NoEffect("only etcd's slow-apply log warning; apply times are exported as metrics instead")),
    flag("initial-election-tick-advance", true, Fate::NoEffect("openraft has no election ticks to fast-forward; a booting member starts its first election after a randomized election timeout, as etcd with this flag off (only the time to the first leader differs)")),
    flag("discovery", false, Fate::DefaultOnly { default: "", why: NO_DISCOVERY }),
    flag("discovery-fallback", false, Fate::DefaultOnly { default: "proxy", why: NO_DISCOVERY }),
    flag("discovery-proxy", false, Fate::DefaultOnly { default: "", why: NO_DISCOVERY }),
    flag("enable-v2", true, Fate::DefaultOnly { default: "false", why: NO_V2 }),
    flag("experimental-enable-v2v3", false, Fate::DefaultOnly { default: "", why: NO_V2 }),
    flag("proxy", false, Fate::DefaultOnly { default: "off", why: NO_V2 }),
    flag("proxy-failure-wait", false, Fate::DefaultOnly { default: "5000", why: NO_V2 }),
    flag("proxy-refresh-interval", false, Fate::DefaultOnly { default: "30000", why: NO_V2 }),
    flag("proxy-dial-timeout", false, Fate::DefaultOnly { default: "1000", why: NO_V2 }),
    flag("proxy-write-timeout", false, Fate::DefaultOnly { default: "5000", why: NO_V2 }),
    flag("proxy-read-timeout", false, Fate::DefaultOnly { default: "0", why: NO_V2 }),
    flag("experimental-peer-skip-client-san-verification", true, Fate::DefaultOnly { default: "false", why: NO_TLS }),
    flag("enable-pprof", true, Fate::DefaultOnly { default: "false", why: "Go's /debug/pprof endpoints do not exist in a Rust server and no equivalent is built yet (profile the process with `perf record -p PID` meanwhile)" }),
    flag("log-package-levels", false, Fate::DefaultOnly { default: "", why: "per-package levels do not exist: use --log-level or RUST_LOG" }),
    flag("experimental-enable-lease-checkpoint", true, Fate::NoEffect("leases are always checkpointed here (every --lease-checkpoint-interval), as with this flag on; with it off etcd 3.4 gives leases their whole TTL again after a leader change, which MetaStore never does")),
];

/// The environment variable etcd reads for a flag: `ETCD_` and the name in capitals.
pub fn env_name(flag: &str) -> String {
    format!("ETCD_{}", flag.to_uppercase().replace('-', "_"))
}

fn normalize_bool(v: &str) -> Option<&'static str> {
    match v {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Some("true"),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Some("false"),
        _ => None,
    }
}

/// Whether `value` is the flag's default as etcd would read it.
fn is_default(f: &EtcdFlag, default: &str, value: &str) -> bool {
    if default.contains('|') {
        return default.split('|').any(|d| is_default(f, d, value));
    }
    if f.boolean {
        return normalize_bool(value).is_some() && normalize_bool(value) == normalize_bool(default);
    }
    if value == default {
        return true;
    }
    // Durations: `2h` and `7200s` are one default.
    match (
        crate::flags::parse_duration(value),
        crate::flags::parse_duration(default),
    ) {
        (Ok(a), Ok(b)) => a == b && !default.is_empty(),
        _ => false,
    }
}

/// What to do about `value` given for flag `f` (named as the user named it, `source`).
fn judge(f: &EtcdFlag, value: &str, source: &str) -> Result<Option<String>, String> {
    if f.boolean && normalize_bool(value).is_none() {
        return Err(format!(
            "{source}: invalid boolean value {value:?} for --{}",
            f.name
        ));
    }
    match f.fate {
        Fate::NoEffect(why) => Ok(Some(format!("{source}={value} has no effect here: {why}"))),
        Fate::DefaultOnly { default, why } => {
            if is_default(f, default, value) {
                Ok(None)
            } else {
                Err(format!(
                    "{source}={value} is not supported: {why} (only etcd's default {default:?} is accepted)"
                ))
            }
        }
        Fate::Refused(why) => Err(format!("{source} is not supported: {why}")),
    }
}

/// A flag as Go's flag package reads it, for [`go_style`] and [`shadowed`].
#[derive(Clone, Debug)]
pub struct GoFlag {
    /// Its name, without dashes.
    pub name: String,
    /// A boolean flag: `--name` alone means true, a value needs `=`.
    pub boolean: bool,
    /// The `ETCD_*` variable that also sets it, if any.
    pub env: Option<String>,
}

/// The flags of [`ETCD_FLAGS`] as [`GoFlag`]s.
pub fn table_go_flags() -> impl Iterator<Item = GoFlag> {
    ETCD_FLAGS.iter().map(|f| GoFlag {
        name: f.name.to_string(),
        boolean: f.boolean,
        env: Some(env_name(f.name)),
    })
}

/// Rewrites the flags of `known` given with one dash (`-name x`, `-data-dir=d`), as Go's flag
/// package takes them and scripts written for etcd pass them, into clap's `--name`; answers
/// the arguments and the flags given (indexes into `known`). The value of a flag that is not
/// boolean and has no `=` is the next argument, left as it is.
pub fn go_style(args: Vec<OsString>, known: &[GoFlag]) -> (Vec<OsString>, Vec<usize>) {
    let mut out = Vec::with_capacity(args.len());
    let mut given = Vec::new();
    let mut it = args.into_iter();
    if let Some(program) = it.next() {
        out.push(program);
    }
    while let Some(arg) = it.next() {
        let Some(text) = arg.to_str() else {
            out.push(arg);
            continue;
        };
        if text == "--" {
            out.push(arg);
            out.extend(it.by_ref());
            break;
        }
        let (bare, single) = match text.strip_prefix("--") {
            Some(bare) => (bare, false),
            None => match text.strip_prefix('-') {
                Some(bare) => (bare, true),
                None => {
                    out.push(arg);
                    continue;
                }
            },
        };
        let (name, inline) = match bare.split_once('=') {
            Some((n, _)) => (n, true),
            None => (bare, false),
        };
        let Some(at) = known.iter().position(|f| f.name == name) else {
            out.push(arg);
            continue;
        };
        given.push(at);
        out.push(if single {
            OsString::from(format!("-{text}"))
        } else {
            arg
        });
        if !inline && !known[at].boolean {
            out.extend(it.next());
        }
    }
    (out, given)
}

/// etcd refuses a flag given both on the command line and as its `ETCD_*` variable (even an
/// empty one), naming the first such variable in `env`'s order, in etcd 3.4's words.
///
/// # Errors
/// The refusal.
pub fn shadowed(given: &[usize], known: &[GoFlag], env: &[(String, String)]) -> Result<(), String> {
    for (key, _) in env {
        let clash = given
            .iter()
            .filter_map(|at| known.get(*at))
            .any(|f| f.env.as_deref() == Some(key.as_str()) && key.starts_with("ETCD_"));
        if clash {
            return Err(format!(
                "conflicting environment variable {key:?} is shadowed by corresponding \
                 command-line flag (either unset environment variable or disable flag)"
            ));
        }
    }
    Ok(())
}

/// What [`screen`] found: the arguments left for clap, and notes to log once logging is set up.
#[derive(Debug, Default)]
pub struct Screened {
    /// The arguments without the screened flags.
    pub args: Vec<OsString>,
    /// One line per flag accepted with no effect, and per unknown `ETCD_*` variable.
    pub notes: Vec<String>,
}

/// Takes etcd's flags that [`crate::Flags`] has no field for out of `args` (flags as Go reads
/// them: `-name`/`--name`, `=value` or the next argument, booleans only with `=`), and checks
/// the `ETCD_*` variables in `env` likewise, refusing unknown values and warning about
/// variables no flag reads (`known_env`: the variables [`crate::Flags`] reads).
///
/// # Errors
/// A refused flag or variable, with its name and why.
pub fn screen(
    args: Vec<OsString>,
    env: impl IntoIterator<Item = (String, String)>,
    known_env: &[String],
) -> Result<Screened, String> {
    let mut out = Screened::default();
    let mut it = args.into_iter();
    if let Some(program) = it.next() {
        out.args.push(program);
    }
    let mut given = Vec::new();
    while let Some(arg) = it.next() {
        let Some(text) = arg.to_str() else {
            out.args.push(arg);
            continue;
        };
        if text == "--" {
            out.args.push(arg);
            out.args.extend(it.by_ref());
            break;
        }
        let bare = text.strip_prefix("--").or_else(|| text.strip_prefix('-'));
        let Some(bare) = bare else {
            out.args.push(arg);
            continue;
        };
        let (name, inline) = match bare.split_once('=') {
            Some((n, v)) => (n, Some(v.to_string())),
            None => (bare, None),
        };
        let Some(f) = ETCD_FLAGS.iter().find(|f| f.name == name) else {
            out.args.push(arg);
            continue;
        };
        let value = match inline {
            Some(v) => v,
            None if f.boolean => "true".to_string(),
            None => it
                .next()
                .and_then(|v| v.into_string().ok())
                .ok_or_else(|| format!("flag needs an argument: --{name}"))?,
        };
        given.push(f.name);
        if let Some(note) = judge(f, &value, &format!("--{}", f.name))? {
            out.notes.push(note);
        }
    }
    for (key, value) in env {
        if !key.starts_with("ETCD_") || key.starts_with("ETCDCTL_") {
            continue;
        }
        if let Some(f) = ETCD_FLAGS.iter().find(|f| env_name(f.name) == key) {
            if given.contains(&f.name) {
                // Refused before by `shadowed` (etcd's rule); a configuration file's flags
                // meet no variable.
                continue;
            }
            if let Some(note) = judge(f, &value, &key)? {
                out.notes.push(note);
            }
        } else if !known_env.contains(&key) {
            out.notes
                .push(format!("unrecognized environment variable {key}={value}"));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &[&str], env: &[(&str, &str)]) -> Result<Screened, String> {
        screen(
            std::iter::once("metastore")
                .chain(args.iter().copied())
                .map(OsString::from)
                .collect(),
            env.iter().map(|(k, v)| (k.to_string(), v.to_string())),
            &["ETCD_NAME".to_string()],
        )
    }

    #[test]
    fn no_effect_flags_are_taken_out_and_noted() {
        let s = run(
            &[
                "--max-wals",
                "3",
                "--name",
                "a",
                "-experimental-compaction-batch-limit=9",
            ],
            &[],
        )
        .unwrap();
        assert_eq!(s.args, ["metastore", "--name", "a"]);
        assert_eq!(s.notes.len(), 2, "{:?}", s.notes);
        assert!(s.notes[0].contains("--max-wals=3 has no effect"));
    }

    #[test]
    fn refused_flags_and_variables_name_themselves() {
        let e = run(&["--experimental-peer-skip-client-san-verification"], &[]).unwrap_err();
        assert!(
            e.contains("--experimental-peer-skip-client-san-verification") && e.contains("TLS"),
            "{e}"
        );
        let e = run(
            &[],
            &[(
                "ETCD_EXPERIMENTAL_PEER_SKIP_CLIENT_SAN_VERIFICATION",
                "true",
            )],
        )
        .unwrap_err();
        assert!(
            e.contains("ETCD_EXPERIMENTAL_PEER_SKIP_CLIENT_SAN_VERIFICATION") && e.contains("TLS"),
            "{e}"
        );
        let e = run(&["--enable-v2"], &[]).unwrap_err();
        assert!(e.contains("--enable-v2=true"), "{e}");
        let e = run(&["--enable-v2=maybe"], &[]).unwrap_err();
        assert!(e.contains("invalid boolean"), "{e}");
    }

    #[test]
    fn defaults_are_accepted() {
        let s = run(
            &["--enable-v2=false", "--discovery-fallback=proxy"],
            &[
                ("ETCD_ENABLE_V2", "false"),
                (
                    "ETCD_EXPERIMENTAL_PEER_SKIP_CLIENT_SAN_VERIFICATION",
                    "false",
                ),
            ],
        )
        .unwrap();
        assert_eq!(s.args, ["metastore"]);
        assert!(s.notes.is_empty());
    }

    fn known() -> Vec<GoFlag> {
        let mut known: Vec<GoFlag> = [("name", false), ("debug", true), ("data-dir", false)]
            .into_iter()
            .map(|(name, boolean)| GoFlag {
                name: name.to_string(),
                boolean,
                env: Some(env_name(name)),
            })
            .collect();
        known.extend(table_go_flags());
        known
    }

    fn go(args: &[&str]) -> (Vec<String>, Vec<String>) {
        let known = known();
        let (out, given) = go_style(
            std::iter::once("metastore")
                .chain(args.iter().copied())
                .map(OsString::from)
                .collect(),
            &known,
        );
        (
            out.into_iter().map(|a| a.into_string().unwrap()).collect(),
            given.iter().map(|at| known[*at].name.clone()).collect(),
        )
    }

    #[test]
    fn single_dash_flags_read_as_go_reads_them() {
        let (args, given) = go(&[
            "-name",
            "-x",
            "-data-dir=d",
            "-debug",
            "--enable-v2",
            "-v",
            "z",
        ]);
        assert_eq!(
            args,
            [
                "metastore",
                "--name",
                "-x",
                "--data-dir=d",
                "--debug",
                "--enable-v2",
                "-v",
                "z"
            ]
        );
        assert_eq!(given, ["name", "data-dir", "debug", "enable-v2"]);
        let (args, given) = go(&["--", "-name"]);
        assert_eq!(args, ["metastore", "--", "-name"]);
        assert!(given.is_empty());
    }

    #[test]
    fn a_flag_and_its_variable_together_are_refused_as_by_etcd() {
        let known = known();
        let env = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<Vec<_>>()
        };
        let name = known.iter().position(|f| f.name == "name").unwrap();
        let e = shadowed(
            &[name],
            &known,
            &env(&[("ETCD_DEBUG", "1"), ("ETCD_NAME", "")]),
        )
        .unwrap_err();
        assert_eq!(
            e,
            "conflicting environment variable \"ETCD_NAME\" is shadowed by corresponding \
             command-line flag (either unset environment variable or disable flag)"
        );
        assert!(shadowed(&[name], &known, &env(&[("ETCD_DEBUG", "1")])).is_ok());
    }

    #[test]
    fn unknown_variables_are_noted_known_ones_not() {
        let s = run(
            &[],
            &[
                ("ETCD_NAME", "x"),
                ("ETCD_NAMME", "y"),
                ("ETCDCTL_API", "3"),
            ],
        )
        .unwrap();
        assert_eq!(s.notes, ["unrecognized environment variable ETCD_NAMME=y"]);
    }
}
