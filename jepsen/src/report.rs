//! `index.html` of a run: latency over time (log scale) with nemesis intervals shaded,
//! throughput per second, the operation counts and every checker's verdict. One
//! self-contained file with inline SVG; all geometry in integer arithmetic.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use crate::checker::{nemesis_intervals, Valid};
use crate::history::{pairs, Op, Type};
use crate::run::{Config, Summary};

const W: u64 = 1_000;
const H: u64 = 280;
const LEFT: u64 = 60;
const TOP: u64 = 20;

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

fn color(t: Type) -> &'static str {
    match t {
        Type::Ok => "#1a9641",
        Type::Fail => "#d7191c",
        _ => "#fdae61",
    }
}

/// log2 of `x` in sixteenths (x ≥ 1).
fn log2_16(x: u64) -> u64 {
    let x = x.max(1);
    let l = u64::from(x.ilog2());
    let mantissa = if l >= 4 { (x >> (l - 4)) & 0xf } else { (x << (4 - l)) & 0xf };
    l * 16 + mantissa
}

/// Latency axis: 2^7 µs (~0.1 ms) to 2^24 µs (~17 s).
const LAT_LO: u64 = 7 * 16;
const LAT_HI: u64 = 24 * 16;

fn lat_y(us: u64) -> u64 {
    let l = log2_16(us).clamp(LAT_LO, LAT_HI);
    TOP + H - (l - LAT_LO) * H / (LAT_HI - LAT_LO)
}

fn shade(svg: &mut String, ops: &[Op], end: u64) {
    for (s, e, what) in nemesis_intervals(ops, end) {
        let x0 = LEFT + s * W / end;
        let x1 = LEFT + e.min(end) * W / end;
        let _ = write!(
            svg,
            r##"<rect x="{x0}" y="{TOP}" width="{}" height="{H}" fill="#f4a582" opacity="0.25"><title>{}</title></rect><text x="{}" y="{}" font-size="9" fill="#b2182b">{}</text>"##,
            x1.saturating_sub(x0).max(1),
            esc(&what),
            x0 + 2,
            TOP + 10,
            esc(what.split_whitespace().take(2).collect::<Vec<_>>().join(" ").as_str())
        );
    }
}

fn time_axis(svg: &mut String, end: u64) {
    let secs = end / 1_000_000;
    let step = (secs / 10).max(1);
    let mut t = 0;
    while t <= secs {
        let x = LEFT + t * 1_000_000 * W / end;
        let _ = write!(
            svg,
            r##"<line x1="{x}" y1="{}" x2="{x}" y2="{}" stroke="#999"/><text x="{x}" y="{}" font-size="10" text-anchor="middle">{t}s</text>"##,
            TOP + H,
            TOP + H + 4,
            TOP + H + 16
        );
        t += step;
    }
}

fn latency_plot(ops: &[Op], end: u64) -> String {
    let mut svg = format!(
        r##"<svg width="{}" height="{}" xmlns="http://www.w3.org/2000/svg" font-family="sans-serif">"##,
        LEFT + W + 20,
        TOP + H + 30
    );
    shade(&mut svg, ops, end);
    for (label, us) in [
        ("1ms", 1_000u64),
        ("10ms", 10_000),
        ("100ms", 100_000),
        ("1s", 1_000_000),
        ("10s", 10_000_000),
    ] {
        let y = lat_y(us);
        let _ = write!(
            svg,
            r##"<line x1="{LEFT}" y1="{y}" x2="{}" y2="{y}" stroke="#eee"/><text x="{}" y="{}" font-size="10" text-anchor="end">{label}</text>"##,
            LEFT + W,
            LEFT - 4,
            y + 3
        );
    }
    for p in pairs(ops) {
        if p.invoke.workload == "nemesis" {
            continue;
        }
        let Some(done) = p.done else { continue };
        let x = LEFT + p.invoke.time_us * W / end;
        let y = lat_y(done.time_us.saturating_sub(p.invoke.time_us));
        let _ = write!(
            svg,
            r##"<circle cx="{x}" cy="{y}" r="1.8" fill="{}"><title>{} {} {} {}µs</title></circle>"##,
            color(done.kind),
            esc(&p.invoke.workload),
            esc(&p.invoke.f),
            esc(&p.invoke.key),
            done.time_us.saturating_sub(p.invoke.time_us)
        );
    }
    time_axis(&mut svg, end);
    svg.push_str("</svg>");
    svg
}

fn throughput_plot(ops: &[Op], end: u64) -> String {
    let secs = end / 1_000_000 + 1;
    let mut buckets: BTreeMap<(u8, u64), u64> = BTreeMap::new();
    for op in ops.iter().filter(|o| o.kind != Type::Invoke && o.workload != "nemesis") {
        let k = match op.kind {
            Type::Ok => 0,
            Type::Fail => 1,
            _ => 2,
        };
        *buckets.entry((k, op.time_us / 1_000_000)).or_default() += 1;
    }
    let max = buckets.values().copied().max().unwrap_or(1).max(1);
    let mut svg = format!(
        r##"<svg width="{}" height="{}" xmlns="http://www.w3.org/2000/svg" font-family="sans-serif">"##,
        LEFT + W + 20,
        TOP + H + 30
    );
    shade(&mut svg, ops, end);
    for (k, t) in [(0u8, Type::Ok), (1, Type::Fail), (2, Type::Info)] {
        let points: Vec<String> = (0..secs)
            .map(|s| {
                let n = buckets.get(&(k, s)).copied().unwrap_or(0);
                format!("{},{}", LEFT + (s * 1_000_000 + 500_000) * W / end, TOP + H - n * H / max)
            })
            .collect();
        let _ = write!(
            svg,
            r##"<polyline fill="none" stroke="{}" stroke-width="1.5" points="{}"/>"##,
            color(t),
            points.join(" ")
        );
    }
    let _ = write!(
        svg,
        r##"<text x="{}" y="{}" font-size="10" text-anchor="end">{max}/s</text><text x="{}" y="{}" font-size="10" text-anchor="end">0</text>"##,
        LEFT - 4,
        TOP + 8,
        LEFT - 4,
        TOP + H
    );
    time_axis(&mut svg, end);
    svg.push_str("</svg>");
    svg
}

pub fn write(path: &Path, config: &Config, ops: &[Op], summary: &Summary) -> anyhow::Result<()> {
    let end = ops.last().map_or(1, |o| o.time_us).max(1);
    let mut html = String::new();
    let verdict = match summary.valid {
        Valid::True => ("VALID", "#1a9641"),
        Valid::False => ("INVALID", "#d7191c"),
        Valid::Unknown => ("UNKNOWN", "#fdae61"),
    };
    let _ = write!(
        html,
        r##"<!doctype html><html><head><meta charset="utf-8"><title>berth jepsen {}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1150px}} table{{border-collapse:collapse;margin:1em 0}} td,th{{border:1px solid #ccc;padding:3px 8px;text-align:left;font-size:13px}} .v{{font-size:28px;font-weight:bold}}</style></head><body>
<h1>Berth Jepsen run <code>{}</code></h1><p class="v" style="color:{}">{}</p>"##,
        esc(&config.run),
        esc(&config.dir.display().to_string()),
        verdict.1,
        verdict.0
    );
    let _ = write!(
        html,
        "<table><tr><th>replicas</th><td>{}</td><th>time limit</th><td>{} s</td><th>seed</th><td>{}</td></tr>\
         <tr><th>workloads</th><td>{:?}</td><th>nemesis</th><td>{:?}</td><th>faults injected</th><td>{}</td></tr>\
         <tr><th>operations</th><td>{}</td><th>ok / fail / info</th><td>{} / {} / {}</td><th>concurrency, rate</th><td>{}, {}/s</td></tr>\
         <tr><th>ok while faulty</th><td>{} of {}</td><th>ok while quiet</th><td>{} of {}</td><th></th><td></td></tr></table>",
        config.replicas,
        config.time_limit.as_secs(),
        config.seed,
        config.workloads,
        config.nemesis,
        summary.faults,
        summary.ops,
        summary.ok,
        summary.fail,
        summary.info,
        config.concurrency,
        config.rate,
        summary.availability.faulty_ok,
        summary.availability.faulty_total,
        summary.availability.quiet_ok,
        summary.availability.quiet_total,
    );
    html.push_str("<h2>Latency over time</h2><p>Each dot is one operation at its invocation time; green ok, red fail, orange info (unknown). Shaded: nemesis faults.</p>");
    html.push_str(&latency_plot(ops, end));
    html.push_str("<h2>Throughput (completions per second)</h2>");
    html.push_str(&throughput_plot(ops, end));
    html.push_str("<h2>Checkers</h2><table><tr><th>checker</th><th>verdict</th><th>checked</th><th>violations</th><th>details</th></tr>");
    for c in &summary.checks {
        let (v, col) = match c.valid {
            Valid::True => ("valid", "#1a9641"),
            Valid::False => ("INVALID", "#d7191c"),
            Valid::Unknown => ("unknown", "#fdae61"),
        };
        let _ = write!(
            html,
            r##"<tr><td>{}</td><td style="color:{col};font-weight:bold">{v}</td><td>{}</td><td>{}</td><td>{}</td></tr>"##,
            esc(&c.name),
            c.checked,
            c.violations,
            c.details.iter().map(|d| esc(d)).collect::<Vec<_>>().join("<br>")
        );
    }
    html.push_str("</table><h2>Operations</h2><table><tr><th>workload</th><th>f</th><th>ok</th><th>fail</th><th>info</th></tr>");
    let mut counts: BTreeMap<(String, String), [u64; 3]> = BTreeMap::new();
    for p in pairs(ops).iter().filter(|p| p.invoke.workload != "nemesis") {
        let e = counts.entry((p.invoke.workload.clone(), p.invoke.f.clone())).or_default();
        match p.kind() {
            Type::Ok => e[0] += 1,
            Type::Fail => e[1] += 1,
            _ => e[2] += 1,
        }
    }
    for ((w, f), [ok, fail, info]) in counts {
        let _ = write!(
            html,
            "<tr><td>{}</td><td>{}</td><td>{ok}</td><td>{fail}</td><td>{info}</td></tr>",
            esc(&w),
            esc(&f)
        );
    }
    html.push_str("</table><h2>Faults</h2><table><tr><th>from</th><th>to</th><th>fault</th></tr>");
    for (s, e, what) in nemesis_intervals(ops, end) {
        let _ = write!(
            html,
            "<tr><td>{}.{:03} s</td><td>{}.{:03} s</td><td>{}</td></tr>",
            s / 1_000_000,
            s / 1_000 % 1_000,
            e / 1_000_000,
            e / 1_000 % 1_000,
            esc(&what)
        );
    }
    html.push_str("</table><p>Files: <a href=\"history.jsonl\">history.jsonl</a>, <a href=\"results.json\">results.json</a>, <a href=\"final.json\">final.json</a>, replica-*/server.log</p></body></html>\n");
    std::fs::write(path, html)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The log scale is monotonic and spans the axis.
    #[test]
    fn latency_axis_is_monotonic() {
        let mut last = u64::MAX;
        for us in [1u64, 128, 1_000, 10_000, 100_000, 1_000_000, 20_000_000] {
            let y = lat_y(us);
            assert!(y <= last, "{us}µs at {y}, above {last}");
            last = y;
        }
        assert_eq!(lat_y(1), TOP + H);
        assert_eq!(lat_y(u64::MAX), TOP);
    }
}
