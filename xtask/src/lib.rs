//! The repository's own checks (STYLE.md habit 14: one lint gate, the same everywhere). They
//! run as tests (`tests/lint.rs`), so the README's `cargo test --workspace` runs them
//! locally and in CI alike; each failure names the file or the dependency path at fault and
//! says how to fix it.
//!
//! - [`missing_headers`]: every `.rs` file under `crates/` and `xtask/` (sources, tests,
//!   benches, build scripts) opens with a `//!` comment saying what it is for and why
//!   (habit 13).
//! - [`io_dependencies`]: ferry-core stays sans-IO (habit 2): no crate in the tree of its
//!   normal dependencies does I/O or makes system calls ([`IO_CRATES`]). Dev-dependencies
//!   are not part of that tree and may do anything; build-dependencies run at build time
//!   only and are not followed either.

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

/// The directories, under the workspace root, whose `.rs` files need a header.
pub const HEADER_DIRS: &[&str] = &["crates", "xtask"];

/// The crate that must stay sans-IO.
pub const CORE: &str = "ferry-core";

/// Crates that do I/O or make system calls, with what they do. A pure core needs none of
/// them: it takes events and `now` and returns commands, and the shell crates do the I/O.
/// `libc`, `rustix`, `nix` and the Windows bindings are where nearly every I/O stack ends
/// (tokio through mio, sockets through socket2, files through tempfile), so they also catch
/// I/O crates not named here, and crates that read the clock or the OS's randomness. A
/// crate that does its I/O through `std` alone and has none of these below it is caught
/// only by name: review new ferry-core dependencies with that in mind.
pub const IO_CRATES: &[(&str, &str)] = &[
    ("tokio", "an async runtime (sockets, timers, files, processes)"),
    ("async-std", "an async runtime"),
    ("smol", "an async runtime"),
    ("async-io", "an async reactor over sockets"),
    ("mio", "an event loop over sockets"),
    ("polling", "an event loop over sockets"),
    ("socket2", "sockets"),
    ("hyper", "HTTP over sockets"),
    ("h2", "HTTP/2 over sockets"),
    ("reqwest", "an HTTP client"),
    ("ureq", "an HTTP client"),
    ("axum", "an HTTP server"),
    ("tonic", "gRPC over sockets"),
    ("postgres", "a PostgreSQL client"),
    ("rusqlite", "SQLite"),
    ("libsqlite3-sys", "SQLite"),
    ("sqlx", "database clients"),
    ("native-tls", "TLS over the system's library"),
    ("openssl", "TLS over the system's library"),
    ("openssl-sys", "TLS over the system's library"),
    ("tempfile", "files"),
    ("walkdir", "files"),
    ("notify", "file system events"),
    ("signal-hook", "signals"),
    ("nix", "system calls"),
    ("libc", "system calls"),
    ("rustix", "system calls"),
    ("windows-sys", "system calls"),
    ("winapi", "system calls"),
    ("getrandom", "the operating system's randomness (the core is given its seeds)"),
];

/// Families whose every member is an I/O crate (`tokio-postgres`, `tokio-rustls`,
/// `tokio-util`, `hyper-util`, ...). Other entries match their exact name only.
const IO_FAMILIES: &[&str] = &["tokio", "hyper"];

/// The workspace root: the parent of this crate's directory.
pub fn workspace_root() -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    here.parent().unwrap_or(here).to_path_buf()
}

/// Why a crate is an I/O crate, if it is one.
pub fn io_crate(name: &str) -> Option<&'static str> {
    let name = name.replace('_', "-");
    let family = IO_FAMILIES.iter().find(|f| name.strip_prefix(**f).is_some_and(|rest| rest.starts_with('-')));
    let base = family.copied().unwrap_or(name.as_str());
    IO_CRATES.iter().find(|(n, _)| *n == base).map(|(_, why)| *why)
}

/// The problem with a file's opening, if any: its first non-empty line must be a `//!`
/// comment. `shown` is the path as messages name it.
pub fn header_problem(shown: &str, text: &str) -> Option<String> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let fix = "begin the file with `//!` lines that say what it is for and why (STYLE.md habit 13)";
    let Some((number, line)) = text.lines().enumerate().find(|(_, l)| !l.trim().is_empty()) else {
        return Some(format!("{shown}: the file is empty; {fix}"));
    };
    if line.trim_start().starts_with("//!") {
        return None;
    }
    let line = line.trim();
    let quoted: String =
        if line.chars().count() > 60 { line.chars().take(60).chain("...".chars()).collect() } else { line.to_string() };
    Some(format!("{shown}:{}: the file opens with `{quoted}`, not a `//!` header; {fix}", number + 1))
}

/// Every `.rs` file under `root/dir` for each of `dirs`, sorted; `target` directories and
/// hidden ones (`.git`, ...) are skipped.
pub fn rust_files(root: &Path, dirs: &[&str]) -> Result<Vec<PathBuf>, String> {
    let mut found = Vec::new();
    let mut pending: Vec<PathBuf> = dirs.iter().map(|d| root.join(d)).filter(|d| d.is_dir()).collect();
    while let Some(dir) = pending.pop() {
        let entries = std::fs::read_dir(&dir).map_err(|e| format!("cannot list {}: {e}", dir.display()))?;
        for entry in entries {
            let entry = entry.map_err(|e| format!("cannot list {}: {e}", dir.display()))?;
            let path = entry.path();
            let name = entry.file_name();
            let name = name.to_string_lossy();
            let kind = entry.file_type().map_err(|e| format!("cannot stat {}: {e}", path.display()))?;
            if kind.is_dir() {
                if name != "target" && !name.starts_with('.') {
                    pending.push(path);
                }
            } else if name.ends_with(".rs") {
                found.push(path);
            }
        }
    }
    found.sort();
    Ok(found)
}

/// The header problems of every `.rs` file under [`HEADER_DIRS`] of `root`, and how many
/// files were looked at.
pub fn missing_headers(root: &Path) -> Result<(usize, Vec<String>), String> {
    let files = rust_files(root, HEADER_DIRS)?;
    let mut problems = Vec::new();
    for path in &files {
        let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let shown = path.strip_prefix(root).unwrap_or(path).display().to_string();
        problems.extend(header_problem(&shown, &String::from_utf8_lossy(&bytes)));
    }
    Ok((files.len(), problems))
}

/// `cargo metadata --format-version 1` of the workspace at `root`, for the host platform
/// (the dependencies built here, which are also the ones already downloaded).
pub fn cargo_metadata(root: &Path) -> Result<Value, String> {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".to_string());
    let version = run(Command::new(&rustc).arg("-vV"))?;
    let host = version
        .lines()
        .find_map(|l| l.strip_prefix("host: "))
        .ok_or_else(|| format!("`{rustc} -vV` names no host:\n{version}"))?;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    let manifest = root.join("Cargo.toml");
    let text = run(Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--filter-platform", host, "--manifest-path"])
        .arg(&manifest))?;
    serde_json::from_str(&text).map_err(|e| format!("cargo metadata printed what is not its JSON: {e}"))
}

fn run(command: &mut Command) -> Result<String, String> {
    let shown = format!("{command:?}");
    let out = command.output().map_err(|e| format!("cannot run {shown}: {e}"))?;
    if !out.status.success() {
        return Err(format!("{shown} failed ({}):\n{}", out.status, String::from_utf8_lossy(&out.stderr)));
    }
    String::from_utf8(out.stdout).map_err(|e| format!("{shown} printed what is not UTF-8: {e}"))
}

/// The I/O crates ([`io_crate`]) in the tree of `krate`'s normal dependencies, as resolved
/// in `metadata` (the output of `cargo metadata --format-version 1`): one message per I/O
/// crate, with the shortest path that reaches it and what to change. The walk stops at an
/// I/O crate (what lies below it is its own business).
pub fn io_dependencies(metadata: &Value, krate: &str) -> Result<Vec<String>, String> {
    let malformed = |what: &str| format!("cargo metadata's JSON has no {what}");
    let packages = metadata["packages"].as_array().ok_or_else(|| malformed("packages"))?;
    let members = metadata["workspace_members"].as_array().ok_or_else(|| malformed("workspace_members"))?;
    let nodes = metadata["resolve"]["nodes"].as_array().ok_or_else(|| malformed("resolve.nodes"))?;
    let root_dir = metadata["workspace_root"].as_str().unwrap_or_default();
    let package = |id: &str| packages.iter().find(|p| p["id"].as_str() == Some(id));
    let label = |id: &str| match package(id) {
        Some(p) => format!("{} {}", p["name"].as_str().unwrap_or(id), p["version"].as_str().unwrap_or("?")),
        None => id.to_string(),
    };
    let core = members
        .iter()
        .filter_map(Value::as_str)
        .find(|id| package(id).is_some_and(|p| p["name"].as_str() == Some(krate)))
        .ok_or_else(|| {
            format!("the workspace has no package {krate}; if it was renamed, change CORE in xtask/src/lib.rs")
        })?;
    let manifest = package(core).and_then(|p| p["manifest_path"].as_str()).unwrap_or("Cargo.toml");
    let manifest = manifest.strip_prefix(root_dir).unwrap_or(manifest).trim_start_matches('/');
    let edges: BTreeMap<&str, Vec<&str>> = nodes
        .iter()
        .filter_map(|n| {
            let deps = n["deps"].as_array()?;
            let normal = deps
                .iter()
                .filter(|d| d["dep_kinds"].as_array().is_some_and(|kinds| kinds.iter().any(|k| k["kind"].is_null())));
            Some((n["id"].as_str()?, normal.filter_map(|d| d["pkg"].as_str()).collect()))
        })
        .collect();
    // Breadth first, so each crate is reached by a shortest path.
    let mut parent: BTreeMap<&str, &str> = BTreeMap::new();
    let mut queue = VecDeque::from([core]);
    let mut problems = Vec::new();
    while let Some(id) = queue.pop_front() {
        for &dep in edges.get(id).into_iter().flatten() {
            if dep == core || parent.contains_key(dep) {
                continue;
            }
            parent.insert(dep, id);
            let name = package(dep).and_then(|p| p["name"].as_str()).unwrap_or(dep);
            let Some(why) = io_crate(name) else {
                queue.push_back(dep);
                continue;
            };
            let mut path = vec![dep];
            while let Some(&up) = parent.get(path[path.len() - 1]) {
                path.push(up);
            }
            path.reverse();
            let direct = package(path[1]).and_then(|p| p["name"].as_str()).unwrap_or(path[1]);
            let fix = if path.len() == 2 {
                format!(
                    "take `{name}` out of [dependencies] in {manifest} and do that work in the shell crate that \
                     calls {krate} ([dev-dependencies] are fine for tests)"
                )
            } else {
                format!(
                    "`{direct}` in [dependencies] of {manifest} brings it in: turn off the feature (or default \
                     features) of `{direct}` that pulls `{name}` in, or take `{direct}` out of {krate}"
                )
            };
            let shown: Vec<String> = path.iter().map(|id| label(id)).collect();
            problems.push(format!(
                "{krate} must stay sans-IO (STYLE.md habit 2: events and `now` in, commands out; the shell \
                 crates do the I/O), but its normal dependencies reach {name}, {why}:\n  {}\n  fix: {fix}",
                shown.join(" -> ")
            ));
        }
    }
    Ok(problems)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_must_open_with_a_doc_comment() {
        assert_eq!(header_problem("a.rs", "//! What a is for.\nuse std::fmt;\n"), None);
        assert_eq!(header_problem("a.rs", "\n\n  //! Indented, after blank lines.\n"), None);
        assert_eq!(header_problem("a.rs", "\u{feff}//! After a byte order mark.\n"), None);
        let fix = "begin the file with `//!` lines that say what it is for and why (STYLE.md habit 13)";
        assert_eq!(
            header_problem("crates/x/src/a.rs", "\nuse std::fmt;\n//! Too late.\n"),
            Some(format!("crates/x/src/a.rs:2: the file opens with `use std::fmt;`, not a `//!` header; {fix}"))
        );
        assert_eq!(
            header_problem("a.rs", "/// An item's doc is not the file's.\nfn f() {}\n"),
            Some(format!(
                "a.rs:1: the file opens with `/// An item's doc is not the file's.`, not a `//!` header; {fix}"
            ))
        );
        assert_eq!(header_problem("a.rs", " \n"), Some(format!("a.rs: the file is empty; {fix}")));
        let long = format!("// {}", "x".repeat(80));
        let quoted = format!("// {}...", "x".repeat(57));
        assert_eq!(
            header_problem("a.rs", &long),
            Some(format!("a.rs:1: the file opens with `{quoted}`, not a `//!` header; {fix}"))
        );
    }

    #[test]
    fn io_crates_are_known_by_name_and_family() {
        assert_eq!(io_crate("tokio"), Some("an async runtime (sockets, timers, files, processes)"));
        assert_eq!(io_crate("tokio-postgres"), Some("an async runtime (sockets, timers, files, processes)"));
        assert_eq!(io_crate("hyper_util"), Some("HTTP over sockets"));
        assert_eq!(io_crate("libc"), Some("system calls"));
        assert_eq!(io_crate("smol_str"), None);
        assert_eq!(io_crate("serde"), None);
        assert_eq!(io_crate("tokiox"), None);
    }

    /// A `cargo metadata` document with the given packages (`name`) and edges
    /// (`from`, `to`, kind: `None` for normal).
    fn metadata(names: &[&str], edges: &[(&str, &str, Option<&str>)]) -> Value {
        let id = |n: &str| format!("id-{n}");
        let packages: Vec<Value> = names
            .iter()
            .map(|n| {
                serde_json::json!({
                    "id": id(n), "name": n, "version": "1.0.0",
                    "manifest_path": format!("/ws/crates/{n}/Cargo.toml"),
                })
            })
            .collect();
        let nodes: Vec<Value> = names
            .iter()
            .map(|n| {
                let deps: Vec<Value> = edges
                    .iter()
                    .filter(|(from, _, _)| from == n)
                    .map(|(_, to, kind)| {
                        serde_json::json!({"name": to, "pkg": id(to), "dep_kinds": [{"kind": kind, "target": null}]})
                    })
                    .collect();
                serde_json::json!({"id": id(n), "deps": deps})
            })
            .collect();
        serde_json::json!({
            "packages": packages,
            "workspace_members": [id("ferry-core"), id("ferry-store")],
            "workspace_root": "/ws",
            "resolve": {"nodes": nodes},
        })
    }

    #[test]
    fn the_core_may_not_reach_an_io_crate_through_normal_dependencies() {
        let names = ["ferry-core", "ferry-store", "serde", "toml", "fancy", "tokio", "mio", "libc", "proptest"];
        let pure = metadata(
            &names,
            &[
                ("ferry-core", "serde", None),
                ("ferry-core", "toml", None),
                ("toml", "serde", None),
                // Dev- and build-dependencies are not the core's tree.
                ("ferry-core", "proptest", Some("dev")),
                ("proptest", "libc", None),
                ("ferry-core", "tokio", Some("build")),
                // Nor are other crates' dependencies.
                ("ferry-store", "ferry-core", None),
                ("ferry-store", "tokio", None),
            ],
        );
        assert_eq!(io_dependencies(&pure, "ferry-core"), Ok(vec![]));

        let direct = metadata(&names, &[("ferry-core", "serde", None), ("ferry-core", "tokio", None)]);
        assert_eq!(
            io_dependencies(&direct, "ferry-core"),
            Ok(vec!["ferry-core must stay sans-IO (STYLE.md habit 2: events and `now` in, commands out; the \
                     shell crates do the I/O), but its normal dependencies reach tokio, an async runtime \
                     (sockets, timers, files, processes):\n  ferry-core 1.0.0 -> tokio 1.0.0\n  fix: take \
                     `tokio` out of [dependencies] in crates/ferry-core/Cargo.toml and do that work in the \
                     shell crate that calls ferry-core ([dev-dependencies] are fine for tests)"
                .to_string()])
        );

        // Through another crate: the shortest path, and the walk stops at the I/O crate.
        let indirect = metadata(
            &names,
            &[
                ("ferry-core", "toml", None),
                ("toml", "fancy", None),
                ("fancy", "tokio", None),
                ("tokio", "mio", None),
                ("ferry-core", "fancy", None),
            ],
        );
        assert_eq!(
            io_dependencies(&indirect, "ferry-core"),
            Ok(vec!["ferry-core must stay sans-IO (STYLE.md habit 2: events and `now` in, commands out; the \
                     shell crates do the I/O), but its normal dependencies reach tokio, an async runtime \
                     (sockets, timers, files, processes):\n  ferry-core 1.0.0 -> fancy 1.0.0 -> tokio 1.0.0\n  \
                     fix: `fancy` in [dependencies] of crates/ferry-core/Cargo.toml brings it in: turn off the \
                     feature (or default features) of `fancy` that pulls `tokio` in, or take `fancy` out of \
                     ferry-core"
                .to_string()])
        );

        assert_eq!(
            io_dependencies(&pure, "ferry-kernel"),
            Err("the workspace has no package ferry-kernel; if it was renamed, change CORE in xtask/src/lib.rs"
                .to_string())
        );
    }
}
