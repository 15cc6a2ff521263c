//! Checks the rules of the house that a compiler does not: crate headers and the layer rule.

mod manifest;

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use manifest::{Dep, Kind};

/// The layer of each crate; a crate may depend only on crates of a lower layer.
const LAYERS: &[(&str, u8)] = &[
    ("deadline", 0),
    ("bbolt", 0),
    ("mvcc", 1),
    ("engine-mem", 2),
    ("engine-redb", 2),
    ("watch", 2),
    ("consensus", 3),
    ("kvapi", 4),
    ("server", 5),
    // The facade an embedding program depends on: the server's wiring behind a builder.
    ("metastore", 6),
    // Test support: runs the server binary; only tests and xtask use it.
    ("testkit", 7),
    // Test support: the power-cut filesystem; only tests use it.
    ("powercut", 7),
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
    // Members inherit `{ workspace = true }` dependencies from here (a crate renamed with
    // `package =` is known by its path there).
    let root_manifest = std::fs::read_to_string(root.join("Cargo.toml")).unwrap_or_default();
    let workspace: Vec<Dep> = manifest::dependencies(&root_manifest)
        .into_iter()
        .filter(|d| d.kind == Kind::Workspace)
        .collect();
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
        if !manifest::inherits_lints(&manifest) {
            problems.push(format!(
                "{name}: Cargo.toml must say `[lints] workspace = true`"
            ));
        }
        for dep in manifest::dependencies(&manifest) {
            if dep.kind != Kind::Normal {
                continue;
            }
            let dep = dep.crate_name(&workspace);
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
            if layout_names(&text).is_none() {
                problems.push(format!(
                    "{name}: src/lib.rs header needs a `# Layout` section"
                ));
            }
            for module in unlisted_modules(&text) {
                problems.push(format!(
                    "{name}: src/lib.rs declares `mod {module}` but its `# Layout` does not \
                     list it"
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
const DEV_ONLY: &[&str] = &["testkit", "powercut"];

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
    // incoming.snap is a scratch name: with engine-mem install_snapshot fsyncs its bytes and
    // keep_incoming renames it durably before anything relies on it; with redb nothing relies
    // on it once the restore has committed, and it is removed (durably) then.
    ("crates/consensus/src/state_machine.rs", ".create(true)"),
    // A snapshot being sent is written to a file whose name is removed at once: the open
    // handle is all that is used, and a name a crash leaves behind is removed at the next start.
    ("crates/consensus/src/state_machine.rs", ".create_new(true)"),
    ("crates/consensus/src/state_machine.rs", "fs::remove_file"),
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

/// The layer of crate `name`, by its directory name or its package name (`metastore-` + it).
fn layer_of(name: &str) -> Option<u8> {
    let name = name.strip_prefix("metastore-").unwrap_or(name);
    LAYERS.iter().find(|(n, _)| *n == name).map(|(_, l)| *l)
}

/// The names the `# Layout` list of a file's `//!` header gives (the code spans before each
/// item's first `: `, without a trailing `/` or `.rs`); `None` when the header has no such
/// section.
fn layout_names(text: &str) -> Option<Vec<String>> {
    let mut names = None;
    let mut in_layout = false;
    for line in text.lines() {
        let Some(doc) = line.trim_start().strip_prefix("//!") else {
            break;
        };
        let doc = doc.trim();
        if doc.starts_with('#') {
            in_layout = doc == "# Layout";
            if in_layout {
                names.get_or_insert_with(Vec::new);
            }
            continue;
        }
        let Some(item) = doc.strip_prefix("- ").or_else(|| doc.strip_prefix("* ")) else {
            continue;
        };
        let (Some(names), true) = (names.as_mut(), in_layout) else {
            continue;
        };
        // Odd pieces are inside backticks; the lead ends at the first `: ` outside them.
        for (i, piece) in item.split('`').enumerate() {
            if i % 2 == 1 {
                let name = piece.trim_end_matches('/').trim_end_matches(".rs");
                names.push(name.to_string());
            } else if piece.contains(": ") {
                break;
            }
        }
    }
    names
}

/// The modules a crate root declares at top level, outside `#[cfg(test)]`.
fn declared_modules(text: &str) -> Vec<String> {
    let mut modules = Vec::new();
    let mut test_only = false;
    for line in text.lines() {
        // Indented lines are inside an item: only top-level declarations are the crate's.
        if line.trim().is_empty() || line.starts_with(char::is_whitespace) || line.starts_with("//")
        {
            continue;
        }
        if line.starts_with("#[") {
            test_only |= line.trim() == "#[cfg(test)]";
            continue;
        }
        let rest = match line.strip_prefix("pub") {
            Some(r) if r.starts_with('(') => r.split_once(')').map_or("", |(_, r)| r),
            Some(r) => r,
            None => line,
        };
        if let Some(decl) = rest.trim_start().strip_prefix("mod ") {
            let name: String = decl
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if !test_only && !name.is_empty() {
                modules.push(name);
            }
        }
        test_only = false;
    }
    modules
}

/// The modules `lib` declares that its `# Layout` section does not list.
fn unlisted_modules(lib: &str) -> Vec<String> {
    let listed = layout_names(lib).unwrap_or_default();
    declared_modules(lib)
        .into_iter()
        .filter(|m| !listed.contains(m))
        .collect()
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
    fn upward_dependency_in_a_table_or_under_a_target_is_reported() {
        for deps in [
            "[dependencies.api]\npackage = \"metastore-kvapi\"\npath = \"../kvapi\"\n",
            "[target.'cfg(unix)'.dependencies]\nkvapi = { path = \"../kvapi\" }\n",
            "[target.\"cfg(unix)\".dependencies.kvapi]\nworkspace = true\n",
            "[dependencies]\nkvapi = {\n  workspace = true,\n}\n",
        ] {
            let dir = tempdir_with_crate(
                "mvcc",
                &format!("[package]\nname=\"mvcc\"\n{deps}[lints]\nworkspace = true\n"),
                "//! x\n//! # Layout\n",
            );
            let err = check(dir.path()).unwrap_err().to_string();
            assert!(err.contains("depends on kvapi"), "{deps}: {err}");
        }
    }

    #[test]
    fn upward_dependency_renamed_through_the_workspace_is_reported() {
        let dir = tempdir_with_crate(
            "mvcc",
            "[package]\nname=\"metastore-mvcc\"\n[dependencies]\napi = { workspace = true }\n\
             [dev-dependencies]\nserver = { workspace = true }\n[lints]\nworkspace = true\n",
            "//! x\n//! # Layout\n",
        );
        std::fs::write(
            dir.path().join("Cargo.toml"),
            "[workspace.dependencies]\n\
             api = { package = \"metastore-kvapi\", path = \"crates/kvapi\" }\n\
             server = { package = \"metastore\", path = \"crates/server\" }\n",
        )
        .unwrap();
        let err = check(dir.path()).unwrap_err().to_string();
        assert!(err.contains("mvcc (layer 1) depends on kvapi"), "{err}");
        assert!(
            !err.contains("server"),
            "dev-dependencies may point up: {err}"
        );
    }

    #[test]
    fn lints_not_inherited_are_reported() {
        let dir = tempdir_with_crate(
            "deadline",
            "[package]\nname=\"deadline\"\n[lints]\n# workspace = true\n\
             [dependencies]\nx = { workspace = true }\n",
            "//! x\n//! # Layout\n",
        );
        let err = check(dir.path()).unwrap_err().to_string();
        assert!(err.contains("must say `[lints] workspace = true`"), "{err}");
    }

    #[test]
    fn module_missing_from_the_layout_is_reported() {
        let dir = tempdir_with_crate(
            "deadline",
            "[package]\nname=\"deadline\"\n[lints]\nworkspace = true\n",
            "//! The crate; it has a `hidden` part.\n//!\n//! # Layout\n\
             //! - `listed`: listed, not `hidden`.\n//! - [`public`], `dir/`: listed too.\n\
             //!\n//! # Other\n//! - `later`: not the layout.\n\
             mod listed;\npub mod public;\npub(crate) mod dir;\n    mod nested;\nmod hidden;\n\
             #[cfg(feature = \"x\")]\nmod later;\n#[cfg(test)]\nmod tests;\n",
        );
        let err = check(dir.path()).unwrap_err().to_string();
        assert!(err.contains("declares `mod hidden`"), "{err}");
        assert!(err.contains("declares `mod later`"), "{err}");
        assert_eq!(err.matches("declares").count(), 2, "{err}");
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

    #[test]
    fn unsynced_rename_is_reported() {
        let dir = tempdir_with_crate(
            "deadline",
            "[package]\nname=\"deadline\"\n[lints]\nworkspace = true\n",
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
