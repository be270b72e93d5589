//! How the binary's commands print: `--json` for scripts, otherwise readable `key: value` lines,
//! with lists as aligned tables. Every line goes through `out!`, so a closed pipe ends quietly.

use serde::Serialize;

/// `println!` for command output, except that output into a closed pipe
/// (`berth tenant list | head -1`) ends the process quietly with the usual status 141, as Unix
/// tools do, where `println!` would panic. (Rust ignores SIGPIPE, and so must Berth: a write to
/// a peer's closed socket must be an error, not a kill.)
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if let Err(e) = writeln!(std::io::stdout(), $($arg)*) {
            crate::output::stdout_failed(e)
        }
    }};
}

pub fn stdout_failed(e: std::io::Error) -> ! {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        std::process::exit(141);
    }
    eprintln!("error: cannot write the output: {e}");
    std::process::exit(1)
}

/// Prints a response: JSON with --json, otherwise readable `key: value` lines and tables.
pub fn show<T: Serialize>(json: bool, value: &T) -> anyhow::Result<()> {
    let value = serde_json::to_value(value)?;
    if json {
        out!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        render(&value, 0);
    }
    Ok(())
}

fn scalar(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::Null => Some("-".into()),
        serde_json::Value::Bool(b) => Some(b.to_string()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Object(o) if o.is_empty() => Some("-".into()),
        // A small object of scalars (resources, labels) reads well inline.
        serde_json::Value::Object(o)
            if o.len() <= 4 && o.values().all(|v| !v.is_object() && !v.is_array()) =>
        {
            Some(
                o.iter()
                    .map(|(k, v)| format!("{k}={}", scalar(v).unwrap_or_default()))
                    .collect::<Vec<_>>()
                    .join(" "),
            )
        }
        serde_json::Value::Array(a) if a.iter().all(|x| !x.is_object() && !x.is_array()) => {
            Some(a.iter().filter_map(scalar).collect::<Vec<_>>().join(", "))
        }
        _ => None,
    }
}

fn render(value: &serde_json::Value, indent: usize) {
    let pad = "  ".repeat(indent);
    match value {
        serde_json::Value::Object(map) => {
            for (key, v) in map {
                match scalar(v) {
                    Some(s) => out!("{pad}{key}: {s}"),
                    None => {
                        out!("{pad}{key}:");
                        render(v, indent + 1);
                    }
                }
            }
        }
        serde_json::Value::Array(items) => table(items, indent),
        other => out!("{pad}{}", scalar(other).unwrap_or_default()),
    }
}

/// Rows of objects as a table of their scalar fields.
fn table(items: &[serde_json::Value], indent: usize) {
    let pad = "  ".repeat(indent);
    let mut columns: Vec<String> = Vec::new();
    for item in items {
        if let serde_json::Value::Object(map) = item {
            for (k, v) in map {
                if scalar(v).is_some() && !columns.contains(k) {
                    columns.push(k.clone());
                }
            }
        }
    }
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|item| {
            columns.iter().map(|c| item.get(c).and_then(scalar).unwrap_or_default()).collect()
        })
        .collect();
    let widths: Vec<usize> = columns
        .iter()
        .enumerate()
        .map(|(i, c)| rows.iter().map(|r| r[i].len()).chain([c.len()]).max().unwrap_or(0))
        .collect();
    let line = |cells: Vec<String>| {
        let text: Vec<String> =
            cells.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        out!("{pad}{}", text.join("  ").trim_end());
    };
    line(columns.iter().map(|c| c.to_uppercase()).collect());
    for row in rows {
        line(row);
    }
    if items.is_empty() {
        out!("{pad}(none)");
    }
}
