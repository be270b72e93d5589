//! Scraping a replica's metrics port in tests: one HTTP/1.1 request, and a strict
//! OpenMetrics parser that fails on anything a scraper would refuse.

use std::collections::BTreeMap;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::Cluster;

/// One HTTP/1.1 request to `addr`; the status code, the content type and the body.
pub async fn http(addr: &str, method: &str, path: &str) -> (u16, String, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("metrics port answers");
    let request = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("request sent");
    let mut response = String::new();
    stream.read_to_string(&mut response).await.expect("response read");
    let (head, body) = response.split_once("\r\n\r\n").expect("headers end");
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).expect("a status line");
    let content_type = head
        .lines()
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-type: ").map(str::to_owned))
        .unwrap_or_default();
    (status, content_type, body.to_owned())
}

/// A sample: its metric name and labels.
pub type Key = (String, BTreeMap<String, String>);

/// Parses OpenMetrics text strictly enough to catch what a scraper would refuse: it must end
/// in `# EOF`; every sample must belong to the family declared last (by `# TYPE`), with a
/// suffix its type allows, well-formed labels and a numeric value; a family is declared once;
/// a histogram's buckets are cumulative and end in `le="+Inf"` equal to its `_count`.
pub fn parse_openmetrics(text: &str) -> BTreeMap<Key, f64> {
    let body = text.strip_suffix("# EOF\n").expect("the exposition ends in # EOF");
    let mut samples = BTreeMap::new();
    let mut declared = std::collections::BTreeSet::new();
    let mut family: Option<(String, String)> = None;
    for line in body.lines() {
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            let (kind, name) = (parts.next().expect("kind"), parts.next().expect("name"));
            match kind {
                "HELP" | "UNIT" => {}
                "TYPE" => {
                    let kind = parts.next().expect("a type");
                    assert!(
                        ["counter", "gauge", "histogram", "info", "unknown"].contains(&kind),
                        "type {kind}"
                    );
                    assert!(declared.insert(name.to_owned()), "{name} declared twice");
                    family = Some((name.to_owned(), kind.to_owned()));
                }
                other => panic!("unknown descriptor {other} in {line:?}"),
            }
            continue;
        }
        let (name, labels, value) = parse_sample(line);
        let (family_name, kind) = family.as_ref().expect("a sample after its # TYPE");
        let suffix = name.strip_prefix(family_name.as_str()).expect("sample of its family");
        let allowed: &[&str] = match kind.as_str() {
            "counter" => &["_total", "_created"],
            "gauge" => &[""],
            "histogram" => &["_bucket", "_count", "_sum", "_created"],
            "info" => &["_info"],
            _ => &[""],
        };
        assert!(allowed.contains(&suffix), "{name} in a {kind} family {family_name}");
        assert!(samples.insert((name.clone(), labels), value).is_none(), "{line} repeated");
    }
    // Histograms: cumulative buckets ending in +Inf, equal to the count.
    let mut buckets: BTreeMap<Key, Vec<(f64, f64)>> = BTreeMap::new();
    for ((name, labels), value) in &samples {
        if let Some(base) = name.strip_suffix("_bucket") {
            let mut series = labels.clone();
            let le = series.remove("le").expect("a bucket has le");
            let le = if le == "+Inf" { f64::INFINITY } else { le.parse().expect("le is a number") };
            buckets.entry((base.to_owned(), series)).or_default().push((le, *value));
        }
    }
    for ((base, series), mut bs) in buckets {
        bs.sort_by(|a, b| a.0.total_cmp(&b.0));
        assert!(bs.windows(2).all(|w| w[0].1 <= w[1].1), "{base} buckets not cumulative");
        let last = bs.last().expect("buckets");
        assert!(last.0.is_infinite(), "{base} has no +Inf bucket");
        let count = samples[&(format!("{base}_count"), series)];
        assert_eq!(last.1, count, "{base}: +Inf bucket differs from _count");
    }
    samples
}

/// `name{k="v",...} value`.
pub fn parse_sample(line: &str) -> (String, BTreeMap<String, String>, f64) {
    let name_end = line.find(['{', ' ']).expect("a value");
    let name = &line[..name_end];
    assert!(
        !name.is_empty()
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
            && !name.starts_with(|c: char| c.is_ascii_digit()),
        "metric name {name:?}"
    );
    let mut labels = BTreeMap::new();
    let bytes = line.as_bytes();
    let mut at = name_end;
    if line[at..].starts_with("{}") {
        at += 2;
    } else if bytes[at] == b'{' {
        at += 1;
        loop {
            let eq = at + line[at..].find('=').expect("label =");
            let key = &line[at..eq];
            assert!(
                !key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
                "label {key:?} in {line:?}"
            );
            assert_eq!(bytes[eq + 1], b'"', "label value quoted in {line:?}");
            at = eq + 2;
            let mut value = String::new();
            loop {
                let c = line[at..].chars().next().expect("label value ends");
                at += c.len_utf8();
                match c {
                    '"' => break,
                    '\\' => {
                        let escaped = bytes[at];
                        at += 1;
                        value.push(match escaped {
                            b'n' => '\n',
                            b'"' => '"',
                            b'\\' => '\\',
                            other => panic!("bad escape \\{} in {line:?}", other as char),
                        });
                    }
                    c => value.push(c),
                }
            }
            assert!(labels.insert(key.to_owned(), value).is_none(), "label {key} twice");
            at += 1;
            match bytes[at - 1] {
                b',' => continue,
                b'}' => break,
                other => panic!("{:?} after a label in {line:?}", other as char),
            }
        }
    }
    let value = line[at..].strip_prefix(' ').expect("a space before the value");
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().unwrap_or_else(|_| panic!("value {v:?} in {line:?}")),
    };
    (name.to_owned(), labels, value)
}

/// One scrape of replica `id`, parsed.
pub async fn scrape(cluster: &Cluster, id: u64) -> BTreeMap<Key, f64> {
    let addr = cluster.members[&id].metrics_addr.clone().expect("metrics served");
    let (status, content_type, body) = http(&addr, "GET", "/metrics").await;
    assert_eq!(status, 200, "{body}");
    assert!(content_type.starts_with("application/openmetrics-text"), "{content_type}");
    parse_openmetrics(&body)
}

/// The value of the sample `name` with exactly `labels`, if there is one.
pub fn value(samples: &BTreeMap<Key, f64>, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let labels = labels.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
    samples.get(&(name.to_owned(), labels)).copied()
}

pub fn requests(samples: &BTreeMap<Key, f64>, tenant: &str, rpc: &str) -> Option<f64> {
    value(samples, "berth_api_requests_total", &[("tenant_id", tenant), ("rpc", rpc)])
}

pub fn errors(
    samples: &BTreeMap<Key, f64>,
    tenant: &str,
    rpc: &str,
    code: &str,
    reason: &str,
) -> Option<f64> {
    let labels = [("tenant_id", tenant), ("rpc", rpc), ("code", code), ("reason", reason)];
    value(samples, "berth_api_errors_total", &labels)
}
