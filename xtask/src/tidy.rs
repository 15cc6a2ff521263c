//! Checks the rules of the house that a compiler does not: crate headers and the layer rule.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

/// The layer of each crate; a crate may depend only on crates of a lower layer.
const LAYERS: &[(&str, u8)] = &[
    ("deadline", 0),
    ("mvcc", 1),
    ("engine-mem", 2),
    ("engine-redb", 2),
    ("watch", 2),
    ("consensus", 3),
    ("kvapi", 4),
    ("server", 5),
    // Test support: runs the server binary; only tests and xtask use it.
    ("testkit", 6),
];

/// The workspace root, found from this crate's manifest directory.
pub fn project_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Runs every tidy check over the workspace at `root`, failing with a list of violations.
pub fn check(root: &Path) -> Result<()> {
    let mut problems = Vec::new();
    let crates_dir = root.join("crates");
    let mut entries: Vec<_> = std::fs::read_dir(&crates_dir)
        .with_context(|| format!("reading {}", crates_dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("Cargo.toml").is_file())
        .collect();
    entries.sort();
    for dir in entries {
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let Some(layer) = layer_of(&name) else {
            problems.push(format!("crate `{name}` has no layer in xtask/src/tidy.rs"));
            continue;
        };
        let manifest = std::fs::read_to_string(dir.join("Cargo.toml"))?;
        if !manifest.contains("[lints]") || !manifest.contains("workspace = true") {
            problems.push(format!(
                "{name}: Cargo.toml must say `[lints] workspace = true`"
            ));
        }
        for dep in normal_dependencies(&manifest) {
            if let Some(dep_layer) = layer_of(&dep) {
                if dep_layer >= layer {
                    problems.push(format!(
                        "{name} (layer {layer}) depends on {dep} (layer {dep_layer}): \
                         dependencies must point down"
                    ));
                }
            }
        }
        let lib = dir.join("src/lib.rs");
        if lib.is_file() {
            let text = std::fs::read_to_string(&lib)?;
            if !text.starts_with("//!") {
                problems.push(format!(
                    "{name}: src/lib.rs must open with a `//!` paragraph"
                ));
            }
            if !text.contains("# Layout") {
                problems.push(format!(
                    "{name}: src/lib.rs header needs a `# Layout` section"
                ));
            }
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        bail!(
            "tidy found {} problem(s):\n  {}",
            problems.len(),
            problems.join("\n  ")
        )
    }
}

fn layer_of(name: &str) -> Option<u8> {
    LAYERS.iter().find(|(n, _)| *n == name).map(|(_, l)| *l)
}

/// Names listed under `[dependencies]` (not dev- or build-dependencies) of a manifest.
fn normal_dependencies(manifest: &str) -> Vec<String> {
    let mut in_deps = false;
    let mut deps = Vec::new();
    for line in manifest.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_deps = line == "[dependencies]";
            continue;
        }
        if in_deps {
            if let Some((name, _)) = line.split_once('=') {
                let name = name.trim();
                if !name.is_empty() && !name.starts_with('#') {
                    deps.push(name.to_string());
                }
            }
        }
    }
    deps
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workspace_is_tidy() {
        check(&project_root()).unwrap();
    }

    #[test]
    fn upward_dependency_is_reported() {
        let dir = tempdir_with_crate(
            "mvcc",
            "[package]\nname=\"mvcc\"\n[dependencies]\nkvapi = { workspace = true }\n[lints]\nworkspace = true\n",
            "//! x\n//! # Layout\n",
        );
        let err = check(dir.path()).unwrap_err().to_string();
        assert!(err.contains("depends on kvapi"), "{err}");
    }

    #[test]
    fn missing_header_is_reported() {
        let dir = tempdir_with_crate(
            "deadline",
            "[package]\nname=\"deadline\"\n[lints]\nworkspace = true\n",
            "pub fn f() {}\n",
        );
        let err = check(dir.path()).unwrap_err().to_string();
        assert!(err.contains("must open with"), "{err}");
    }

    fn tempdir_with_crate(name: &str, manifest: &str, lib: &str) -> TempDir {
        let dir = TempDir::new(name);
        let krate = dir.path().join("crates").join(name);
        std::fs::create_dir_all(krate.join("src")).unwrap();
        std::fs::write(krate.join("Cargo.toml"), manifest).unwrap();
        std::fs::write(krate.join("src/lib.rs"), lib).unwrap();
        dir
    }

    /// A scratch directory removed on drop; xtask keeps its dependency list short.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> Self {
            let path = std::env::temp_dir().join(format!(
                "xtask-tidy-{tag}-{}-{:?}",
                std::process::id(),
                std::thread::current().id()
            ));
            let _ = std::fs::remove_dir_all(&path);
            std::fs::create_dir_all(&path).unwrap();
            Self(path)
        }
        fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}
