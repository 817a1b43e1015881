//! The layout rule (docs/src/development.md, "Layout"), checked over the source tree: the
//! four modules depend on each other one way only, each is used through
//! what its `mod.rs` exports, never through another module's files, and
//! `telemetry` uses none of billd's adapter crates.

use std::path::{Path, PathBuf};

/// Each top module and the modules it may use. Together they are acyclic:
/// `http` and `jobs` → `pipeline` → `telemetry`. The crate root (`lib.rs`,
/// `billing.rs`) starts them all and may use any of them.
const ALLOWED: [(&str, &[&str]); 4] = [
    ("http", &["pipeline", "telemetry"]),
    ("jobs", &["pipeline", "telemetry"]),
    ("pipeline", &["telemetry"]),
    ("telemetry", &[]),
];

/// Workspace crates a top module may not use although billd-server depends
/// on them: telemetry is handed plain values, so a change to the store's
/// rows or Stripe's shapes never reaches it.
const FORBIDDEN_CRATES: [(&str, &[&str]); 1] =
    [("telemetry", &["billd_store", "billd_stripe", "billd_email"])];

fn is_top(name: &str) -> bool {
    ALLOWED.iter().any(|(top, _)| *top == name)
}

/// A source file: its path under `src/` (with `/`) and its text.
struct Source {
    path: String,
    text: String,
}

/// The top module a file belongs to, if any (the root's files have none).
fn top_of(path: &str) -> Option<&str> {
    path.split_once('/')
        .map(|(first, _)| first)
        .filter(|first| is_top(first))
}

/// `text` without comments (`//…` to the end of the line), so prose may
/// name any path.
fn code_of(text: &str) -> String {
    text.lines()
        .map(|line| line.split_once("//").map_or(line, |(code, _)| code))
        .collect::<Vec<_>>()
        .join("\n")
}

fn ident_at(text: &str) -> &str {
    let end = text
        .find(|c: char| !(c.is_alphanumeric() || c == '_'))
        .unwrap_or(text.len());
    &text[..end]
}

fn is_ident_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// Where `word` starts in `code` other than as the tail of a longer
/// identifier (`crate::` in `billd_crate::`).
fn word_starts<'c>(code: &'c str, word: &'c str) -> impl Iterator<Item = usize> + 'c {
    code.match_indices(word)
        .map(|(at, _)| at)
        .filter(|at| !code[..*at].chars().next_back().is_some_and(is_ident_char))
}

/// Whether `code` names the identifier `name` (`billd_store`, not
/// `billd_store_x`).
fn names_ident(code: &str, name: &str) -> bool {
    word_starts(code, name).any(|at| {
        !code[at + name.len()..]
            .chars()
            .next()
            .is_some_and(is_ident_char)
    })
}

/// Every `crate::` path in `code`: its first segment and what follows it.
fn crate_paths(code: &str) -> Vec<(&str, &str)> {
    word_starts(code, "crate::")
        .map(|at| {
            let rest = &code[at + "crate::".len()..];
            let first = ident_at(rest);
            (first, &rest[first.len()..])
        })
        .collect()
}

/// The submodules a path after `crate::{top}` names, followed by `::`:
/// `::outbox::X` and `::{outbox::X, Y}` name `outbox`.
fn named_submodules(after_top: &str) -> Vec<&str> {
    let Some(rest) = after_top.strip_prefix("::") else {
        return Vec::new();
    };
    if let Some(group) = rest.strip_prefix('{') {
        let group = &group[..group.find('}').unwrap_or(group.len())];
        return group
            .split(',')
            .map(str::trim)
            .filter_map(|entry| {
                let name = ident_at(entry);
                entry[name.len()..].starts_with("::").then_some(name)
            })
            .collect();
    }
    let name = ident_at(rest);
    if rest[name.len()..].starts_with("::") {
        vec![name]
    } else {
        Vec::new()
    }
}

/// Every break of the layout rule in `sources`; `is_submodule(top, name)`
/// tells whether `top` has a file or folder `name`.
fn violations(sources: &[Source], is_submodule: &dyn Fn(&str, &str) -> bool) -> Vec<String> {
    let mut found = Vec::new();
    for source in sources {
        let own = top_of(&source.path);
        let code = code_of(&source.text);
        for (top, crates) in FORBIDDEN_CRATES.iter().filter(|(top, _)| Some(*top) == own) {
            for name in crates.iter().filter(|name| names_ident(&code, name)) {
                found.push(format!(
                    "{}: {top} may not use {name}; hand it plain values",
                    source.path
                ));
            }
        }
        for (first, after) in crate_paths(&code) {
            if let Some(own) = own {
                if first == own {
                    continue;
                }
                let allowed = ALLOWED
                    .iter()
                    .find(|(top, _)| *top == own)
                    .map_or(&[][..], |(_, allowed)| *allowed);
                if !allowed.contains(&first) {
                    found.push(format!(
                        "{}: {own} may not use crate::{first} (allowed: {allowed:?})",
                        source.path
                    ));
                    continue;
                }
            }
            if is_top(first) {
                for name in named_submodules(after) {
                    if is_submodule(first, name) {
                        found.push(format!(
                            "{}: reaches into crate::{first}::{name}; use what {first}/mod.rs exports",
                            source.path
                        ));
                    }
                }
            }
        }
    }
    found
}

fn src_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn read_tree() -> Vec<Source> {
    let src = src_dir();
    let mut sources = Vec::new();
    let mut dirs = vec![src.clone()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let rel = path.strip_prefix(&src).unwrap();
                let rel = rel
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy().into_owned())
                    .collect::<Vec<_>>()
                    .join("/");
                let text = std::fs::read_to_string(&path).unwrap();
                sources.push(Source { path: rel, text });
            }
        }
    }
    sources
}

fn on_disk(top: &str, name: &str) -> bool {
    let dir = src_dir().join(top);
    dir.join(format!("{name}.rs")).is_file() || dir.join(name).join("mod.rs").is_file()
}

#[test]
fn the_four_modules_depend_one_way_and_only_on_each_others_mod_rs() {
    // This file's own examples break the rule on purpose.
    let sources: Vec<Source> = read_tree()
        .into_iter()
        .filter(|s| s.path != "layout.rs")
        .collect();
    for top in ["http", "pipeline", "jobs", "telemetry"] {
        assert!(
            sources.iter().any(|s| top_of(&s.path) == Some(top)),
            "no files under src/{top}/"
        );
    }
    let found = violations(&sources, &on_disk);
    assert!(
        found.is_empty(),
        "layout rule broken:\n{}",
        found.join("\n")
    );
}

/// The checker itself: each kind of break is found, and what the rule
/// allows is not.
#[test]
fn the_layout_check_finds_each_kind_of_break() {
    let file = |path: &str, text: &str| Source {
        path: path.to_owned(),
        text: text.to_owned(),
    };
    let submodules = |top: &str, name: &str| {
        matches!(
            (top, name),
            ("pipeline", "outbox") | ("http", "api") | ("http", "app")
        )
    };
    let broken = [
        file("pipeline/outbox.rs", "use crate::http::ApiError;"),
        file(
            "pipeline/worker.rs",
            "let j = crate::jobs::Scheduler::new();",
        ),
        file("telemetry/metrics.rs", "use crate::pipeline::Clock;"),
        file("jobs/alerts.rs", "fn f(_: crate::http::ApiKeys) {}"),
        file("http/webhook.rs", "use crate::pipeline::outbox::Delivery;"),
        file(
            "http/app/usage.rs",
            "use crate::pipeline::{Clock, outbox::Delivery};",
        ),
        file("lib.rs", "crate::pipeline::outbox::LogDelivery"),
        file("pipeline/ingest.rs", "use crate::Metrics;"),
        file(
            "telemetry/scrape.rs",
            "use billd_store::{InboxStats, Store};",
        ),
        file(
            "telemetry/metrics.rs",
            "fn f(e: &billd_store::StoreError) {}",
        ),
    ];
    for source in &broken {
        let found = violations(std::slice::from_ref(source), &submodules);
        assert_eq!(found.len(), 1, "{}: {found:?}", source.text);
    }
    let fine = [
        file(
            "http/api.rs",
            "use crate::http::app::account::live_customer;",
        ),
        file(
            "http/router.rs",
            "crate::http::app(state); use crate::pipeline::{Clock, Ingestor};",
        ),
        file("jobs/reconcile.rs", "crate::pipeline::parse_envelope(b, 0)"),
        file(
            "pipeline/notify.rs",
            "use crate::telemetry::LabelledCounter;",
        ),
        file("pipeline/readings.rs", "use billd_store::InboxStats;"),
        file(
            "telemetry/scrape.rs",
            "// read by pipeline from billd_store",
        ),
        file(
            "telemetry/business.rs",
            "use billd_core::CustomerState; billd_store_like();",
        ),
        file("pipeline/clock.rs", "// see crate::http::api::store_error"),
        file(
            "billing.rs",
            "use crate::jobs::AlertMonitor; use crate::http::ApiKeys;",
        ),
    ];
    let found = violations(&fine, &submodules);
    assert!(found.is_empty(), "{found:?}");
}
