//! Just enough TOML to read a Cargo manifest's dependencies, in every form Cargo accepts them:
//! `name = "1"`, `name = { … }` (also over several lines), dotted keys (`name.workspace = true`),
//! tables (`[dependencies.name]`), and platform tables (`[target.'cfg(unix)'.dependencies]`).
//! xtask keeps its dependency list short, so this is not a TOML crate: it reads the keys a
//! dependency is known by and leaves every other value alone.

/// Which table a dependency is listed in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `[dependencies]`, also under `[target.…]`: what the crate's own code may use.
    Normal,
    /// `[dev-dependencies]`, also under `[target.…]`.
    Dev,
    /// `[build-dependencies]`, also under `[target.…]`.
    Build,
    /// The root manifest's `[workspace.dependencies]`.
    Workspace,
}

/// One dependency of a manifest, with the keys that tell which crate it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dep {
    /// The table it is listed in.
    pub kind: Kind,
    /// The name it is listed under (the name the code uses).
    pub key: String,
    /// `package = "…"`: the crate's real name, when the key renames it.
    pub package: Option<String>,
    /// `path = "…"`.
    pub path: Option<String>,
    /// `workspace = true`: the rest is in the root's `[workspace.dependencies]`.
    pub workspace: bool,
}

impl Dep {
    /// The crate meant: the last part of its path, else its package, else its key; resolved
    /// through `workspace` (the root's entries) when the dependency is inherited.
    pub fn crate_name(&self, workspace: &[Dep]) -> String {
        let dep = match workspace
            .iter()
            .find(|w| self.workspace && w.key == self.key)
        {
            Some(root) => root,
            None => self,
        };
        let from_path = dep.path.as_deref().and_then(|p| {
            p.trim_end_matches('/')
                .rsplit('/')
                .next()
                .filter(|s| !s.is_empty())
        });
        from_path
            .or(dep.package.as_deref())
            .unwrap_or(&dep.key)
            .to_string()
    }
}

/// Every dependency of `manifest`, in the order first seen.
pub fn dependencies(manifest: &str) -> Vec<Dep> {
    let mut deps: Vec<Dep> = Vec::new();
    // The table the lines belong to: a dependency list, or one dependency's own table.
    let mut table: Option<(Kind, Option<String>)> = None;
    for line in logical_lines(manifest) {
        if let Some(header) = line.strip_prefix('[') {
            let header = header.trim_start_matches('[');
            let inner = header.trim_end().trim_end_matches(']');
            table = dependency_table(&split_keys(inner));
            if let Some((kind, Some(key))) = &table {
                entry(&mut deps, *kind, key);
            }
            continue;
        }
        let Some((kind, owner)) = &table else {
            continue;
        };
        let Some((lhs, value)) = split_once_outside_quotes(&line, '=') else {
            continue;
        };
        let keys = split_keys(lhs);
        let value = value.trim();
        match (owner, keys.as_slice()) {
            // Inside `[dependencies.name]`: a field of that dependency.
            (Some(key), [field]) => set(entry(&mut deps, *kind, key), field, value),
            (None, [key]) => {
                let dep = entry(&mut deps, *kind, key);
                if let Some(fields) = value.strip_prefix('{') {
                    let fields = fields.trim_end().trim_end_matches('}');
                    for field in split_outside_quotes(fields, ',') {
                        if let Some((name, v)) = split_once_outside_quotes(field, '=') {
                            if let [name] = split_keys(name).as_slice() {
                                set(dep, name, v.trim());
                            }
                        }
                    }
                }
            }
            (None, [key, field]) => set(entry(&mut deps, *kind, key), field, value),
            _ => {}
        }
    }
    deps
}

/// Whether `manifest` has `[lints]` with `workspace = true` (or `lints.workspace = true`).
pub fn inherits_lints(manifest: &str) -> bool {
    let mut section: Vec<String> = Vec::new();
    for line in logical_lines(manifest) {
        if let Some(header) = line.strip_prefix('[') {
            section = split_keys(header.trim_end().trim_end_matches(']'));
            continue;
        }
        let Some((lhs, value)) = split_once_outside_quotes(&line, '=') else {
            continue;
        };
        let mut path = section.clone();
        path.extend(split_keys(lhs));
        if path == ["lints", "workspace"] && value.trim() == "true" {
            return true;
        }
    }
    false
}

/// The dependency list a table header names, and the dependency when it is one's own table.
fn dependency_table(path: &[String]) -> Option<(Kind, Option<String>)> {
    let path: Vec<&str> = path.iter().map(String::as_str).collect();
    let (list, rest) = match path.as_slice() {
        ["workspace", "dependencies", rest @ ..] => (Kind::Workspace, rest),
        ["target", _, list, rest @ ..] | [list, rest @ ..] => {
            let kind = match *list {
                "dependencies" => Kind::Normal,
                "dev-dependencies" | "dev_dependencies" => Kind::Dev,
                "build-dependencies" | "build_dependencies" => Kind::Build,
                _ => return None,
            };
            (kind, rest)
        }
        [] => return None,
    };
    match rest {
        [] => Some((list, None)),
        [name] => Some((list, Some((*name).to_string()))),
        _ => None,
    }
}

fn entry<'a>(deps: &'a mut Vec<Dep>, kind: Kind, key: &str) -> &'a mut Dep {
    let at = match deps.iter().position(|d| d.kind == kind && d.key == key) {
        Some(at) => at,
        None => {
            deps.push(Dep {
                kind,
                key: key.to_string(),
                package: None,
                path: None,
                workspace: false,
            });
            deps.len() - 1
        }
    };
    &mut deps[at]
}

fn set(dep: &mut Dep, field: &str, value: &str) {
    match field {
        "package" => dep.package = Some(unquote(value)),
        "path" => dep.path = Some(unquote(value)),
        "workspace" => dep.workspace = value == "true",
        _ => {}
    }
}

/// The manifest's lines without comments, an inline table or array that spans several lines
/// joined into one.
fn logical_lines(manifest: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut pending = String::new();
    for raw in manifest.lines() {
        let line = strip_comment(raw).trim();
        if line.is_empty() {
            continue;
        }
        if !pending.is_empty() {
            pending.push(' ');
        }
        pending.push_str(line);
        if open_brackets(&pending) <= 0 {
            out.push(std::mem::take(&mut pending));
        }
    }
    if !pending.is_empty() {
        out.push(pending);
    }
    out
}

/// `{`/`[` opened minus closed outside quotes; a table header closes its own.
fn open_brackets(line: &str) -> i32 {
    outside_quotes(line)
        .map(|(_, c)| match c {
            '{' | '[' => 1,
            '}' | ']' => -1,
            _ => 0,
        })
        .sum()
}

fn strip_comment(line: &str) -> &str {
    match outside_quotes(line).find(|(_, c)| *c == '#') {
        Some((at, _)) => &line[..at],
        None => line,
    }
}

/// The characters of `s` (with their byte offsets) that are outside `"…"` and `'…'`; the
/// quotes themselves are left out too.
fn outside_quotes(s: &str) -> impl Iterator<Item = (usize, char)> + '_ {
    let mut quote = None;
    s.char_indices().filter(move |&(_, c)| match quote {
        Some(q) => {
            if c == q {
                quote = None;
            }
            false
        }
        None if c == '"' || c == '\'' => {
            quote = Some(c);
            false
        }
        None => true,
    })
}

/// Splits `s` at each `sep` outside quotes and brackets.
fn split_outside_quotes(s: &str, sep: char) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut depth = 0;
    let mut start = 0;
    for (i, c) in outside_quotes(s) {
        match c {
            '{' | '[' => depth += 1,
            '}' | ']' => depth -= 1,
            c if c == sep && depth == 0 => {
                parts.push(&s[start..i]);
                start = i + c.len_utf8();
            }
            _ => {}
        }
    }
    parts.push(&s[start..]);
    parts
}

fn split_once_outside_quotes(s: &str, sep: char) -> Option<(&str, &str)> {
    let parts = split_outside_quotes(s, sep);
    let first = parts.first()?;
    (parts.len() > 1).then(|| (*first, &s[first.len() + sep.len_utf8()..]))
}

/// A dotted key's parts, unquoted: `target.'cfg(unix)'.dependencies` has three.
fn split_keys(key: &str) -> Vec<String> {
    split_outside_quotes(key, '.')
        .into_iter()
        .map(|k| unquote(k.trim()))
        .filter(|k| !k.is_empty())
        .collect()
}

fn unquote(s: &str) -> String {
    let s = s.trim();
    for q in ['"', '\''] {
        if let Some(inner) = s.strip_prefix(q).and_then(|r| r.strip_suffix(q)) {
            return inner.to_string();
        }
    }
    s.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn normal(manifest: &str) -> Vec<(String, Option<String>, Option<String>, bool)> {
        dependencies(manifest)
            .into_iter()
            .filter(|d| d.kind == Kind::Normal)
            .map(|d| (d.key, d.package, d.path, d.workspace))
            .collect()
    }

    #[test]
    fn every_form_of_a_dependency_is_read() {
        let manifest = r#"
[package]
name = "metastore-mvcc" # not a dependency
[dependencies]
plain = "1"
inline = { workspace = true }
renamed = { package = "metastore-renamed", path = "../renamed" }
dotted.workspace = true
"quoted" = { version = "1", features = ["a", "b=c"] }
multi = {
    package = "metastore-multi",
    path = "../multi",
}
[dependencies.table]
package = "metastore-table"
path = "../table"
[target.'cfg(target_os = "linux")'.dependencies]
linux = { path = "../linux" }
[target."cfg(unix)".dependencies.unixy]
workspace = true
[dev-dependencies]
devdep = { path = "../devdep" }
[target.'cfg(unix)'.dev-dependencies.devtable]
path = "../devtable"
[build-dependencies]
builddep = "1"
[[test]]
name = "it"
"#;
        let s = |v: &str| Some(v.to_string());
        assert_eq!(
            normal(manifest),
            [
                ("plain".into(), None, None, false),
                ("inline".into(), None, None, true),
                (
                    "renamed".into(),
                    s("metastore-renamed"),
                    s("../renamed"),
                    false
                ),
                ("dotted".into(), None, None, true),
                ("quoted".into(), None, None, false),
                ("multi".into(), s("metastore-multi"), s("../multi"), false),
                ("table".into(), s("metastore-table"), s("../table"), false),
                ("linux".into(), None, s("../linux"), false),
                ("unixy".into(), None, None, true),
            ]
        );
        let others: Vec<(Kind, String)> = dependencies(manifest)
            .into_iter()
            .filter(|d| d.kind != Kind::Normal)
            .map(|d| (d.kind, d.key))
            .collect();
        assert_eq!(
            others,
            [
                (Kind::Dev, "devdep".into()),
                (Kind::Dev, "devtable".into()),
                (Kind::Build, "builddep".into()),
            ]
        );
    }

    #[test]
    fn a_renamed_crate_is_known_by_its_path_then_its_package() {
        let root = dependencies(
            "[workspace.dependencies]\nmvcc = { package = \"metastore-mvcc\", path = \"crates/mvcc\" }\n\
             kvapi = { package = \"metastore-kvapi\" }\n",
        );
        let member = dependencies(
            "[dependencies]\nmvcc = { workspace = true }\nkvapi.workspace = true\n\
             store = { package = \"metastore-mvcc\", path = \"../mvcc/\" }\n",
        );
        let names: Vec<String> = member.iter().map(|d| d.crate_name(&root)).collect();
        assert_eq!(names, ["mvcc", "metastore-kvapi", "mvcc"]);
    }

    #[test]
    fn lints_must_really_be_inherited() {
        assert!(inherits_lints("[lints]\nworkspace = true\n"));
        assert!(inherits_lints("lints.workspace = true\n"));
        assert!(!inherits_lints(
            "[lints]\n# workspace = true\n[dependencies]\nx = { workspace = true }\n"
        ));
        assert!(!inherits_lints("[lints.clippy]\nworkspace = true\n"));
    }
}
