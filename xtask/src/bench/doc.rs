//! Replacing one `## …` section of a markdown file and leaving the rest as it was.

/// What a new `docs/benchmarks.md` opens with.
pub const PREAMBLE: &str = "# Benchmarks\n\n\
Each `## …` section below is written by the command it names and is replaced whole when that \
command runs again; edit the generators in `xtask/src/bench/`, not the figures.\n";

/// `doc` with the section headed by `heading` (a `## …` line) replaced by `section`, or with
/// `section` appended when there is none. `section` starts with `heading`.
///
/// A section runs to the next `## ` heading outside a code fence, or to the end.
pub fn replace_section(doc: &str, heading: &str, section: &str) -> String {
    let mut start = None;
    let mut end = None;
    let mut in_fence = false;
    let mut offset = 0;
    for line in doc.split_inclusive('\n') {
        let text = line.trim_end();
        if text.starts_with("```") {
            in_fence = !in_fence;
        } else if !in_fence && text.starts_with("## ") {
            if start.is_some() {
                end = Some(offset);
                break;
            }
            if text == heading {
                start = Some(offset);
            }
        }
        offset += line.len();
    }
    let section = section.trim_end_matches('\n');
    match start {
        Some(start) => {
            let end = end.unwrap_or(doc.len());
            let rest = &doc[end..];
            let gap = if rest.is_empty() { "\n" } else { "\n\n" };
            format!("{}{section}{gap}{rest}", &doc[..start])
        }
        None => {
            let head = doc.trim_end_matches('\n');
            if head.is_empty() {
                format!("{section}\n")
            } else {
                format!("{head}\n\n{section}\n")
            }
        }
    }
}

/// Replaces (or appends) the section under `heading` in docs/benchmarks.md with `section`.
pub fn write_section(heading: &str, section: &str) -> anyhow::Result<()> {
    use anyhow::Context;
    let path = super::benchmarks_md();
    let old = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => PREAMBLE.to_string(),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    std::fs::write(&path, replace_section(&old, heading, section))
        .with_context(|| format!("writing {}", path.display()))?;
    println!("wrote the `{heading}` section of {}", path.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_only_its_own_section() {
        let doc = "# B\n\nintro\n\n## Engines\n\nold\n### sub\nold too\n\n## KV\n\nkv figures\n";
        let out = replace_section(doc, "## Engines", "## Engines\n\nnew\n");
        assert_eq!(
            out,
            "# B\n\nintro\n\n## Engines\n\nnew\n\n## KV\n\nkv figures\n"
        );
    }

    #[test]
    fn last_section_runs_to_the_end() {
        let doc = "# B\n\n## KV\n\nkv\n\n## Engines\n\nold\n";
        let out = replace_section(doc, "## Engines", "## Engines\n\nnew\n");
        assert_eq!(out, "# B\n\n## KV\n\nkv\n\n## Engines\n\nnew\n");
    }

    #[test]
    fn missing_section_is_appended() {
        let out = replace_section("# B\n\nintro\n", "## Engines", "## Engines\n\nnew\n");
        assert_eq!(out, "# B\n\nintro\n\n## Engines\n\nnew\n");
        assert_eq!(
            replace_section("", "## Engines", "## Engines\n"),
            "## Engines\n"
        );
    }

    #[test]
    fn headings_in_code_fences_are_text() {
        let doc = "## Engines\n\n```\n## not a heading\n```\n\n## KV\nx\n";
        let out = replace_section(doc, "## Engines", "## Engines\nnew\n");
        assert_eq!(out, "## Engines\nnew\n\n## KV\nx\n");
    }

    #[test]
    fn regenerating_is_stable() {
        let once = replace_section(PREAMBLE, "## Engines", "## Engines\n\nfigures\n");
        let twice = replace_section(&once, "## Engines", "## Engines\n\nfigures\n");
        assert_eq!(once, twice);
    }
}
