//! Measurement-only cuts of the write path, for finding the ceiling a put can reach.
//!
//! Each cut skips one stage, so docs/benchmarks.md can show what the stages left cost, and
//! what the gRPC stack and the client alone allow on the machine. They exist only with the
//! `ablation` feature, which no normal build has: there [`skips`] is a constant `false` and
//! the compiler drops every branch on it. `METASTORE_ABLATE` names the cuts, comma-separated.

/// The variable that names the cuts of a measurement build.
pub const VARIABLE: &str = "METASTORE_ABLATE";

/// A stage of the write path that a measurement build can skip.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cut {
    /// The Raft log's fdatasync: acknowledged writes are then not durable.
    Fsync,
    /// The store's apply: nothing is stored and every command is answered as a put.
    Apply,
    /// Raft altogether: the API answers a put once it is validated.
    Raft,
}

/// The cuts `list` names (comma-separated: `fsync`, `apply`, `raft`).
///
/// # Errors
/// The first name that is not a cut.
pub fn parse(list: &str) -> Result<Vec<Cut>, String> {
    list.split(',')
        .map(str::trim)
        .filter(|name| !name.is_empty())
        .map(|name| match name {
            "fsync" => Ok(Cut::Fsync),
            "apply" => Ok(Cut::Apply),
            "raft" => Ok(Cut::Raft),
            other => Err(format!(
                "{VARIABLE}: unknown cut {other:?} (known: fsync, apply, raft)"
            )),
        })
        .collect()
}

/// The cuts this process runs with: none unless the build has the `ablation` feature.
///
/// # Errors
/// `METASTORE_ABLATE` names something that is not a cut.
pub fn configured() -> Result<Vec<Cut>, String> {
    if cfg!(feature = "ablation") {
        parse(&std::env::var(VARIABLE).unwrap_or_default())
    } else {
        Ok(Vec::new())
    }
}

/// Whether this process skips `cut`; always `false` in a normal build.
#[inline]
pub fn skips(cut: Cut) -> bool {
    #[cfg(feature = "ablation")]
    {
        static CUTS: std::sync::OnceLock<Vec<Cut>> = std::sync::OnceLock::new();
        CUTS.get_or_init(|| configured().unwrap_or_default())
            .contains(&cut)
    }
    #[cfg(not(feature = "ablation"))]
    {
        let _ = cut;
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuts_parse_by_name_and_an_unknown_name_is_refused() {
        assert_eq!(parse(""), Ok(Vec::new()));
        assert_eq!(parse("fsync, apply"), Ok(vec![Cut::Fsync, Cut::Apply]));
        assert_eq!(parse("raft,"), Ok(vec![Cut::Raft]));
        let refused = parse("fsync,disk").unwrap_err();
        assert!(refused.contains("\"disk\""), "{refused}");
    }

    #[cfg(not(feature = "ablation"))]
    #[test]
    fn a_normal_build_skips_nothing() {
        for cut in [Cut::Fsync, Cut::Apply, Cut::Raft] {
            assert!(!skips(cut));
        }
        assert_eq!(configured(), Ok(Vec::new()));
    }
}
