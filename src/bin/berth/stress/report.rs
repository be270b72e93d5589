//! `report.html`: one self-contained page (no scripts, no network) with each profile's
//! verdict, checks and figures, and its plots drawn as inline SVG: calls per second per tenant
//! and the p95 latency over time, and for `scaling` the throughput and latency across tenant
//! counts. Coordinates are integer arithmetic, like everything else in Berth.

use std::fmt::Write;

use super::steady::FaultSpan;
use super::{Outcome, Results, ScalingPoint};

const WIDTH: u64 = 720;
const HEIGHT: u64 = 260;
const LEFT: u64 = 70;
const RIGHT: u64 = 170;
const TOP: u64 = 30;
const BOTTOM: u64 = 40;
const COLORS: [&str; 10] = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
    "#bcbd22", "#17becf",
];

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// A round upper bound for an axis: 1, 2 or 5 times a power of ten, at least `max`.
fn nice(max: u64) -> u64 {
    let mut step = 1u64;
    loop {
        for m in [1, 2, 5] {
            if step.saturating_mul(m) >= max {
                return step.saturating_mul(m).max(1);
            }
        }
        step = step.saturating_mul(10);
    }
}

/// A line chart of `lines` (name → (x, y) points) with x in milliseconds since the run began,
/// drawn from the first x, with `faults` shaded behind them.
fn chart(
    title: &str,
    y_unit: &str,
    lines: &[(&str, &[(u64, u64)])],
    faults: &[FaultSpan],
) -> String {
    let points = lines.iter().flat_map(|(_, p)| p.iter());
    let (x0, x1) = points.clone().fold((u64::MAX, 0), |(lo, hi), (x, _)| (lo.min(*x), hi.max(*x)));
    let y1 = nice(points.map(|(_, y)| *y).max().unwrap_or(0));
    if x0 > x1 {
        return String::new();
    }
    let (plot_w, plot_h) = (WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM);
    let span = (x1 - x0).max(1);
    let px = |x: u64| LEFT + (x - x0) * plot_w / span;
    let py = |y: u64| TOP + plot_h - y.min(y1) * plot_h / y1;
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" height="{HEIGHT}" role="img"><title>{t}</title><text x="{LEFT}" y="18" class="title">{t}</text>"#,
        t = escape(title)
    );
    for k in 0..=4u64 {
        let y = y1 * k / 4;
        let _ = write!(
            svg,
            r#"<line x1="{LEFT}" x2="{}" y1="{py}" y2="{py}" class="grid"/><text x="{}" y="{}" class="axis" text-anchor="end">{y}</text>"#,
            LEFT + plot_w,
            LEFT - 6,
            py(y) + 4,
            py = py(y)
        );
    }
    for k in 0..=4u64 {
        let x = x0 + span * k / 4;
        let label = if span < 10_000 {
            format!("{}.{} s", (x - x0) / 1000, (x - x0) % 1000 / 100)
        } else {
            format!("{} s", (x - x0) / 1000)
        };
        let _ = write!(
            svg,
            r#"<text x="{}" y="{}" class="axis" text-anchor="middle">{label}</text>"#,
            px(x),
            TOP + plot_h + 18
        );
    }
    let _ = write!(
        svg,
        r#"<text x="14" y="{}" class="axis" transform="rotate(-90 14 {})" text-anchor="middle">{}</text>"#,
        TOP + plot_h / 2,
        TOP + plot_h / 2,
        escape(y_unit)
    );
    for fault in faults.iter().filter(|f| f.to_ms >= x0 && f.from_ms <= x1) {
        let (a, b) = (px(fault.from_ms.max(x0)), px(fault.to_ms.min(x1)));
        let _ = write!(
            svg,
            r#"<rect x="{a}" y="{TOP}" width="{}" height="{plot_h}" class="fault"><title>{n}</title></rect><text x="{}" y="{}" class="axis">{n}</text>"#,
            (b - a).max(2),
            a + 2,
            TOP + 10,
            n = escape(&fault.name)
        );
    }
    for (i, (name, points)) in lines.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let path: Vec<String> =
            points.iter().map(|(x, y)| format!("{},{}", px(*x), py(*y))).collect();
        let _ = write!(
            svg,
            r#"<polyline points="{}" fill="none" stroke="{color}" stroke-width="1.5"/>"#,
            path.join(" ")
        );
        let ly = TOP + 14 * u64::try_from(i).unwrap_or(0);
        let _ = write!(
            svg,
            r#"<rect x="{}" y="{}" width="10" height="3" fill="{color}"/><text x="{}" y="{}" class="legend">{}</text>"#,
            WIDTH - RIGHT + 12,
            ly,
            WIDTH - RIGHT + 26,
            ly + 4,
            escape(name)
        );
    }
    svg.push_str("</svg>");
    svg
}

/// The scaling curve: one bar per tenant count (throughput), with its p50 and p99 latency.
fn curve(points: &[ScalingPoint]) -> String {
    if points.is_empty() {
        return String::new();
    }
    let (plot_w, plot_h) = (WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM);
    let y1 = nice(points.iter().map(|p| p.per_second).max().unwrap_or(0));
    let n = points.len() as u64;
    let slot = plot_w / n;
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" height="{HEIGHT}" role="img"><title>Throughput across tenant counts</title><text x="{LEFT}" y="18" class="title">Place+Release per second, by tenant count (same clients)</text>"#
    );
    for k in 0..=4u64 {
        let y = y1 * k / 4;
        let py = TOP + plot_h - y * plot_h / y1;
        let _ = write!(
            svg,
            r#"<line x1="{LEFT}" x2="{}" y1="{py}" y2="{py}" class="grid"/><text x="{}" y="{}" class="axis" text-anchor="end">{y}</text>"#,
            LEFT + plot_w,
            LEFT - 6,
            py + 4
        );
    }
    for (i, p) in points.iter().enumerate() {
        let x = LEFT + slot * u64::try_from(i).unwrap_or(0) + slot / 5;
        let h = p.per_second.min(y1) * plot_h / y1;
        let _ = write!(
            svg,
            r#"<rect x="{x}" y="{}" width="{}" height="{h}" fill="{}"/><text x="{}" y="{}" class="axis" text-anchor="middle">{} tenants</text><text x="{}" y="{}" class="legend" text-anchor="middle">{}/s</text>"#,
            TOP + plot_h - h,
            slot * 3 / 5,
            COLORS[0],
            x + slot * 3 / 10,
            TOP + plot_h + 18,
            p.tenants,
            x + slot * 3 / 10,
            TOP + plot_h - h - 4,
            p.per_second
        );
    }
    svg.push_str("</svg>");
    svg
}

fn ms(us: u64) -> String {
    format!("{}.{:03}", us / 1000, us % 1000)
}

/// The charts a profile's series make: each series named `PREFIX` + line is drawn in the
/// chart of its prefix, in this order.
const CHARTS: [(&str, &str, &str); 9] = [
    ("calls/s: ", "Calls per second, by tenant", "calls/s"),
    ("p95 latency µs: ", "p95 latency over time (calls answered OK and not)", "µs"),
    ("p99 latency µs: ", "p99 latency over time (calls answered OK and not)", "µs"),
    (
        "allocated mcpu: ",
        "Allocated capacity: as the cluster counts it, as the client holds it",
        "mcpu",
    ),
    ("RSS KiB: ", "Resident memory of each replica", "KiB"),
    ("open files: ", "Open files of each replica", "files"),
    ("log KiB: ", "Raft log size of each replica", "KiB"),
    ("snapshot KiB: ", "Snapshot size of each replica", "KiB"),
    (
        "snapshot's state KiB: ",
        "The replicated state in each replica's snapshot (without the usage changes)",
        "KiB",
    ),
];

fn profile(html: &mut String, o: &Outcome) {
    let verdict = if o.passed { "pass" } else { "fail" };
    let _ = write!(
        html,
        r#"<section><h2>{} <span class="{verdict}">{}</span></h2><p class="muted">{}.{:03} s</p><table><tr><th></th><th>check</th><th>what it saw</th></tr>"#,
        o.profile.name(),
        verdict.to_uppercase(),
        o.seconds_ms / 1000,
        o.seconds_ms % 1000
    );
    for c in &o.checks {
        let _ = write!(
            html,
            r#"<tr><td class="{}">{}</td><td>{}</td><td>{}</td></tr>"#,
            if c.passed { "pass" } else { "fail" },
            if c.passed { "ok" } else { "FAIL" },
            escape(&c.name),
            escape(&c.detail)
        );
    }
    html.push_str("</table><table class=\"figures\">");
    for f in &o.figures {
        let _ = write!(
            html,
            "<tr><td>{}</td><td class=\"num\">{} {}</td></tr>",
            escape(&f.name),
            f.value,
            f.unit
        );
    }
    html.push_str("</table>");
    if !o.curve.is_empty() {
        html.push_str(&curve(&o.curve));
        html.push_str("<p class=\"muted\">Latency of every Place and Release at each level.</p><table><tr><th>tenants</th><th>place+release/s</th><th>p50 ms</th><th>p95 ms</th><th>p99 ms</th><th>errors</th></tr>");
        for p in &o.curve {
            let _ = write!(
                html,
                "<tr><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td></tr>",
                p.tenants,
                p.per_second,
                ms(p.p50_us),
                ms(p.p95_us),
                ms(p.p99_us),
                p.errors
            );
        }
        html.push_str("</table>");
    }
    let by_kind = |prefix: &str| -> Vec<(&str, &[(u64, u64)])> {
        o.series
            .iter()
            .filter(|(name, _)| name.starts_with(prefix))
            .map(|(name, points)| (name.strip_prefix(prefix).unwrap_or(name), points.as_slice()))
            .collect()
    };
    for (prefix, title, unit) in CHARTS {
        let lines = by_kind(prefix);
        if !lines.is_empty() {
            html.push_str(&chart(title, unit, &lines, &o.faults));
        }
    }
    html.push_str("</section>");
}

pub fn html(results: &Results) -> String {
    let mut html = String::new();
    let _ = write!(
        html,
        r#"<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Berth stress run {run}</title><style>
body{{font:14px/1.4 system-ui,sans-serif;margin:2em auto;max-width:760px;color:#222}}
h1{{font-size:1.5em}} h2{{font-size:1.2em;margin-top:2em;border-top:1px solid #ddd;padding-top:1em}}
table{{border-collapse:collapse;margin:.5em 0}} td,th{{padding:2px 8px;text-align:left;vertical-align:top}}
th{{border-bottom:1px solid #ccc}} .num{{text-align:right;font-variant-numeric:tabular-nums}}
.pass{{color:#1a7f37;font-weight:600}} .fail{{color:#cf222e;font-weight:600}} .muted{{color:#666}}
svg{{display:block;margin:1em 0}} .grid{{stroke:#eee}} .fault{{fill:#f4c7c3;opacity:.6}} .axis{{font-size:11px;fill:#555}}
.legend{{font-size:11px;fill:#333}} .title{{font-size:13px;font-weight:600;fill:#222}}
</style></head><body><h1>Berth stress run {run} <span class="{v}">{V}</span></h1>
<p class="muted">started {started}; {mode} mode; every figure measured by the client through the public API.</p>"#,
        run = escape(&results.run),
        v = if results.passed { "pass" } else { "fail" },
        V = if results.passed { "PASS" } else { "FAIL" },
        started = escape(&results.started),
        mode = if results.short { "short" } else { "full" },
    );
    html.push_str("<table><tr><th>profile</th><th>verdict</th><th>seconds</th></tr>");
    for o in &results.profiles {
        let _ = write!(
            html,
            "<tr><td>{}</td><td class=\"{v}\">{V}</td><td class=\"num\">{}</td></tr>",
            o.profile.name(),
            o.seconds_ms / 1000,
            v = if o.passed { "pass" } else { "fail" },
            V = if o.passed { "pass" } else { "FAIL" },
        );
    }
    html.push_str("</table>");
    if let Some(m) = &results.metrics {
        let _ = write!(
            html,
            "<p>Metrics validation: <span class=\"{}\">{}</span> — {}</p>",
            if m.passed { "pass" } else { "fail" },
            if m.passed { "pass" } else { "FAIL" },
            escape(&m.detail)
        );
    }
    for o in &results.profiles {
        profile(&mut html, o);
    }
    html.push_str("</body></html>\n");
    html
}
