//! Fails the build when the pure core (`src/scheduler/`) reaches for IO, clocks, randomness,
//! hash-ordered collections or floats (after TigerBeetle's `src/tidy.zig`).

use std::path::Path;

const FORBIDDEN: &[&str] = &[
    "tokio",
    "tonic",
    "openraft",
    "sled",
    "std::fs",
    "std::net",
    "std::thread",
    "std::env",
    "std::process",
    "SystemTime",
    "Instant",
    "thread_rng",
    "rand::",
    "HashMap",
    "HashSet",
    "f32",
    "f64",
];

fn is_word_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// True when `needle` occurs in `line` as a whole word (so `f64` matches but `buf64` does not).
fn mentions(line: &str, needle: &str) -> bool {
    line.match_indices(needle).any(|(at, _)| {
        let before = line[..at].chars().next_back();
        let after = line[at + needle.len()..].chars().next();
        let starts = !before.is_some_and(is_word_char);
        let ends = needle.ends_with(':') || !after.is_some_and(is_word_char);
        starts && ends
    })
}

/// Each forbidden name, on a non-comment line of the core, is reported with its location.
#[test]
fn core_is_pure() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/scheduler");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("src/scheduler exists")
        .map(|e| e.expect("readable entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "rs"))
        .collect();
    files.sort();
    assert!(files.len() > 5, "expected the core's modules in {}", dir.display());
    let mut found = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).expect("readable source");
        for (n, line) in text.lines().enumerate() {
            let code = line.trim_start();
            if code.starts_with("//") {
                continue;
            }
            for needle in FORBIDDEN {
                if mentions(code, needle) {
                    found.push(format!("{}:{}: {needle}: {}", file.display(), n + 1, line.trim()));
                }
            }
        }
    }
    assert!(found.is_empty(), "the core must stay pure:\n{}", found.join("\n"));
}

/// The matcher itself catches what it should and ignores look-alikes.
#[test]
fn matcher_is_not_vacuous() {
    assert!(mentions("let x: f64 = 1.0;", "f64"));
    assert!(mentions("use std::collections::HashMap;", "HashMap"));
    assert!(mentions("tokio::spawn(f)", "tokio"));
    assert!(!mentions("let buf64 = 1;", "f64"));
    assert!(!mentions("let my_tokio_like = 1;", "tokio"));
}
