//! Fails the build when the pure core (`src/scheduler/`) reaches for IO, clocks, randomness,
//! hash-ordered collections (bar one table only ever asked about one key or log index) or floats (after
//! TigerBeetle's `src/tidy.zig`).

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
    "HashTable",
    "hashbrown",
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

/// The core's one hash table: the session table's lookup. It may exist because it is only ever
/// asked about one key or one log index, so its randomly keyed layout cannot reach an outcome.
const HASH_MAP_FILE: &str = "state.rs";
const HASH_MAP_FIELD: &str = "by_key";
/// The names the hash table may be mentioned by, in its file only.
const HASH_MAP_NAMES: &[&str] = &["HashTable", "hashbrown"];
const POINT_OPERATIONS: &[&str] = &["find(", "find_entry(", "entry(", "len()"];

/// Every use of the hash map field in `text` other than its declaration, its replacement and
/// point operations (an iteration, a comparison, a reference handed elsewhere).
fn unpointed_uses(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim_start().starts_with("//") {
            continue;
        }
        for (at, _) in line.match_indices(HASH_MAP_FIELD) {
            let rest = &line[at + HASH_MAP_FIELD.len()..];
            let declared = rest.starts_with(": HashTable<") || rest.starts_with(" = ");
            let pointed = rest
                .strip_prefix('.')
                .is_some_and(|call| POINT_OPERATIONS.iter().any(|op| call.starts_with(op)));
            if !declared && !pointed {
                found.push(format!("{}: {}", n + 1, line.trim()));
            }
        }
    }
    found
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
                let allowed = HASH_MAP_NAMES.contains(needle) && file.ends_with(HASH_MAP_FILE);
                if mentions(code, needle) && !allowed {
                    found.push(format!("{}:{}: {needle}: {}", file.display(), n + 1, line.trim()));
                }
            }
        }
    }
    assert!(found.is_empty(), "the core must stay pure:\n{}", found.join("\n"));

    let state = std::fs::read_to_string(dir.join(HASH_MAP_FILE)).expect("readable source");
    let uses = unpointed_uses(&state);
    assert!(uses.is_empty(), "the session lookup is only asked about one key:\n{uses:#?}");
    assert!(
        state.contains(&format!("{HASH_MAP_FIELD}: HashTable<")),
        "expected the session lookup table `{HASH_MAP_FIELD}` in {HASH_MAP_FILE}"
    );
}

/// The matcher itself catches what it should and ignores look-alikes.
#[test]
fn matcher_is_not_vacuous() {
    assert!(mentions("let x: f64 = 1.0;", "f64"));
    assert!(mentions("use std::collections::HashMap;", "HashMap"));
    assert!(mentions("tokio::spawn(f)", "tokio"));
    assert!(!mentions("let buf64 = 1;", "f64"));
    assert!(!mentions("let my_tokio_like = 1;", "tokio"));

    assert!(mentions("use hashbrown::HashTable;", "HashTable"));
    assert!(unpointed_uses("    by_key: HashTable<T>,\n    self.by_key.find(h, eq)").is_empty());
    assert_eq!(unpointed_uses("    by_key: HashMap<K, V>,").len(), 1);
    assert!(unpointed_uses("self.by_key = keyed;").is_empty());
    assert_eq!(unpointed_uses("let all = &self.by_key;").len(), 1);
    assert_eq!(unpointed_uses("self.by_key.iter()").len(), 1);
    assert_eq!(unpointed_uses("for (k, v) in &self.by_key {").len(), 1);
    assert_eq!(unpointed_uses("self.by_key == other.by_key").len(), 2);
}

/// Every `pub const …_MAX` in `text`, as `line: name`, whose line above is not a doc comment.
fn undocumented_bounds(text: &str) -> Vec<String> {
    let lines: Vec<&str> = text.lines().collect();
    let mut found = Vec::new();
    for (n, line) in lines.iter().enumerate() {
        let Some(rest) = line.trim_start().strip_prefix("pub const ") else { continue };
        let name = rest.split(':').next().unwrap_or_default().trim();
        if !name.contains("_MAX") {
            continue;
        }
        let documented = n > 0 && lines[n - 1].trim_start().starts_with("///");
        if !documented {
            found.push(format!("{}: {name}", n + 1));
        }
    }
    found
}

/// Every bound in the core is named and says what it bounds (issue 15: the limits table in
/// `docs/limits.md` and the proto comments are written from these).
#[test]
fn core_bounds_are_documented() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/scheduler");
    let mut found = Vec::new();
    for entry in std::fs::read_dir(&dir).expect("src/scheduler exists") {
        let path = entry.expect("readable entry").path();
        if path.extension().is_some_and(|e| e == "rs") {
            let text = std::fs::read_to_string(&path).expect("readable source");
            found.extend(undocumented_bounds(&text).into_iter().map(|f| {
                format!("{}:{f}", path.file_name().map(|n| n.to_string_lossy()).unwrap_or_default())
            }));
        }
    }
    assert!(found.is_empty(), "bounds without a doc comment:\n{}", found.join("\n"));
    assert_eq!(undocumented_bounds("pub const A_MAX: u8 = 1;"), vec!["1: A_MAX".to_owned()]);
    assert!(undocumented_bounds("/// Most a.\npub const A_MAX: u8 = 1;").is_empty());
}
