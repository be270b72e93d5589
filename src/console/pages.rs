//! The console's pages: what each view reads through the API, and its HTML (maud templates, so
//! every value is escaped and every page is type-checked).

use maud::{html, Markup, DOCTYPE};
use sha2::{Digest, Sha256};
use tonic::Request;

use crate::api::pb;
use crate::scheduler::windows::utc_label;
use crate::scheduler::UnixMillis;

/// The console's one stylesheet, compiled into the binary.
pub const CSS: &[u8] = include_bytes!("console.css");
/// The console's one script (it keeps a page current), compiled into the binary.
pub const JS: &[u8] = include_bytes!("console.js");

/// Most rows a list on one page shows (the API's page size); a longer list says so.
pub const CONSOLE_ROWS_MAX: u32 = 100;

/// What every signed-in page shows around its content.
pub struct Frame {
    pub who: String,
    pub replica_id: u64,
    /// The page's live stream (empty: the page is not live).
    pub live: String,
    /// How far the answering replica had applied the log before the page was read.
    pub as_of: Option<u64>,
    /// Random for each page drawn: its forms' request ids derive from it.
    pub nonce: [u8; 16],
}

impl Frame {
    /// The request id of this page's form that acts on `what`: the same each time the form is
    /// sent, so a resent form acts once; another drawing of the page gives another.
    pub fn request_id(&self, what: &str) -> String {
        let mut digest = Sha256::new();
        digest.update(self.nonce);
        digest.update(what.as_bytes());
        let digest = digest.finalize();
        format!("console-{}", crate::raft::replica::hex(&digest[..12]))
    }
}

pub(super) fn page(title: &str, frame: Option<&Frame>, content: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · Berth" }
                link rel="stylesheet" href="/console.css";
                @if frame.is_some() {
                    script src="/console.js" defer {}
                }
            }
            body data-live=[frame.map(|f| f.live.as_str()).filter(|l| !l.is_empty())] {
                a.skip href="#content" { "Skip to the content" }
                header {
                    a.brand href="/" { "Berth" }
                    @if frame.is_some() {
                        nav aria-label="Console" {
                            a href="/" { "Home" }
                            a href="/activity" { "Events" }
                        }
                    }
                    @if let Some(frame) = frame {
                        span.who { "Signed in as " (frame.who) }
                        form method="post" action="/sign-out" {
                            button type="submit" { "Sign out" }
                        }
                    }
                }
                main #content tabindex="-1" {
                    h1 { (title) }
                    (content)
                }
                @if let Some(frame) = frame {
                    footer {
                        "Answered by replica " (frame.replica_id) " from its state as of log index "
                        (opt(frame.as_of)) " or later; "
                        @if frame.live.is_empty() { "reload the page to ask again." }
                        @else { "the page follows changes as they apply." }
                    }
                }
            }
        }
    }
}

pub fn sign_in(problem: Option<&str>) -> Markup {
    page(
        "Sign in",
        None,
        html! {
            @if let Some(problem) = problem {
                p.problem role="alert" { (problem) }
            }
            form method="post" action="/sign-in" {
                label for="token" { "Token (the admin token, or a tenant token)" }
                input #token type="password" name="token" autocomplete="off" required autofocus;
                button type="submit" { "Sign in" }
            }
            p.note {
                "The token is kept by this replica for your session only; it is never put in a \
                 page, a URL or your browser's storage."
            }
        },
    )
}

/// Asks the person who opened a one-time link whether to sign in as `who`.
pub fn confirm_link(code: &str, who: &str) -> Markup {
    page(
        "Sign in",
        None,
        html! {
            p { "This link signs this browser in to Berth as " strong { (who) } "." }
            form method="post" action="/sign-in/link/open" {
                input type="hidden" name="code" value=(code);
                button type="submit" autofocus { "Sign in as " (who) }
            }
            p.note {
                "Only if you ran `berth console` yourself: a link someone else sent signs you in \
                 as them. It works once, within a minute of being made."
            }
        },
    )
}

pub fn problem(message: &str) -> Markup {
    page(
        "Not here",
        None,
        html! { p.problem role="alert" { (message) } p { a href="/" { "Back to the console" } } },
    )
}

pub(super) fn authed<T>(token: &str, message: T) -> Request<T> {
    let mut request = Request::new(message);
    if let Ok(value) = format!("Bearer {token}").parse() {
        request.metadata_mut().insert("authorization", value);
    }
    request
}

/// Pages read this replica's state, as far as it has applied the log (and say how far): no
/// leader round per page, so many tabs refreshing cost the cluster little. A tenant's read
/// still needs the replica to vouch for its token (`ReadOptions::stale_ok`).
pub(super) fn this_replica() -> Option<pb::ReadOptions> {
    Some(pb::ReadOptions { stale_ok: true })
}

pub(super) fn rows_page() -> Option<pb::Page> {
    Some(pb::Page { after: String::new(), limit: CONSOLE_ROWS_MAX })
}

/// `used / limit`, or `used / –` without a limit.
pub(super) fn of(used: u64, limit: Option<u64>) -> Markup {
    html! {
        (used) " / "
        @match limit { Some(limit) => (limit), None => "–" }
    }
}

pub(super) fn opt(value: Option<u64>) -> Markup {
    html! { @match value { Some(v) => (v), None => "–" } }
}

/// Says when a list was cut at a page's length.
pub(super) fn more(shown: usize) -> Markup {
    html! {
        @if u32::try_from(shown).is_ok_and(|n| n >= CONSOLE_ROWS_MAX) {
            p.note { "The first " (CONSOLE_ROWS_MAX) " are shown; the CLI lists the rest." }
        }
    }
}

/// A log time as people read it, in UTC to the second.
pub(super) fn utc(ms: u64) -> String {
    let label = utc_label(UnixMillis(ms));
    match label.split_once('.') {
        Some((seconds, _)) => format!("{} UTC", seconds.replace('T', " ")),
        None => label,
    }
}

/// Time left until `until_ms` by this replica's clock (`now_ms`), counted down in the tab by
/// the console's script (from when the page was drawn, so the browser's clock does not matter).
pub(super) fn countdown(until_ms: u64, now_ms: u64) -> Markup {
    let left = until_ms.saturating_sub(now_ms);
    html! {
        span.countdown data-left-ms=(left) title={ "at " (utc(until_ms)) } { (span_of(left)) }
    }
}

/// A span of time, to the second: "4 s", "2 min 5 s", "3 h 20 min", "2 d 4 h"; "0 s" once past.
pub(super) fn span_of(ms: u64) -> String {
    let s = ms.div_ceil(1_000);
    match s {
        0..60 => format!("{s} s"),
        60..3_600 => format!("{} min {} s", s / 60, s % 60),
        3_600..86_400 => format!("{} h {} min", s / 3_600, s / 60 % 60),
        _ => format!("{} d {} h", s / 86_400, s / 3_600 % 24),
    }
}
