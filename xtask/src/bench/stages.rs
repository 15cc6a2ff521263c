//! MetaStore's write stages (`metastore_write_stage_seconds{stage}`, see consensus's `stages`)
//! read from each member's `/metrics` before and after a workload: the mean time per command
//! in each stage over the run.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use anyhow::{Context, Result};

const METRIC: &str = consensus::STAGE_SECONDS;
const TIMEOUT: Duration = Duration::from_secs(5);

/// Per stage: seconds summed and commands counted, over every member.
#[derive(Clone, Debug, Default)]
pub(super) struct Totals(BTreeMap<String, (f64, f64)>);

/// The stage totals of every member at `urls` (`http://host:port`) now.
pub(super) fn read(urls: &[String]) -> Result<Totals> {
    let mut totals = Totals::default();
    for url in urls {
        let text = fetch(url).with_context(|| format!("GET {url}/metrics"))?;
        parse(&text, &mut totals);
    }
    Ok(totals)
}

fn fetch(url: &str) -> Result<String> {
    let host = url.trim_start_matches("http://").trim_end_matches('/');
    let addr = host
        .parse()
        .with_context(|| format!("{host} is not host:port"))?;
    let mut stream = TcpStream::connect_timeout(&addr, TIMEOUT)?;
    stream.set_read_timeout(Some(TIMEOUT))?;
    stream.set_write_timeout(Some(TIMEOUT))?;
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )?;
    let mut text = String::new();
    stream.read_to_string(&mut text)?;
    Ok(text)
}

/// Adds the `_sum` and `_count` lines of [`METRIC`] in `text` to `totals`.
fn parse(text: &str, totals: &mut Totals) {
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(METRIC) else {
            continue;
        };
        let (is_sum, rest) = if let Some(r) = rest.strip_prefix("_sum{") {
            (true, r)
        } else if let Some(r) = rest.strip_prefix("_count{") {
            (false, r)
        } else {
            continue;
        };
        let Some(stage) = rest
            .strip_prefix("stage=\"")
            .and_then(|r| r.split('"').next())
        else {
            continue;
        };
        let Some(value) = line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) else {
            continue;
        };
        let slot = totals.0.entry(stage.to_string()).or_default();
        if is_sum {
            slot.0 += value;
        } else {
            slot.1 += value;
        }
    }
}

/// The mean microseconds per command of each stage between `before` and `after`, in the
/// order a put passes them; `wake` is what `node` holds beyond the stages inside it.
pub(super) fn means(before: &Totals, after: &Totals) -> Vec<(&'static str, f64)> {
    let mean = |stage: &str| -> Option<f64> {
        let (s1, c1) = after.0.get(stage).copied().unwrap_or_default();
        let (s0, c0) = before.0.get(stage).copied().unwrap_or_default();
        let n = c1 - c0;
        (n > 0.0).then(|| (s1 - s0) / n * 1e6)
    };
    // The stages a command passes inside Raft: those after `node`, which spans them all.
    let inside = consensus::STAGES
        .iter()
        .skip_while(|s| **s != "node")
        .skip(1);
    consensus::STAGES
        .iter()
        .chain(&["wake"])
        .filter_map(|&stage| {
            if stage == "wake" {
                let node = mean("node")?;
                let rest: f64 = inside.clone().filter_map(|s| mean(s)).sum();
                Some((stage, node - rest))
            } else {
                mean(stage).map(|m| (stage, m))
            }
        })
        .collect()
}

/// `means` on one line: `stage mean` pairs.
pub(super) fn line(means: &[(&'static str, f64)]) -> String {
    means
        .iter()
        .map(|(stage, us)| format!("{stage} {us:.0}"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_and_counts_are_read_per_stage() {
        let text = "\
# TYPE metastore_write_stage_seconds summary
metastore_write_stage_seconds{stage=\"fsync\",quantile=\"0.5\"} 0.0002
metastore_write_stage_seconds_sum{stage=\"fsync\"} 0.5
metastore_write_stage_seconds_count{stage=\"fsync\"} 1000
metastore_write_stage_seconds_sum{stage=\"node\"} 2
metastore_write_stage_seconds_count{stage=\"node\"} 1000
other_sum{stage=\"fsync\"} 9
";
        let before = Totals::default();
        let mut after = Totals::default();
        parse(text, &mut after);
        let m = means(&before, &after);
        assert_eq!(m.len(), 3, "{m:?}");
        assert_eq!(m[0].0, "node");
        assert!((m[0].1 - 2000.0).abs() < 1e-6);
        assert_eq!(m[1].0, "fsync");
        assert!((m[1].1 - 500.0).abs() < 1e-6);
        assert_eq!(m[2].0, "wake");
        assert!((m[2].1 - 1500.0).abs() < 1e-6);
    }
}
