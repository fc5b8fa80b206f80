//! The crate's modules form no import cycle. Two rules, read from the source text:
//! 1. top-level modules (`http`, `shard`, `channels`, ...) depend on each other without a cycle;
//! 2. inside one top-level module, files depend on each other without a cycle, not counting a
//!    parent module's references to its own children (a parent assembles its children).
//!
//! A reference is any `crate::a::b` or `super::x` path outside comments and `#[cfg(test)]`
//! modules, resolved to the longest module prefix that exists. When this fails it prints the cycle.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

type Module = Vec<String>;

/// Every module of the crate with its source text (test modules cut off).
fn modules() -> BTreeMap<Module, String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut out = BTreeMap::new();
    let mut stack = vec![root.clone()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("readable src") {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let rel = path.strip_prefix(&root).expect("under src");
            let mut parts: Module = rel
                .with_extension("")
                .iter()
                .map(|p| p.to_string_lossy().into_owned())
                .collect();
            if parts.last().is_some_and(|l| l == "mod") {
                parts.pop();
            }
            if parts == ["lib"] || parts == ["main"] {
                continue;
            }
            let text = std::fs::read_to_string(&path).expect("readable file");
            let code = match text.find("#[cfg(test)]\nmod tests") {
                Some(i) => text[..i].to_string(),
                None => text,
            };
            // Comments may name anything; only code counts.
            let code: String = code
                .lines()
                .filter(|l| !l.trim_start().starts_with("//"))
                .flat_map(|l| [l, "\n"])
                .collect();
            out.insert(parts, code);
        }
    }
    out
}

/// Paths like `crate::a::b` and `super::super::c`, including each item of `use x::{a, b::c}`.
fn paths(code: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let bytes = code.as_bytes();
    for start in ["crate::", "super::"] {
        let mut from = 0;
        while let Some(i) = code[from..].find(start) {
            let at = from + i;
            from = at + start.len();
            if at > 0 && (bytes[at - 1].is_ascii_alphanumeric() || bytes[at - 1] == b'_') {
                continue; // part of a longer identifier
            }
            let rest = &code[at..];
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
                .unwrap_or(rest.len());
            let head: Vec<String> = rest[..end]
                .split("::")
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect();
            if rest[end..].starts_with('{') {
                let close = rest[end..].find('}').map_or(rest.len(), |c| end + c);
                for item in rest[end + 1..close].split(',') {
                    let mut p = head.clone();
                    p.extend(
                        item.split("::")
                            .map(|s| s.trim().trim_start_matches("self").to_string())
                            .filter(|s| !s.is_empty() && s != "*"),
                    );
                    out.push(p);
                }
            } else {
                out.push(head);
            }
        }
    }
    out
}

/// The module a path names: the longest existing module prefix after resolving `crate`/`super`.
fn resolve(from: &Module, path: &[String], known: &BTreeSet<Module>) -> Option<Module> {
    let mut base: Module;
    let mut rest = path;
    if rest.first().is_some_and(|s| s == "crate") {
        base = Vec::new();
        rest = &rest[1..];
    } else {
        base = from.clone();
        while rest.first().is_some_and(|s| s == "super") {
            base.pop();
            rest = &rest[1..];
        }
    }
    let mut best = None;
    let mut cand = base.clone();
    if known.contains(&cand) {
        best = Some(cand.clone());
    }
    for seg in rest {
        cand.push(seg.clone());
        if known.contains(&cand) {
            best = Some(cand.clone());
        }
    }
    best.filter(|m| !m.is_empty())
}

fn edges() -> BTreeMap<Module, BTreeSet<Module>> {
    let mods = modules();
    let known: BTreeSet<Module> = mods.keys().cloned().collect();
    let mut out: BTreeMap<Module, BTreeSet<Module>> = BTreeMap::new();
    for (m, code) in &mods {
        let targets = out.entry(m.clone()).or_default();
        for p in paths(code) {
            if let Some(t) = resolve(m, &p, &known) {
                if &t != m {
                    targets.insert(t);
                }
            }
        }
    }
    out
}

/// A cycle in `graph`, if any, as the list of nodes along it.
fn find_cycle<N: Ord + Clone>(graph: &BTreeMap<N, BTreeSet<N>>) -> Option<Vec<N>> {
    // Iterative depth-first search with colours: 0 new, 1 on the stack, 2 done.
    let mut colour: BTreeMap<&N, u8> = BTreeMap::new();
    for start in graph.keys() {
        if colour.get(start).copied().unwrap_or(0) != 0 {
            continue;
        }
        let mut stack: Vec<(&N, Vec<&N>)> = vec![(start, graph[start].iter().collect())];
        colour.insert(start, 1);
        while let Some((node, pending)) = stack.last_mut() {
            let node: &N = node;
            match pending.pop() {
                Some(next) => match colour.get(next).copied().unwrap_or(0) {
                    0 => {
                        colour.insert(next, 1);
                        let succ = graph
                            .get(next)
                            .map(|s| s.iter().collect())
                            .unwrap_or_default();
                        stack.push((next, succ));
                    }
                    1 => {
                        let pos = stack.iter().position(|(n, _)| *n == next).unwrap_or(0);
                        let mut cycle: Vec<N> =
                            stack[pos..].iter().map(|(n, _)| (*n).clone()).collect();
                        cycle.push(next.clone());
                        return Some(cycle);
                    }
                    _ => {}
                },
                None => {
                    colour.insert(node, 2);
                    stack.pop();
                }
            }
        }
    }
    None
}

fn show(cycle: &[Module]) -> String {
    cycle
        .iter()
        .map(|m| m.join("::"))
        .collect::<Vec<_>>()
        .join(" -> ")
}

#[test]
fn top_level_modules_have_no_cycle() {
    let mut top: BTreeMap<Module, BTreeSet<Module>> = BTreeMap::new();
    for (from, targets) in edges() {
        let f = vec![from[0].clone()];
        let entry = top.entry(f.clone()).or_default();
        for t in targets {
            let t = vec![t[0].clone()];
            if t != f {
                entry.insert(t);
            }
        }
    }
    assert!(top.contains_key(&vec!["http".to_string()]), "src was read");
    if let Some(c) = find_cycle(&top) {
        panic!("import cycle between top-level modules: {}", show(&c));
    }
}

#[test]
fn files_inside_a_module_have_no_cycle() {
    let mut inner: BTreeMap<Module, BTreeSet<Module>> = BTreeMap::new();
    for (from, targets) in edges() {
        let entry = inner.entry(from.clone()).or_default();
        for t in targets {
            let same_top = t[0] == from[0];
            let own_child = t.len() > from.len() && t.starts_with(&from);
            if same_top && !own_child {
                entry.insert(t);
            }
        }
    }
    if let Some(c) = find_cycle(&inner) {
        panic!("import cycle between files: {}", show(&c));
    }
}

#[test]
fn http_talks_to_shards_only_through_the_service() {
    for (m, code) in modules() {
        if m[0] != "http" {
            continue;
        }
        let idents: BTreeSet<&str> = code
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .collect();
        for banned in ["BusMsg", "Query", "home_of", "State"] {
            assert!(
                !idents.contains(banned),
                "{} names {banned}; ask the shard service instead",
                m.join("::")
            );
        }
        for banned in ["crate::shard", "crate::bus"] {
            assert!(!code.contains(banned), "{} uses {banned}", m.join("::"));
        }
    }
}

#[test]
fn the_checker_finds_a_planted_cycle() {
    let g = |pairs: &[(&str, &str)]| {
        let mut m: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (a, b) in pairs {
            m.entry(a.to_string()).or_default().insert(b.to_string());
            m.entry(b.to_string()).or_default();
        }
        m
    };
    assert_eq!(
        find_cycle(&g(&[("a", "b"), ("b", "c"), ("c", "a")])),
        Some(vec!["a".into(), "b".into(), "c".into(), "a".into()])
    );
    assert_eq!(find_cycle(&g(&[("a", "b"), ("a", "c"), ("b", "c")])), None);
    let p = paths("use crate::bus::{BusMsg, Query};\nuse super::{state::X, pusher};\nx = crate::ids::home_of(1);");
    assert!(p.contains(&vec!["crate".into(), "bus".into(), "BusMsg".into()]));
    assert!(p.contains(&vec!["super".into(), "state".into(), "X".into()]));
    assert!(p.contains(&vec!["super".into(), "pusher".into()]));
    assert!(p.contains(&vec!["crate".into(), "ids".into(), "home_of".into()]));
}
