//! The shape of the crate, checked: `src/` is a set of rooms (a folder, or
//! a file for a room of one), and a room may import only the rooms below
//! it in `BELOW`, so the arrows run one way and no circle can form. The
//! README's map of the rooms names every room, and only paths that exist.
//!
//! `cargo test --test layout` is the command; it reads the source as text
//! (`crate::room` paths, `use crate::{…}` groups), as a reviewer would,
//! leaving out `#[cfg(test)]` modules, which may reach anywhere.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Each room, bottom first, with the rooms it may import. A room may only
/// name rooms listed before it, which is what keeps the graph free of
/// circles; the test checks that too, so a reordering cannot hide one.
const BELOW: &[(&str, &[&str])] = &[
    ("http", &[]),
    ("scope", &[]),
    ("tls", &[]),
    ("store", &[]),
    ("config", &["http", "scope", "tls"]),
    ("telemetry", &["config", "http"]),
    ("auth", &["config", "telemetry", "http", "scope", "store"]),
    ("upstream", &["config", "telemetry", "http", "tls"]),
    ("oauth", &["config", "telemetry", "scope", "store", "auth"]),
    ("proxy", &["config", "telemetry", "http", "scope", "auth", "upstream", "tls"]),
    ("web", &["config", "telemetry", "http", "scope", "auth", "oauth"]),
    ("gateway", &["config", "telemetry", "http", "scope", "auth", "proxy", "web"]),
    (
        "server",
        &[
            "config",
            "telemetry",
            "http",
            "scope",
            "tls",
            "store",
            "auth",
            "upstream",
            "oauth",
            "proxy",
            "web",
            "gateway",
        ],
    ),
];

/// Crates a room must not name: the authorization server's logic is free of
/// HTTP and of templates, the store of HTTP, the pages of SQL, and the
/// upstream client of tokens.
const NEVER_CRATES: &[(&str, &[&str])] = &[
    ("oauth", &["hyper", "hyper_util", "http_body_util", "minijinja", "sqlx"]),
    ("store", &["hyper", "hyper_util", "http", "minijinja"]),
    ("web", &["sqlx"]),
    ("upstream", &["jsonwebtoken", "sqlx", "minijinja"]),
    ("config", &["hyper", "hyper_util", "sqlx"]),
];

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// The rooms on disk: every folder of `src/`, and every file but the two
/// roots.
fn rooms_on_disk() -> BTreeSet<String> {
    let mut rooms = BTreeSet::new();
    for entry in std::fs::read_dir(src()).expect("src/ is readable") {
        let entry = entry.expect("a directory entry");
        let name = entry.file_name().to_string_lossy().into_owned();
        if entry.path().is_dir() {
            rooms.insert(name);
        } else if let Some(stem) = name.strip_suffix(".rs")
            && stem != "main"
            && stem != "lib"
        {
            rooms.insert(stem.to_string());
        }
    }
    rooms
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("readable") {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The text the compiler sees outside tests, without comments.
fn code_of(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("/*") {
        out.push_str(&rest[..start]);
        rest = rest[start..].find("*/").map_or("", |end| &rest[start + end + 2..]);
    }
    out.push_str(rest);
    let code: String = out.lines().map(|l| l.split("//").next().unwrap_or("")).collect::<Vec<_>>().join("\n");
    // The test module, conventionally last; a `#[cfg(test)]` helper
    // function before it is code that ships only in tests, and kept.
    let cut = code
        .match_indices("#[cfg(test)]")
        .map(|(at, _)| at)
        .find(|&at| code[at + "#[cfg(test)]".len()..].trim_start().starts_with("mod "));
    match cut {
        Some(cut) => code[..cut].to_string(),
        None => code,
    }
}

fn idents_after<'a>(code: &'a str, prefix: &'a str) -> impl Iterator<Item = &'a str> + 'a {
    code.match_indices(prefix).filter_map(move |(at, _)| {
        // A whole path segment: `crate::x`, not `my_crate::x`.
        let before = code[..at].chars().next_back();
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            return None;
        }
        let tail = &code[at + prefix.len()..];
        let len = tail.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(tail.len());
        (len > 0).then(|| &tail[..len])
    })
}

/// The rooms each room names, and the crates it names.
fn imports() -> (BTreeMap<String, BTreeSet<String>>, BTreeMap<String, BTreeSet<String>>) {
    let rooms = rooms_on_disk();
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    let (mut edges, mut crates) = (BTreeMap::new(), BTreeMap::new());
    for file in files {
        let rel = file.strip_prefix(src()).expect("under src/");
        let first = rel.components().next().expect("a path").as_os_str().to_string_lossy().into_owned();
        let room = first.strip_suffix(".rs").unwrap_or(&first).to_string();
        if room == "main" || room == "lib" {
            continue;
        }
        let code = code_of(&std::fs::read_to_string(&file).expect("readable"));
        let mut named: BTreeSet<String> = idents_after(&code, "crate::").map(str::to_string).collect();
        // `use crate::{a::X, b}`: the first segment of each item.
        for (at, _) in code.match_indices("use crate::{") {
            let group = &code[at + "use crate::{".len()..];
            let group = &group[..group.find("};").unwrap_or(group.len())];
            let mut depth = 0;
            let mut start = true;
            let mut item = String::new();
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        start = true;
                        named.insert(std::mem::take(&mut item));
                        continue;
                    }
                    _ => {}
                }
                if start && depth == 0 && (c.is_ascii_alphanumeric() || c == '_') {
                    item.push(c);
                } else if !item.is_empty() || !c.is_whitespace() {
                    start = false;
                }
            }
            named.insert(item);
        }
        named.retain(|n| rooms.contains(n) && *n != room);
        edges.entry(room.clone()).or_insert_with(BTreeSet::new).extend(named);
        let used = crates.entry(room.clone()).or_insert_with(BTreeSet::new);
        for (name, banned) in NEVER_CRATES {
            if *name == room {
                for krate in *banned {
                    let path = format!("{krate}::");
                    if idents_after(&code, &path).next().is_some() || code.contains(&format!("use {krate};")) {
                        used.insert(krate.to_string());
                    }
                }
            }
        }
    }
    (edges, crates)
}

#[test]
fn every_room_is_placed_and_each_names_only_earlier_rooms() {
    let placed: Vec<&str> = BELOW.iter().map(|(r, _)| *r).collect();
    for (i, (room, below)) in BELOW.iter().enumerate() {
        for b in *below {
            let at = placed.iter().position(|p| p == b);
            assert!(at.is_some_and(|at| at < i), "{room} may import {b}, which is not placed before it in BELOW");
        }
    }
    let on_disk = rooms_on_disk();
    let placed: BTreeSet<String> = placed.iter().map(|r| r.to_string()).collect();
    assert_eq!(on_disk, placed, "every room in src/ is placed in BELOW, and only those");
}

#[test]
fn arrows_run_one_way() {
    let (edges, crates) = imports();
    let allowed: BTreeMap<&str, &[&str]> = BELOW.iter().copied().collect();
    let mut wrong = Vec::new();
    for (room, targets) in &edges {
        for t in targets {
            if !allowed[room.as_str()].contains(&t.as_str()) {
                wrong.push(format!("{room} -> {t}"));
            }
        }
    }
    for (room, used) in &crates {
        for krate in used {
            wrong.push(format!("{room} -> crate {krate}"));
        }
    }
    assert!(wrong.is_empty(), "arrows the layout forbids:\n  {}", wrong.join("\n  "));
    // The reading of the source found the arrows the layout is made of, so
    // an empty result above is not a reader that found nothing.
    for (from, to) in [("server", "gateway"), ("gateway", "proxy"), ("proxy", "upstream"), ("web", "oauth")] {
        assert!(edges[from].contains(to), "{from} -> {to} is expected: {edges:?}");
    }
}

#[test]
fn the_readme_maps_every_room() {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).expect("README");
    let section = readme.split("\n## Layout\n").nth(1).expect("a Layout section");
    let section = section.split("\n## ").next().unwrap_or(section);
    let named: BTreeSet<String> = idents_after(section, "src/").map(str::to_string).collect();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for word in section.split_whitespace() {
        let word = word.trim_matches(|c: char| c == '`' || c == ',' || c == '(' || c == ')');
        if word.starts_with("src/") || word.starts_with("tests/") {
            assert!(root.join(word).exists(), "the README's layout names {word}, which does not exist");
        }
    }
    for room in rooms_on_disk() {
        assert!(named.contains(&room), "the README's layout does not name src/{room}");
    }
}
