//! Checks the rules of the house that a compiler does not: crate headers and the layer rule.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

/// The layer of each package; a package may depend only on packages of a lower layer.
const LAYERS: &[(&str, u8)] = &[
    ("metastore-deadline", 0),
    ("metastore-bbolt", 0),
    ("metastore-mvcc", 1),
    ("metastore-engine-mem", 2),
    ("metastore-engine-redb", 2),
    ("metastore-watch", 2),
    ("metastore-consensus", 3),
    ("metastore-kvapi", 4),
    ("metastore-server", 5),
    // The facade an embedding program depends on: the server's wiring behind a builder.
    ("metastore", 6),
    // Test support: runs the server binary; only tests and xtask use it.
    ("metastore-testkit", 7),
    // Test support: the power-cut filesystem; only tests use it.
    ("metastore-powercut", 7),
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
    // Dependents name our packages by short keys (`mvcc = { workspace = true }`), which the
    // workspace maps to the published names (`package = "metastore-mvcc"`).
    let workspace = std::fs::read_to_string(root.join("Cargo.toml")).unwrap_or_default();
    let renames = dependencies(&workspace, "[workspace.dependencies]");
    for dir in entries {
        let manifest = std::fs::read_to_string(dir.join("Cargo.toml"))?;
        let name = package_name(&manifest).unwrap_or_else(|| {
            dir.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        });
        let Some(layer) = layer_of(&name) else {
            problems.push(format!("crate `{name}` has no layer in xtask/src/tidy.rs"));
            continue;
        };
        if !manifest.contains("[lints]") || !manifest.contains("workspace = true") {
            problems.push(format!(
                "{name}: Cargo.toml must say `[lints] workspace = true`"
            ));
        }
        for (key, entry) in dependencies(&manifest, "[dependencies]") {
            let dep = package_of(&key, &entry, &renames);
            if let Some(dep_layer) = layer_of(&dep) {
                if dep_layer >= layer {
                    problems.push(format!(
                        "{name} (layer {layer}) depends on {dep} (layer {dep_layer}): \
                         dependencies must point down"
                    ));
                }
            }
        }
        if !DEV_ONLY.contains(&name.as_str()) {
            check_durable_fs(root, &dir.join("src"), &mut problems)?;
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

/// Crates that only tests use: their files are scratch, not state a member recovers from.
const DEV_ONLY: &[&str] = &["metastore-testkit", "metastore-powercut"];

/// Calls that create, rename or remove a name in a directory. Recovery depends on those names
/// surviving a power cut, which needs an fsync of the directory: `mvcc::durable` does both.
const UNSYNCED_FS_CALLS: &[&str] = &[
    "fs::create_dir",
    "fs::rename",
    "fs::remove_file",
    "fs::remove_dir",
    "fs::write(",
    "File::create(",
    ".create(true)",
    ".create_new(true)",
];

/// Direct calls allowed outside `mvcc::durable`, each with the reason (file, call).
const UNSYNCED_FS_ALLOWED: &[(&str, &str)] = &[
    // The helper itself.
    ("crates/mvcc/src/durable.rs", ""),
    // incoming.snap is a scratch name: install_snapshot fsyncs its bytes and keep_incoming
    // renames it durably before anything relies on it.
    ("crates/consensus/src/state_machine.rs", ".create(true)"),
    // A failed restore's scratch dir: never started on, so its removal need not be durable.
    ("crates/server/src/restore.rs", "fs::remove_dir"),
    // A unix:// client socket removed at shutdown (as Go's listener does): it holds no data,
    // and nothing at start relies on it being gone.
    ("crates/server/src/lib.rs", "fs::remove_file"),
    // A --log-outputs file, opened for appending as etcd's zap logger does: no recovery reads
    // it, so its name need not survive a power cut.
    ("crates/server/src/logging.rs", ".create(true)"),
];

/// Reports every direct create/rename/remove of a file or directory in non-test code under
/// `src`, which must go through `mvcc::durable` so the name is fsynced into its directory.
fn check_durable_fs(root: &Path, src: &Path, problems: &mut Vec<String>) -> Result<()> {
    let mut files = Vec::new();
    rust_files(src, &mut files)?;
    files.sort();
    for file in files {
        let rel = file
            .strip_prefix(root)
            .unwrap_or(&file)
            .to_string_lossy()
            .replace('\\', "/");
        let text = std::fs::read_to_string(&file)
            .with_context(|| format!("reading {}", file.display()))?;
        for (n, line) in non_test_lines(&text) {
            let code = line.split("//").next().unwrap_or("");
            for call in UNSYNCED_FS_CALLS {
                if !code.contains(call) {
                    continue;
                }
                let allowed = UNSYNCED_FS_ALLOWED
                    .iter()
                    .any(|(f, c)| *f == rel && (c.is_empty() || c == call));
                if !allowed {
                    problems.push(format!(
                        "{rel}:{n}: `{call}` outside mvcc::durable: use its synced helpers \
                         so the name survives a power cut"
                    ));
                }
            }
        }
    }
    Ok(())
}

/// The `.rs` files under `dir`, recursively.
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(());
    };
    for entry in entries {
        let path = entry?.path();
        if path.is_dir() {
            rust_files(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    Ok(())
}

/// The numbered lines of a source file before its `#[cfg(test)]` module.
fn non_test_lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    let lines: Vec<&str> = text.lines().collect();
    let end = lines
        .windows(2)
        .position(|w| {
            w[0].trim() == "#[cfg(test)]"
                && (w[1].trim_start().starts_with("mod ")
                    || w[1].trim_start().starts_with("pub mod "))
        })
        .unwrap_or(lines.len());
    lines
        .into_iter()
        .take(end)
        .enumerate()
        .map(|(i, l)| (i + 1, l))
}

fn layer_of(name: &str) -> Option<u8> {
    LAYERS.iter().find(|(n, _)| *n == name).map(|(_, l)| *l)
}

/// The `[package]` name of a manifest.
fn package_name(manifest: &str) -> Option<String> {
    let mut in_package = false;
    for line in manifest.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_package = line == "[package]";
            continue;
        }
        if in_package {
            if let Some(("name", value)) = line.split_once('=').map(|(k, v)| (k.trim(), v)) {
                return Some(value.trim().trim_matches('"').to_string());
            }
        }
    }
    None
}

/// Each `key = entry` line of one table of a manifest (`[dependencies]`: normal ones only, not
/// dev- or build-dependencies).
fn dependencies(manifest: &str, table: &str) -> Vec<(String, String)> {
    let mut in_table = false;
    let mut deps = Vec::new();
    for line in manifest.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_table = line == table;
            continue;
        }
        if in_table {
            if let Some((name, entry)) = line.split_once('=') {
                let name = name.trim();
                if !name.is_empty() && !name.starts_with('#') {
                    deps.push((name.to_string(), entry.trim().to_string()));
                }
            }
        }
    }
    deps
}

/// The package a dependency entry names: its own `package = "…"`, else the workspace's for
/// `workspace = true`, else its key.
fn package_of(key: &str, entry: &str, workspace: &[(String, String)]) -> String {
    if let Some(package) = renamed(entry) {
        return package;
    }
    if entry.contains("workspace = true") || entry.contains("workspace=true") {
        if let Some((_, inherited)) = workspace.iter().find(|(k, _)| k == key) {
            if let Some(package) = renamed(inherited) {
                return package;
            }
        }
    }
    key.to_string()
}

/// The `package = "…"` of an inline dependency table.
fn renamed(entry: &str) -> Option<String> {
    let start = entry.find("package")?;
    let rest = entry[start + "package".len()..]
        .trim_start()
        .strip_prefix('=')?;
    let rest = rest.trim_start().strip_prefix('"')?;
    rest.split_once('"').map(|(name, _)| name.to_string())
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
            "[package]\nname=\"metastore-mvcc\"\n[dependencies]\nkvapi = { package = \"metastore-kvapi\", path = \"../kvapi\" }\n[lints]\nworkspace = true\n",
            "//! x\n//! # Layout\n",
        );
        let err = check(dir.path()).unwrap_err().to_string();
        assert!(err.contains("depends on metastore-kvapi"), "{err}");
    }

    #[test]
    fn upward_dependency_renamed_by_the_workspace_is_reported() {
        let dir = tempdir_with_crate(
            "mvcc",
            "[package]\nname = \"metastore-mvcc\"\n[dependencies]\napi = { workspace = true }\n[lints]\nworkspace = true\n",
            "//! x\n//! # Layout\n",
        );
        std::fs::write(
            dir.path().join("Cargo.toml"),
            "[workspace.dependencies]\napi = { package = \"metastore-kvapi\", path = \"crates/kvapi\" }\n",
        )
        .unwrap();
        let err = check(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("metastore-mvcc (layer 1) depends on metastore-kvapi"),
            "{err}"
        );
    }

    #[test]
    fn missing_header_is_reported() {
        let dir = tempdir_with_crate(
            "deadline",
            "[package]\nname=\"metastore-deadline\"\n[lints]\nworkspace = true\n",
            "pub fn f() {}\n",
        );
        let err = check(dir.path()).unwrap_err().to_string();
        assert!(err.contains("must open with"), "{err}");
    }

    #[test]
    fn unsynced_rename_is_reported() {
        let dir = tempdir_with_crate(
            "deadline",
            "[package]\nname=\"metastore-deadline\"\n[lints]\nworkspace = true\n",
            "//! x\n//! # Layout\npub fn f() { std::fs::rename(\"a\", \"b\").ok(); }\n\
             #[cfg(test)]\nmod tests { fn g() { std::fs::remove_file(\"a\").ok(); } }\n",
        );
        let err = check(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("lib.rs:3: `fs::rename` outside mvcc::durable"),
            "{err}"
        );
        assert!(
            !err.contains("remove_file"),
            "test modules are exempt: {err}"
        );
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
