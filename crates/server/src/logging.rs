//! Logs as etcd writes them: `--logger capnslog` (etcd 3.4's default; here tracing's text
//! lines) or `--logger zap` (one JSON object a line: `level`, `ts`, `caller`, `msg`, then the
//! event's fields), to `--log-outputs` (`default`/`stderr`, `stdout`, and with zap file
//! paths), at `--log-level`. Colours only when every output is a terminal. `RUST_LOG` may add
//! levels for single targets (`RUST_LOG=openraft=debug`) but never replaces `--log-level`: a
//! global level in it is ignored, and said so at start.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::{IsTerminal, Write};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tracing::callsite::Identifier;
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Metadata, Subscriber};
use tracing_subscriber::filter::{dynamic_filter_fn, FilterExt};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, MakeWriter};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// Which of etcd's loggers formats the lines.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Logger {
    /// etcd 3.4's default: text lines.
    Capnslog,
    /// JSON lines, as etcd's zap logger writes them.
    Zap,
}

/// Where log lines go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    /// Standard error (`default`, `stderr`).
    Stderr,
    /// Standard output.
    Stdout,
    /// A file, appended to (zap only, as in etcd).
    File(std::path::PathBuf),
}

/// The checked logging flags.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogConfig {
    /// `--logger`.
    pub logger: Logger,
    /// `--log-outputs`, without duplicates.
    pub outputs: Vec<Output>,
    /// `--log-level` (or `--debug`), as tracing names it.
    pub level: Level,
}

impl LogConfig {
    /// Checks the flags as etcd 3.4 does, refusing what etcd refuses.
    ///
    /// # Errors
    /// An unknown logger, level or output, or a file output with capnslog, in etcd's words.
    pub fn from_flags(
        logger: &str,
        outputs: &str,
        level: &str,
        debug: bool,
    ) -> Result<Self, String> {
        let logger = match logger {
            "capnslog" => Logger::Capnslog,
            "zap" => Logger::Zap,
            other => return Err(format!("unknown logger option {other:?}")),
        };
        let level = match level {
            "debug" => Level::DEBUG,
            "info" => Level::INFO,
            "warn" => Level::WARN,
            // zap's levels above error all log as errors here; none stops the process.
            "error" | "dpanic" | "panic" | "fatal" => Level::ERROR,
            other => {
                return Err(format!(
                    "--log-level: unknown level {other:?} (use debug, info, warn, error, dpanic, \
                     panic or fatal)"
                ))
            }
        };
        let level = if debug { Level::DEBUG } else { level };
        let mut parsed = Vec::new();
        for name in outputs.split(',').map(str::trim).filter(|o| !o.is_empty()) {
            let output = match name {
                "default" | "stderr" => Output::Stderr,
                "stdout" => Output::Stdout,
                path if logger == Logger::Zap => Output::File(path.into()),
                path => {
                    return Err(format!(
                        "unknown log-output {path:?} (only supports \"default\", \"stderr\", \
                         \"stdout\")"
                    ))
                }
            };
            if !parsed.contains(&output) {
                parsed.push(output);
            }
        }
        if parsed.is_empty() {
            parsed.push(Output::Stderr);
        }
        Ok(Self {
            logger,
            outputs: parsed,
            level,
        })
    }
}

/// The filter: `level` for everything (openraft's chatter at warn), plus the per-target
/// directives of `rust_log`; its global levels are ignored. The notes, with their levels,
/// say so.
///
/// # Errors
/// A `RUST_LOG` directive tracing cannot read.
pub fn filter(level: Level, rust_log: Option<&str>) -> Result<(EnvFilter, Notes), String> {
    let level = level.as_str().to_ascii_lowercase();
    let mut notes = Vec::new();
    let mut added = Vec::new();
    for directive in rust_log
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
    {
        let global = !directive.contains('=')
            && ["trace", "debug", "info", "warn", "error", "off"]
                .contains(&directive.to_ascii_lowercase().as_str());
        if global {
            notes.push((
                Level::WARN,
                format!(
                    "RUST_LOG's global level {directive:?} is ignored: --log-level ({level}) sets \
                 it; RUST_LOG only adds levels for single targets (e.g. RUST_LOG=openraft=debug)"
                ),
            ));
        } else {
            added.push(directive.to_string());
        }
    }
    let mut directives = vec![level.clone()];
    if !added.iter().any(|d| d.starts_with("openraft")) {
        directives.push("openraft=warn".to_string());
    }
    directives.extend(added.iter().cloned());
    let filter = EnvFilter::try_new(directives.join(","))
        .map_err(|e| format!("RUST_LOG {:?}: {e}", rust_log.unwrap_or("")))?;
    if !added.is_empty() {
        notes.push((
            Level::INFO,
            format!(
                "logging at level {level}; RUST_LOG adds {}",
                added.join(",")
            ),
        ));
    }
    Ok((filter, notes))
}

/// Lines to log once the subscriber is installed, each with its level.
pub type Notes = Vec<(Level, String)>;

/// Installs the global subscriber for `config`; returns lines to log now that it is set.
///
/// # Errors
/// A log file that cannot be opened, or a `RUST_LOG` tracing cannot read.
pub fn install(config: &LogConfig, rust_log: Option<&str>) -> Result<Notes, String> {
    let (filter, notes) = filter(config.level, rust_log)?;
    let outputs = Outputs::open(&config.outputs)?;
    let ansi = outputs.all_terminals();
    let repeats = Arc::new(Repeats::new(REPEAT_EVERY));
    let limit = dynamic_filter_fn(move |meta, _| repeats.allowed(meta, Instant::now()));
    let layer = tracing_subscriber::fmt::layer()
        .with_writer(outputs)
        .with_ansi(ansi);
    let installed = match config.logger {
        Logger::Capnslog => tracing_subscriber::registry()
            .with(layer.with_filter(filter.and(limit)))
            .try_init(),
        Logger::Zap => tracing_subscriber::registry()
            .with(layer.event_format(Zap).with_filter(filter.and(limit)))
            .try_init(),
    };
    installed.map_err(|e| format!("installing the logger: {e}"))?;
    Ok(notes)
}

/// How often one of openraft's warnings is let through.
const REPEAT_EVERY: Duration = Duration::from_secs(10);

/// openraft repeats some warnings at every heartbeat while a peer is down ("failed to send a
/// heartbeat", "recv RPCError: Unreachable"): ten lines a second per peer, hundreds of MiB a
/// day of an outage. Each of its warning call sites is let through once per `every` (etcd
/// likewise says a peer became inactive once, not at every message).
struct Repeats {
    every: Duration,
    last: Mutex<HashMap<Identifier, Instant>>,
}

impl Repeats {
    fn new(every: Duration) -> Self {
        Self {
            every,
            last: Mutex::new(HashMap::new()),
        }
    }

    /// Whether an event of `meta` is logged at `now` (every event but openraft's warnings).
    fn allowed(&self, meta: &Metadata<'_>, now: Instant) -> bool {
        if !meta.is_event()
            || *meta.level() != Level::WARN
            || !meta.target().starts_with("openraft")
        {
            return true;
        }
        // A poisoned map still holds the times: logging goes on.
        let mut last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
        match last.get(&meta.callsite()) {
            Some(at) if now.saturating_duration_since(*at) < self.every => false,
            _ => {
                last.insert(meta.callsite(), now);
                true
            }
        }
    }
}

/// One opened output.
enum Sink {
    Stderr,
    Stdout,
    File(Mutex<std::fs::File>),
}

/// Every output, written to in turn with each whole line.
#[derive(Clone)]
struct Outputs(Arc<Vec<Sink>>);

impl Outputs {
    fn open(outputs: &[Output]) -> Result<Self, String> {
        let mut sinks = Vec::new();
        for output in outputs {
            sinks.push(match output {
                Output::Stderr => Sink::Stderr,
                Output::Stdout => Sink::Stdout,
                Output::File(path) => {
                    let file = std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(path)
                        .map_err(|e| format!("opening log output {}: {e}", path.display()))?;
                    Sink::File(Mutex::new(file))
                }
            });
        }
        Ok(Self(Arc::new(sinks)))
    }

    /// Whether colour codes would only ever reach a terminal.
    fn all_terminals(&self) -> bool {
        self.0.iter().all(|s| match s {
            Sink::Stderr => std::io::stderr().is_terminal(),
            Sink::Stdout => std::io::stdout().is_terminal(),
            Sink::File(_) => false,
        })
    }
}

/// A writer over every output.
struct Lines<'a>(&'a [Sink]);

impl Write for Lines<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.write_all(buf)?;
        Ok(buf.len())
    }

    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        // A failing output must not silence the others.
        let mut first_error = None;
        for sink in self.0 {
            let written = match sink {
                Sink::Stderr => std::io::stderr().write_all(buf),
                Sink::Stdout => std::io::stdout().write_all(buf),
                Sink::File(file) => match file.lock() {
                    Ok(mut f) => f.write_all(buf),
                    Err(poisoned) => poisoned.into_inner().write_all(buf),
                },
            };
            if let Err(e) = written {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Outputs {
    type Writer = Lines<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        Lines(&self.0)
    }
}

/// zap's JSON line format.
struct Zap;

impl<S, N> FormatEvent<S, N> for Zap
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        let meta = event.metadata();
        let mut fields = JsonFields::default();
        event.record(&mut fields);
        let mut line = String::with_capacity(160);
        line.push_str("{\"level\":");
        push_json_str(&mut line, &meta.level().as_str().to_ascii_lowercase());
        line.push_str(",\"ts\":");
        push_json_str(&mut line, &timestamp(SystemTime::now()));
        line.push_str(",\"caller\":");
        let caller = match (meta.file(), meta.line()) {
            (Some(file), Some(n)) => format!("{}:{n}", short_path(file)),
            _ => meta.target().to_string(),
        };
        push_json_str(&mut line, &caller);
        line.push_str(",\"msg\":");
        push_json_str(&mut line, &fields.message);
        line.push_str(&fields.rest);
        line.push('}');
        writeln!(writer, "{line}")
    }
}

/// `crates/server/src/lib.rs` as `server/lib.rs`, as zap names callers `package/file.go`.
fn short_path(file: &str) -> String {
    let parts: Vec<&str> = file.split('/').filter(|p| *p != "src").collect();
    match parts.as_slice() {
        [.., dir, name] => format!("{dir}/{name}"),
        _ => file.to_string(),
    }
}

/// An event's fields as JSON members: the message apart, the others after it.
#[derive(Default)]
struct JsonFields {
    message: String,
    rest: String,
}

impl JsonFields {
    fn key(&mut self, field: &Field) {
        self.rest.push(',');
        push_json_str(&mut self.rest, field.name());
        self.rest.push(':');
    }
}

impl Visit for JsonFields {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message = value.to_string();
        } else {
            self.key(field);
            push_json_str(&mut self.rest, value);
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let text = format!("{value:?}");
        self.record_str(field, &text);
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.key(field);
        let _ = write!(self.rest, "{value}");
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.key(field);
        let _ = write!(self.rest, "{value}");
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.key(field);
        let _ = write!(self.rest, "{value}");
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        if value.is_finite() {
            self.key(field);
            let _ = write!(self.rest, "{value}");
        } else {
            self.record_str(field, &value.to_string());
        }
    }
}

/// `text` as a JSON string.
fn push_json_str(out: &mut String, text: &str) {
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// `at` in UTC as zap's ISO 8601 with milliseconds: `2026-12-05T21:53:31.471Z`.
fn timestamp(at: SystemTime) -> String {
    let since = at.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (days, rest) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = civil(days as i64);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60,
        since.subsec_millis()
    )
}

/// The proleptic Gregorian date `days` after 1970-01-01 (Howard Hinnant's civil_from_days).
fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Counts the events that reach it.
    struct Count(Arc<std::sync::atomic::AtomicUsize>);

    impl<S: Subscriber> Layer<S> for Count {
        fn on_event(&self, _: &Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    /// Events of `emit` that pass a [`Repeats`] of `every`.
    fn passed(every: Duration, emit: impl FnOnce()) -> usize {
        let seen = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let repeats = Repeats::new(every);
        let limit = dynamic_filter_fn(move |meta, _| repeats.allowed(meta, Instant::now()));
        let subscriber =
            tracing_subscriber::registry().with(Count(Arc::clone(&seen)).with_filter(limit));
        tracing::subscriber::with_default(subscriber, emit);
        seen.load(std::sync::atomic::Ordering::SeqCst)
    }

    #[test]
    fn a_repeated_openraft_warning_is_logged_once_per_window_and_nothing_else_is_held() {
        let burst = || {
            for _ in 0..20 {
                tracing::warn!(target: "openraft::core::heartbeat", "failed to send a heartbeat");
            }
            for _ in 0..3 {
                tracing::warn!(target: "openraft::replication", "recv RPCError: Unreachable");
                tracing::error!(target: "openraft::core", "an error");
                tracing::info!(target: "openraft::core", "info");
                tracing::warn!(target: "metastore", "ours");
            }
        };
        // One of each openraft warning; every error, info and warning of others.
        assert_eq!(passed(REPEAT_EVERY, burst), 1 + 1 + 3 + 3 + 3);
        // Without a window nothing is held back.
        assert_eq!(passed(Duration::ZERO, burst), 20 + 3 * 4);
    }

    #[test]
    fn flags_are_checked_as_etcd_checks_them() {
        let c = LogConfig::from_flags("capnslog", "default", "info", false).unwrap();
        assert_eq!(
            (c.logger, c.outputs, c.level),
            (Logger::Capnslog, vec![Output::Stderr], Level::INFO)
        );
        let e = LogConfig::from_flags("capnslog", "default", "verbose", false).unwrap_err();
        assert!(e.contains(r#"unknown level "verbose""#), "{e}");
        let e = LogConfig::from_flags("bogus", "default", "info", false).unwrap_err();
        assert_eq!(e, r#"unknown logger option "bogus""#);
        let e = LogConfig::from_flags("capnslog", "/tmp/x.log", "info", false).unwrap_err();
        assert!(e.contains(r#"unknown log-output "/tmp/x.log""#), "{e}");
        let c = LogConfig::from_flags("zap", "stderr,/tmp/x.log,default", "fatal", true).unwrap();
        assert_eq!(
            (c.outputs, c.level),
            (
                vec![Output::Stderr, Output::File("/tmp/x.log".into())],
                Level::DEBUG
            )
        );
    }

    #[test]
    fn rust_log_adds_targets_but_never_replaces_the_level() {
        let (f, notes) = filter(Level::INFO, Some("debug,consensus=trace")).unwrap();
        let text = f.to_string();
        assert!(
            text.contains("consensus=trace") && text.contains("info"),
            "{text}"
        );
        assert!(!text.split(',').any(|d| d == "debug"), "{text}");
        assert!(
            notes[0].1.contains(r#"global level "debug" is ignored"#),
            "{notes:?}"
        );
        assert!(
            notes[1].1.contains("RUST_LOG adds consensus=trace"),
            "{notes:?}"
        );
        let (_, notes) = filter(Level::WARN, None).unwrap();
        assert!(notes.is_empty());
        assert!(filter(Level::INFO, Some("a=[[")).is_err());
    }

    #[test]
    fn timestamps_are_zaps() {
        let at = UNIX_EPOCH + std::time::Duration::from_millis(1_796_507_611_471);
        assert_eq!(timestamp(at), "2026-12-05T21:53:31.471Z");
        assert_eq!(timestamp(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        assert_eq!(short_path("crates/server/src/lib.rs"), "server/lib.rs");
        let mut s = String::new();
        push_json_str(&mut s, "a\"b\\c\nd\u{1}");
        assert_eq!(s, r#""a\"b\\c\nd\u0001""#);
    }
}
