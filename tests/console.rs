//! The web console over HTTP, as a browser reaches it: over the cluster's TLS, signed in with a
//! token exchanged for a session cookie, scoped to the token's tenant, with its security headers
//! and its origin check on every POST.

mod common;

use std::sync::Arc;

use berth::api::pb;
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One HTTP/1.1 exchange's answer.
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// The session cookie this answer sets (`name=value`), if any.
    fn session(&self) -> Option<String> {
        let cookie = self.header("set-cookie")?;
        let pair = cookie.split(';').next()?.trim();
        pair.strip_prefix("berth_console=").filter(|id| !id.is_empty()).map(|_| pair.to_owned())
    }
}

/// A browser of one replica's console: TLS trusting the cluster's CA, one request per connection.
struct Browser {
    addr: String,
    tls: tokio_rustls::TlsConnector,
}

impl Browser {
    fn of(cluster: &Cluster, id: u64) -> Browser {
        let addr = cluster.members[&id].console_addr.clone().expect("console served");
        let roots = berth::tls::roots(cluster.authority.cert_pem()).expect("CA roots");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Browser { addr, tls: tokio_rustls::TlsConnector::from(Arc::new(config)) }
    }

    fn origin(&self) -> String {
        format!("https://{}", self.addr)
    }

    async fn send(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Answer {
        let tcp = tokio::net::TcpStream::connect(&self.addr).await.expect("console answers");
        let name = rustls::pki_types::ServerName::try_from("127.0.0.1").expect("a name");
        let mut stream = self.tls.connect(name, tcp).await.expect("TLS handshake");
        let mut request = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Length: {}\r\n",
            self.addr,
            body.len()
        );
        for (name, value) in headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        request.push_str("\r\n");
        request.push_str(body);
        stream.write_all(request.as_bytes()).await.expect("request sent");
        let mut response = Vec::new();
        // A server may close TLS without close_notify after `Connection: close`; what was read
        // before counts.
        let _ = stream.read_to_end(&mut response).await;
        let response = String::from_utf8(response).expect("UTF-8");
        let (head, body) = response.split_once("\r\n\r\n").expect("headers end");
        let mut lines = head.lines();
        let status = lines.next().and_then(|l| l.split(' ').nth(1)).and_then(|s| s.parse().ok());
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
            .collect();
        Answer { status: status.expect("a status line"), headers, body: body.to_owned() }
    }

    /// The status a live stream's request gets, when it is refused.
    async fn live_status(&self, path: &str, session: &str) -> u16 {
        self.get(path, session).await.status
    }

    async fn get(&self, path: &str, session: &str) -> Answer {
        self.send("GET", path, &[("Cookie", session)], "").await
    }

    async fn sign_in(&self, token: &str) -> Answer {
        let origin = self.origin();
        let body = format!("token={token}");
        let form = ("Content-Type", "application/x-www-form-urlencoded");
        self.send("POST", "/sign-in", &[("Origin", &origin), form], &body).await
    }

    /// Signs in and returns the session cookie.
    async fn session(&self, token: &str) -> String {
        let answer = self.sign_in(token).await;
        assert_eq!(answer.status, 303, "signed in: {}", answer.body);
        answer.session().expect("a session cookie")
    }
}

/// A live stream being read, as a tab's EventSource reads it.
struct Live {
    stream: tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    text: String,
    /// How much of `text` the last `until` consumed.
    read: usize,
}

impl Live {
    /// Reads until `pattern` appears after what was consumed; returns the text from there.
    async fn until(&mut self, pattern: &str) -> String {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            if let Some(at) = self.text[self.read..].find(pattern) {
                let from = self.read + at;
                self.read = from + pattern.len();
                return self.text[from..].to_owned();
            }
            let mut buf = [0u8; 4096];
            let n = tokio::time::timeout_at(deadline, self.stream.read(&mut buf))
                .await
                .unwrap_or_else(|_| panic!("no {pattern:?} in time; read: {}", self.text))
                .expect("the stream reads");
            assert!(n > 0, "the stream ended before {pattern:?}; read: {}", self.text);
            self.text.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    }

    /// The id of the next `changed` note.
    async fn changed_id(&mut self) -> u64 {
        let note = self.until("id: ").await;
        assert!(note.contains("event: changed"), "{note}");
        note["id: ".len()..].split('\n').next().and_then(|n| n.trim().parse().ok()).expect("an id")
    }
}

impl Browser {
    async fn live(&self, path: &str, session: &str, last_event_id: Option<u64>) -> Live {
        let tcp = tokio::net::TcpStream::connect(&self.addr).await.expect("console answers");
        let name = rustls::pki_types::ServerName::try_from("127.0.0.1").expect("a name");
        let mut stream = self.tls.connect(name, tcp).await.expect("TLS handshake");
        let resume = last_event_id.map(|id| format!("Last-Event-ID: {id}\r\n")).unwrap_or_default();
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {}\r\nCookie: {session}\r\nAccept: text/event-stream\r\n{resume}\r\n",
            self.addr
        );
        stream.write_all(request.as_bytes()).await.expect("request sent");
        let mut live = Live { stream, text: String::new(), read: 0 };
        let head = live.until("\r\n\r\n").await;
        assert!(live.text.starts_with("HTTP/1.1 200"), "{head}");
        assert!(live.text.to_ascii_lowercase().contains("content-type: text/event-stream"));
        live.until(": live").await;
        live
    }
}

/// A cluster with tenants `a` and `b`, each holding one placement, and `a`'s token.
async fn two_tenants() -> (Cluster, Clients, String) {
    let (cluster, mut c) = setup().await;
    create_tenant(&mut c, "a").await;
    create_tenant(&mut c, "b").await;
    register(&mut c, "w1", 8_000).await;
    for tenant in ["a", "b"] {
        let request = place(tenant, spec(&format!("{tenant}-web"), 500));
        c.scheduler.place(authed(ADMIN_TOKEN, request)).await.expect("placed");
    }
    let token = issue_token(&mut c, "a").await;
    (cluster, c, token)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_signs_in_with_a_cookie_and_sees_only_its_own_tenant() {
    let (cluster, _c, token) = two_tenants().await;
    let browser = Browser::of(&cluster, cluster.leader().await);

    let signed_in = browser.sign_in(&token).await;
    assert_eq!(signed_in.status, 303);
    let cookie = signed_in.header("set-cookie").expect("a cookie").to_owned();
    for flag in ["HttpOnly", "SameSite=Strict", "Secure", "Path=/"] {
        assert!(cookie.contains(flag), "{flag} in {cookie}");
    }
    assert!(!cookie.contains(&token), "the token is not the cookie");
    let session = signed_in.session().expect("a session");

    let home = browser.get("/", &session).await;
    assert_eq!((home.status, home.header("location")), (303, Some("/tenants/a")));
    let own = browser.get("/tenants/a", &session).await;
    assert_eq!(own.status, 200, "{}", own.body);
    assert!(own.body.contains("a-web"), "its placement is listed");
    assert!(!own.body.contains("b-web"), "another tenant's placement is not");
    assert!(!own.body.contains(&token), "the token is never in a page");
    let csp = own.header("content-security-policy").expect("a CSP");
    assert!(csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"), "{csp}");
    // The live stream and the page's refetch need to connect back; under `no-referrer`,
    // Chromium would send a form's Origin as `null` (both found by the browser test).
    assert!(csp.contains("connect-src 'self'"), "{csp}");
    assert_eq!(own.header("referrer-policy"), Some("same-origin"));
    assert_eq!(own.header("x-frame-options"), Some("DENY"));
    assert_eq!(own.header("cache-control"), Some("no-store"));

    let other = browser.get("/tenants/b", &session).await;
    assert_eq!(other.status, 404);
    assert!(!other.body.contains("b-web"));
    let missing = browser.get("/tenants/nobody", &session).await;
    assert_eq!(missing.status, 404, "a missing tenant looks like another's");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_sees_replicas_workers_and_every_tenant() {
    let (cluster, _c, _token) = two_tenants().await;
    let leader = cluster.leader().await;
    let follower = cluster.running().into_iter().find(|id| *id != leader).expect("a follower");
    let browser = Browser::of(&cluster, follower);
    let session = browser.session(ADMIN_TOKEN).await;

    // The follower answers from its own state, which may trail the writes above by a moment:
    // the page says how far it had got.
    let applied = converged(&cluster).await[0].last_applied_index.expect("applied");
    let home = browser.get("/", &session).await;
    assert_eq!(home.status, 200, "{}", home.body);
    assert!(home.body.contains(&format!("Leader: replica {leader}")), "{}", home.body);
    assert!(home.body.contains("w1"), "the worker is listed");
    assert!(home.body.contains("href=\"/tenants/a\"") && home.body.contains("href=\"/tenants/b\""));
    let footer = format!("Answered by replica {follower} from its state as of log index ");
    let as_of = home.body.split(&footer).nth(1).and_then(|r| r.split(' ').next());
    let as_of: u64 = as_of.and_then(|n| n.parse().ok()).expect("the page says how far");
    assert!(as_of >= applied, "as of {as_of}, applied {applied}");
    let b = browser.get("/tenants/b", &session).await;
    assert_eq!(b.status, 200);
    assert!(b.body.contains("b-web") && !b.body.contains("a-web"));
    let css = browser.get("/console.css", "").await;
    assert_eq!((css.status, css.header("content-type")), (200, Some("text/css; charset=utf-8")));
    let js = browser.get("/console.js", "").await;
    assert_eq!(js.header("content-type"), Some("text/javascript; charset=utf-8"));
    assert!(js.body.contains("EventSource"), "the script that keeps a page live");
    let form = browser.get("/sign-in", "").await;
    assert_eq!(form.status, 200);
    assert!(form.body.contains("type=\"password\"") && form.body.contains("autocomplete=\"off\""));
    let signed_in = browser.get("/sign-in", &session).await;
    assert_eq!((signed_in.status, signed_in.header("location")), (303, Some("/")));
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn posts_from_another_origin_or_none_change_nothing() {
    let (cluster, _c, token) = two_tenants().await;
    let browser = Browser::of(&cluster, cluster.leader().await);
    let form = ("Content-Type", "application/x-www-form-urlencoded");
    let body = format!("token={token}");
    for origin in [Some("https://evil.example"), Some("http://127.0.0.1:1"), None] {
        let headers: Vec<(&str, &str)> =
            origin.map(|o| ("Origin", o)).into_iter().chain([form]).collect();
        let answer = browser.send("POST", "/sign-in", &headers, &body).await;
        assert_eq!(answer.status, 403, "origin {origin:?}");
        assert!(answer.session().is_none(), "no session from origin {origin:?}");
    }

    let session = browser.session(&token).await;
    let cross = [("Cookie", session.as_str()), ("Origin", "https://evil.example")];
    let out = browser.send("POST", "/sign-out", &cross, "").await;
    assert_eq!(out.status, 403);
    assert_eq!(browser.get("/tenants/a", &session).await.status, 200, "still signed in");

    let origin = browser.origin();
    let own = [("Cookie", session.as_str()), ("Origin", origin.as_str())];
    let out = browser.send("POST", "/sign-out", &own, "").await;
    assert_eq!((out.status, out.header("location")), (303, Some("/sign-in")));
    assert!(out.header("set-cookie").is_some_and(|c| c.contains("Max-Age=0")));
    let after = browser.get("/tenants/a", &session).await;
    assert_eq!((after.status, after.header("location")), (303, Some("/sign-in")));
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_the_token_ends_its_session() {
    let (cluster, mut c, token) = two_tenants().await;
    let browser = Browser::of(&cluster, cluster.leader().await);
    let session = browser.session(&token).await;
    assert_eq!(browser.get("/tenants/a", &session).await.status, 200);

    let revoke = pb::RevokeTokenRequest {
        request_id: rid(),
        tenant_id: "a".into(),
        token_name: "ci".into(),
    };
    c.tenants.revoke_token(authed(ADMIN_TOKEN, revoke)).await.expect("revoked");
    // The revocation was answered, so no replica vouches for the token any more.
    let after = browser.get("/tenants/a", &session).await;
    assert_eq!((after.status, after.header("location")), (303, Some("/sign-in")));
    let again = browser.get("/tenants/a", &session).await;
    assert_eq!(again.status, 303, "the session is gone, not just refused once");
    assert_eq!(browser.sign_in(&token).await.status, 401, "the token signs in no more");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_requests_get_a_plain_refusal_and_change_nothing() {
    let (cluster, _c, token) = two_tenants().await;
    let browser = Browser::of(&cluster, cluster.leader().await);

    let unknown = browser.sign_in("berth_not_a_real_token").await;
    assert_eq!(unknown.status, 401);
    assert!(unknown.session().is_none());
    assert!(!unknown.body.contains("berth_not_a_real_token"), "the input is not echoed");
    assert_eq!(browser.sign_in("").await.status, 400);
    let huge = "x".repeat(berth::console::CONSOLE_FORM_BYTES_MAX + 1);
    let answer = browser.sign_in(&huge).await;
    assert_eq!(answer.status, 413);
    assert!(answer.session().is_none());

    for cookie in ["", "berth_console=", "berth_console=forged", "other=1; berth_console=../../x"] {
        let answer = browser.get("/tenants/a", cookie).await;
        assert_eq!((answer.status, answer.header("location")), (303, Some("/sign-in")), "{cookie}");
    }

    let session = browser.session(&token).await;
    let script = "/tenants/%3Cscript%3Ealert(1)%3C%2Fscript%3E";
    let answer = browser.get(script, &session).await;
    assert_eq!(answer.status, 404);
    assert!(!answer.body.contains("<script"), "nothing from the URL lands in the page raw");
    for path in ["/tenants/a/../b", "/tenants/", "/nowhere", "/tenants/b?tenant=a"] {
        assert_eq!(browser.get(path, &session).await.status, 404, "{path}");
    }
    let put = browser.send("PUT", "/", &[("Cookie", session.as_str())], "").await;
    assert_eq!(put.status, 405);
    assert_eq!(browser.get("/tenants/a", &session).await.status, 200, "the session still works");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_tab_hears_of_its_own_tenants_changes_only_and_resumes_after_its_last() {
    let (cluster, mut c, token) = two_tenants().await;
    let browser = Browser::of(&cluster, cluster.leader().await);
    let session = browser.session(&token).await;
    assert_eq!(browser.live_status("/tenants/b/events", &session).await, 404);
    assert_eq!(
        browser.live_status("/events", &session).await,
        404,
        "the cluster's is the operator's"
    );

    let mut live = browser.live("/tenants/a/events", &session, None).await;
    let place = |tenant: &str, id: &str| place(tenant, spec(id, 100));
    let b = c.scheduler.place(authed(ADMIN_TOKEN, place("b", "b-2"))).await.expect("placed");
    let b_index = b.into_inner().write.expect("written").log_index;
    let a = c.scheduler.place(authed(ADMIN_TOKEN, place("a", "a-2"))).await.expect("placed");
    let a_index = a.into_inner().write.expect("written").log_index;
    assert!(b_index < a_index);
    assert_eq!(live.changed_id().await, a_index, "b's placement is not a's news");

    // A tab that dropped after b's write resumes with a's.
    let mut resumed = browser.live("/tenants/a/events", &session, Some(b_index)).await;
    assert_eq!(resumed.changed_id().await, a_index);
    // Resuming from a point long gone (or never reached) reloads everything.
    let mut stale = browser.live("/tenants/a/events", &session, Some(u64::MAX)).await;
    stale.until("event: resync").await;

    // After a quiet spell, a burst of changes is still told at most once a tick: the ticks
    // the tab was not told at are not owed to it.
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    let burst_began = tokio::time::Instant::now();
    for k in 0..20 {
        let id = format!("a-burst-{k}");
        c.scheduler.place(authed(ADMIN_TOKEN, place("a", &id))).await.expect("placed");
    }
    let burst = burst_began.elapsed();
    let told_before = live.text[live.read..].matches("event: changed").count();
    let mut notes = told_before;
    let listen_until = tokio::time::Instant::now() + std::time::Duration::from_millis(600);
    while let Ok(Ok(n)) = tokio::time::timeout_at(listen_until, {
        let mut buf = [0u8; 4096];
        let stream = &mut live.stream;
        async move { stream.read(&mut buf).await.map(|n| (n, buf)) }
    })
    .await
    {
        let (n, buf) = n;
        if n == 0 {
            break;
        }
        live.text.push_str(&String::from_utf8_lossy(&buf[..n]));
        notes = live.text[live.read..].matches("event: changed").count();
    }
    // 20 writes over `burst`, then 600 ms: one note a tick, and one for the tick under way.
    let ticks = (burst.as_millis() + 600) / 250 + 2;
    assert!(notes as u128 <= ticks, "{notes} notes in {burst:?} + 600 ms");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_token_signs_its_live_tab_out() {
    let (cluster, mut c, token) = two_tenants().await;
    let browser = Browser::of(&cluster, cluster.leader().await);
    let session = browser.session(&token).await;
    let mut live = browser.live("/tenants/a/events", &session, None).await;
    let revoke = pb::RevokeTokenRequest {
        request_id: rid(),
        tenant_id: "a".into(),
        token_name: "ci".into(),
    };
    c.tenants.revoke_token(authed(ADMIN_TOKEN, revoke)).await.expect("revoked");
    live.until("event: signed-out").await;
    let after = browser.get("/tenants/a", &session).await;
    assert_eq!((after.status, after.header("location")), (303, Some("/sign-in")));
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operators_live_tab_hears_of_a_new_leader() {
    let (mut cluster, _c, _token) = two_tenants().await;
    let leader = cluster.leader().await;
    let follower = cluster.running().into_iter().find(|id| *id != leader).expect("a follower");
    let browser = Browser::of(&cluster, follower);
    let session = browser.session(ADMIN_TOKEN).await;
    let mut live = browser.live("/events", &session, None).await;
    cluster.stop(leader).await;
    live.until("data: leadership").await;
    let page = poll("the page to name a new leader", || async {
        let page = browser.get("/", &session).await;
        (page.status == 200 && !page.body.contains(&format!("Leader: replica {leader},")))
            .then_some(page.body)
    })
    .await;
    assert!(page.contains("Leader: replica "), "{page}");
    cluster.shutdown().await;
}

/// The form's request id on a page, for the form whose action is `action`.
fn request_id_of(page: &str, action: &str) -> String {
    let form = page.split(&format!("action=\"{action}\"")).nth(1).expect("the form is on the page");
    let value = form.split("name=\"request_id\" value=\"").nth(1).expect("a request id");
    value.split('"').next().expect("quoted").to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_sees_its_reservations_leases_and_queue_and_cancels_from_the_page() {
    let (cluster, mut c, token) = two_tenants().await;
    let browser = Browser::of(&cluster, cluster.leader().await);
    let session = browser.session(&token).await;
    let reserve = pb::ReserveRequest {
        request_id: rid(),
        tenant_id: "a".into(),
        spec: Some(spec("a-held", 100)),
        ttl_ms: 600_000,
        fence: None,
    };
    c.scheduler.reserve(authed(&token, reserve)).await.expect("reserved");
    let acquire = |tenant: &str, name: &str| pb::AcquireRequest {
        request_id: rid(),
        tenant_id: tenant.into(),
        name: name.into(),
        holder: format!("{tenant}-holder"),
        ttl_ms: 300_000,
    };
    let lease = c.leases.acquire(authed(ADMIN_TOKEN, acquire("a", "a-lock"))).await;
    let fencing = lease.expect("acquired").into_inner().lease.expect("a lease").token;
    c.leases.acquire(authed(ADMIN_TOKEN, acquire("b", "b-lock"))).await.expect("acquired");
    // 8,000 millicores, 1,100 held: 7,500 waits.
    let mut big = place("a", spec("a-big", 7_500));
    big.queue_if_unavailable = true;
    let queued = c.scheduler.place(authed(&token, big)).await.expect("queued").into_inner();
    assert!(queued.queued.is_some(), "it waits");

    let page = browser.get("/tenants/a", &session).await;
    assert_eq!(page.status, 200, "{}", page.body);
    let body = &page.body;
    assert!(body.contains("a-held") && body.contains("reserved, unconfirmed"), "{body}");
    assert!(body.contains("class=\"countdown\" data-left-ms=\""), "a TTL counts down");
    assert!(body.contains("a-lock") && body.contains(&format!("<td class=\"n\">{fencing}</td>")));
    assert!(!body.contains("b-lock"), "another tenant's lease is not listed");
    assert!(body.contains("a-big") && body.contains("NO_CAPACITY"), "{body}");
    assert!(body.contains("href=\"/tenants/a/queue/a-big\""), "a link explains the wait");

    // The explanation: a dry run names the worker and the check it failed.
    let why = browser.get("/tenants/a/queue/a-big", &session).await;
    assert_eq!(why.status, 200, "{}", why.body);
    assert!(why.body.contains("NO_CAPACITY") && why.body.contains("w1"), "{}", why.body);
    assert!(why.body.contains("insufficient_cpu"), "{}", why.body);
    assert!(!why.body.contains("data-live"), "each drawing is a dry run: not refreshed live");
    assert_eq!(browser.get("/tenants/b/queue/a-big", &session).await.status, 404);
    assert_eq!(browser.get("/tenants/a/queue/nothing", &session).await.status, 404);

    // Cancel: only from the console's own origin, only with the page's request id, once.
    let action = "/tenants/a/queue/a-big/cancel";
    let request_id = request_id_of(body, action);
    let form = ("Content-Type", "application/x-www-form-urlencoded");
    let fields = format!("request_id={request_id}");
    let evil = [("Cookie", session.as_str()), ("Origin", "https://evil.example"), form];
    assert_eq!(browser.send("POST", action, &evil, &fields).await.status, 403);
    let origin = browser.origin();
    let own = [("Cookie", session.as_str()), ("Origin", origin.as_str()), form];
    assert_eq!(browser.send("POST", action, &own, "").await.status, 400, "no request id");
    let queue = |c: &mut Clients| {
        let list = pb::ListQueueRequest { tenant_id: "a".into(), page: None, read: None };
        let mut scheduler = c.scheduler.clone();
        async move { scheduler.list_queue(authed(ADMIN_TOKEN, list)).await.expect("listed") }
    };
    assert_eq!(queue(&mut c).await.into_inner().queued.len(), 1, "refusals cancel nothing");
    let cancelled = browser.send("POST", action, &own, &fields).await;
    assert_eq!(cancelled.status, 303, "{}", cancelled.body);
    assert_eq!(cancelled.header("location"), Some("/tenants/a#waiting"));
    assert!(queue(&mut c).await.into_inner().queued.is_empty(), "withdrawn");
    let again = browser.send("POST", action, &own, &fields).await;
    assert_eq!(again.status, 303, "the same form sent again is the same request: {}", again.body);
    let gone = browser.get("/tenants/a/queue/a-big", &session).await;
    assert_eq!(gone.status, 404);
    assert!(gone.body.contains("no longer waits"), "{}", gone.body);
    let b_cancel = "/tenants/b/queue/b-web/cancel";
    assert_eq!(browser.send("POST", b_cancel, &own, &fields).await.status, 404);
    let get_cancel = browser.get(action, &session).await;
    assert_eq!(get_cancel.status, 405);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_and_the_statement_download_as_csv_with_the_meters_exact_figures() {
    let (cluster, mut c, _token) = two_tenants().await;
    let leader = cluster.leader().await;
    let browser = Browser::of(&cluster, leader);
    create_tenant(&mut c, "c").await;
    let token = issue_token(&mut c, "c").await;
    let session = browser.session(&token).await;
    let placed = c.scheduler.place(authed(&token, place("c", spec("c-job", 1_000)))).await;
    let t0 = placed.expect("placed").into_inner().write.expect("written").applied_at_ms;
    let release = pb::ReleaseRequest {
        request_id: rid(),
        tenant_id: "c".into(),
        placement_id: "c-job".into(),
        fence: None,
    };
    let released = c.scheduler.release(authed(&token, release)).await.expect("released");
    let t1 = released.into_inner().write.expect("written").applied_at_ms;
    // Held 1,000 millicores from t0 to t1: exactly this many millicore-ms.
    let exact = format!(",default,cpu,cpu-hour,{},", 1_000 * (t1 - t0));
    let csv = poll("the leader's usage store to hold the job", || async {
        let csv = browser.get("/tenants/c/usage.csv", &session).await;
        (csv.status == 200 && csv.body.contains(&exact)).then_some(csv)
    })
    .await;
    assert_eq!(csv.header("content-type"), Some("text/csv; charset=utf-8"));
    assert_eq!(
        csv.header("content-disposition"),
        Some("attachment; filename=\"berth-c-usage.csv\"")
    );
    assert!(csv.body.starts_with("from,to,pool,item,unit,quantity,quantity_hours\r\n"));

    let page = browser.get("/tenants/c/usage", &session).await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(page.body.contains("<svg") && page.body.contains("href=\"/tenants/c/usage.csv\""));
    let statement = browser.get("/tenants/c/statement.csv", &session).await;
    assert_eq!(statement.status, 200);
    let mut api = clients(&cluster, leader).await;
    let request = pb::GetStatementRequest { tenant_id: "c".into(), read: None };
    let expected = api.billing.get_statement(authed(&token, request)).await.expect("statement");
    let expected = expected.into_inner().current.expect("this month");
    let last = statement.body.lines().last().expect("a total row");
    assert!(last.ends_with(&format!(",total,,,,,,,,,{}", expected.total)), "{last}");
    assert!(statement.body.contains(",line,default,cpu,cpu-hour,"), "{}", statement.body);

    // Another tenant's files, a month never invoiced, and a crafted path: not there.
    for path in [
        "/tenants/a/usage.csv",
        "/tenants/a/statement.csv",
        "/tenants/c/invoices/2026-01.csv",
        "/tenants/c/invoices/../usage.csv",
        "/tenants/c/invoices/%2e%2e.csv",
    ] {
        assert_eq!(browser.get(path, &session).await.status, 404, "{path}");
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_sees_blocked_work_by_reason_pools_and_filtered_events() {
    let (cluster, mut c, token) = two_tenants().await;
    let leader = cluster.leader().await;
    let browser = Browser::of(&cluster, leader);
    let mut big = place("a", spec("a-big", 7_900));
    big.queue_if_unavailable = true;
    c.scheduler.place(authed(&token, big)).await.expect("queued");
    let admin = browser.session(ADMIN_TOKEN).await;

    let home = browser.get("/", &admin).await;
    assert_eq!(home.status, 200, "{}", home.body);
    let blocked = home.body.split("id=\"blocked\"").nth(1).expect("the blocked section");
    let blocked = blocked.split("</section>").next().expect("its end");
    assert!(
        blocked.contains("NO_CAPACITY") && blocked.contains("href=\"/tenants/a\""),
        "{blocked}"
    );
    assert!(!blocked.contains("href=\"/tenants/b\""), "b waits for nothing: {blocked}");
    // The leader knows how far each replica holds the log, and what a majority holds.
    assert!(home.body.contains("A majority of the voters hold the log up to "), "{}", home.body);
    assert!(home.body.contains(" entries</td>"), "each replica's lag: {}", home.body);
    assert!(!home.body.contains("fail-stop"), "{}", home.body);
    let pools = home.body.split("id=\"pools\"").nth(1).expect("the pools section");
    assert!(pools.contains("<td>default</td>"), "{pools}");
    assert!(home.body.contains("50.0 %"), "two tenants of weight 1 share the weights equally");

    // Every event, then filtered by tenant and kind; the filter is checked, never echoed.
    let all = browser.get("/activity", &admin).await;
    assert_eq!(all.status, 200, "{}", all.body);
    assert!(
        all.body.contains("a-web") && all.body.contains("b-web") && all.body.contains("QUEUED")
    );
    let a_placed = browser.get("/activity?tenant=a&kind=PLACED", &admin).await;
    assert_eq!(a_placed.status, 200);
    assert!(a_placed.body.contains("a-web") && !a_placed.body.contains("b-web"));
    assert!(!a_placed.body.contains("a-big"), "a-big was queued, not placed");
    for (query, status) in [("kind=NOT_A_KIND", 400), ("tenant=a&color=red", 400)] {
        let answer = browser.get(&format!("/activity?{query}"), &admin).await;
        assert_eq!(answer.status, status, "{query}");
        assert!(!answer.body.contains("NOT_A_KIND") && !answer.body.contains("red"), "{query}");
    }
    let long = format!("/activity?tenant={}", "t".repeat(64));
    assert_eq!(browser.get(&long, &admin).await.status, 400);

    // A tenant's events are its own, whatever it asks for.
    let session = browser.session(&token).await;
    let redirected = browser.get("/activity", &session).await;
    assert_eq!(
        (redirected.status, redirected.header("location")),
        (303, Some("/tenants/a/activity"))
    );
    let own = browser.get("/tenants/a/activity?tenant=b", &session).await;
    assert_eq!(own.status, 200);
    assert!(own.body.contains("a-web") && !own.body.contains("b-web"), "{}", own.body);
    assert_eq!(browser.get("/tenants/b/activity", &session).await.status, 404);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_time_link_signs_a_browser_in_once() {
    let (cluster, mut c, token) = two_tenants().await;
    let leader = cluster.leader().await;
    let browser = Browser::of(&cluster, leader);
    let issue = |token: &str| {
        let bearer = format!("Bearer {token}");
        let browser = &browser;
        async move { browser.send("POST", "/sign-in/link", &[("Authorization", &bearer)], "").await }
    };
    let issued = issue(&token).await;
    assert_eq!(issued.status, 200, "{}", issued.body);
    let link = issued.body.trim().to_owned();
    assert!(link.starts_with("/sign-in/link?code=") && !link.contains(&token), "{link}");

    // Opening the link changes nothing: it asks whom to sign in as (a scanner fetching it, or
    // a link someone else sent, signs nobody in).
    let code = link.split("code=").nth(1).expect("a code").to_owned();
    for _ in 0..2 {
        let asked = browser.get(&link, "").await;
        assert_eq!(asked.status, 200, "{}", asked.body);
        assert!(asked.body.contains("Sign in as tenant a") && asked.session().is_none());
        assert!(!asked.body.contains(&token));
    }
    let form = ("Content-Type", "application/x-www-form-urlencoded");
    let field = format!("code={code}");
    let evil = [("Origin", "https://evil.example"), form];
    assert_eq!(browser.send("POST", "/sign-in/link/open", &evil, &field).await.status, 403);
    let origin = browser.origin();
    let own = [("Origin", origin.as_str()), form];
    let opened = browser.send("POST", "/sign-in/link/open", &own, &field).await;
    assert_eq!((opened.status, opened.header("location")), (303, Some("/")), "{}", opened.body);
    let session = opened.session().expect("a session");
    assert_eq!(browser.get("/tenants/a", &session).await.status, 200);
    let again = browser.send("POST", "/sign-in/link/open", &own, &field).await;
    assert_eq!(again.status, 401, "a link signs in once");
    assert!(again.session().is_none());
    assert_eq!(browser.get(&link, "").await.status, 401, "and is gone once used");

    // One token's links end its own oldest first: a fifth ends the first.
    let mine: Vec<String> = {
        let mut mine = Vec::new();
        for _ in 0..berth::console::CONSOLE_LINKS_PER_TOKEN_MAX + 1 {
            mine.push(issue(&token).await.body.trim().to_owned());
        }
        mine
    };
    assert_eq!(browser.get(&mine[0], "").await.status, 401, "the oldest ended");
    for link in &mine[1..] {
        assert_eq!(browser.get(link, "").await.status, 200, "{link}");
    }

    // Another replica's console never issued it; a made-up code, none, or no token: refused.
    let follower = cluster.running().into_iter().find(|id| *id != leader).expect("a follower");
    let elsewhere = issue(&token).await.body.trim().to_owned();
    assert_eq!(Browser::of(&cluster, follower).get(&elsewhere, "").await.status, 401);
    for path in ["/sign-in/link?code=00", "/sign-in/link", "/sign-in/link?code=&code=x"] {
        assert_eq!(browser.get(path, "").await.status, 401, "{path}");
    }
    assert_eq!(browser.send("POST", "/sign-in/link", &[], "").await.status, 401);
    let unknown = issue("berth_not_a_real_token").await;
    assert_eq!(unknown.status, 401);
    assert!(!unknown.body.contains("berth_not_a_real_token"), "the input is not echoed");
    let huge = issue(&"x".repeat(berth::console::CONSOLE_FORM_BYTES_MAX + 1)).await;
    assert_eq!(huge.status, 401);

    // A token revoked before its link is opened signs nobody in.
    let pending = issue(&token).await.body.trim().to_owned();
    let revoke = pb::RevokeTokenRequest {
        request_id: rid(),
        tenant_id: "a".into(),
        token_name: "ci".into(),
    };
    c.tenants.revoke_token(authed(ADMIN_TOKEN, revoke)).await.expect("revoked");
    let pending = format!("code={}", pending.split("code=").nth(1).expect("a code"));
    let late = browser.send("POST", "/sign-in/link/open", &own, &pending).await;
    assert_eq!(late.status, 401);
    assert!(late.session().is_none());
    cluster.shutdown().await;
}

/// The tabs a live note sends to fetch the same page at once share one drawing of it (its
/// Cancel form's request id, random per drawing, says which); another scope's view of the same
/// address is drawn for that scope, and a page opened or reloaded is drawn anew.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tabs_fetching_the_same_page_at_once_share_one_drawing() {
    let (cluster, mut c, token) = two_tenants().await;
    let mut big = place("a", spec("a-big", 7_900));
    big.queue_if_unavailable = true;
    c.scheduler.place(authed(&token, big)).await.expect("queued");
    let browser = Arc::new(Browser::of(&cluster, cluster.leader().await));
    let session = Arc::new(browser.session(&token).await);
    let action = "/tenants/a/queue/a-big/cancel";
    // As console.js asks after a note: with the log index the note named.
    let mut live = browser.live("/tenants/a/events", &session, Some(0)).await;
    let seen = Arc::new(live.changed_id().await.to_string());
    let mut tabs = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let (browser, session, seen) = (browser.clone(), session.clone(), seen.clone());
        tabs.spawn(async move {
            let headers = [("Cookie", session.as_str()), ("X-Berth-Seen", seen.as_str())];
            browser.send("GET", "/tenants/a", &headers, "").await
        });
    }
    let mut drawings = std::collections::BTreeSet::new();
    while let Some(page) = tabs.join_next().await {
        let page = page.expect("a tab");
        assert_eq!(page.status, 200, "{}", page.body);
        drawings.insert(request_id_of(&page.body, action));
    }
    assert!(drawings.len() < 20, "20 tabs at once, {} drawings", drawings.len());

    let admin = browser.session(ADMIN_TOKEN).await;
    let operator = browser.get("/tenants/a", &admin).await;
    assert!(operator.body.contains("Signed in as operator"), "drawn for the operator");
    // A page opened or reloaded (no note's index) is drawn for its tab alone.
    let opened = browser.get("/tenants/a", &session).await;
    let reloaded = browser.get("/tenants/a", &session).await;
    let (opened, reloaded) =
        (request_id_of(&opened.body, action), request_id_of(&reloaded.body, action));
    assert_ne!(opened, reloaded, "drawn anew each time");
    assert!(!drawings.contains(&opened) && !drawings.contains(&reloaded));
    cluster.shutdown().await;
}

/// A closed invoice downloads as CSV with its lines' amounts, its adjustments and its total
/// exactly as the invoice has them; an adjustment's reason that a spreadsheet would run as a
/// formula is defused; another tenant cannot download it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_invoice_downloads_as_csv_exactly() {
    use berth::scheduler::meter::month_label;
    use berth::scheduler::windows::{month_of, month_start};
    let (cluster, mut c, a_token) = two_tenants().await;
    create_tenant(&mut c, "c").await;
    let token = issue_token(&mut c, "c").await;
    let price = pb::SetPricePlanRequest {
        request_id: rid(),
        plan: "default".into(),
        pools: vec![pb::PoolPrices {
            pool: String::new(),
            items: vec![pb::ItemPrice {
                item: "cpu".into(),
                tiers: vec![pb::PriceTier { up_to_hours: None, per_hour: "3600".into() }],
            }],
        }],
        effective_at_ms: None,
    };
    c.billing.set_price_plan(authed(ADMIN_TOKEN, price)).await.expect("priced");
    c.scheduler.place(authed(&token, place("c", spec("c-job", 1_000)))).await.expect("placed");
    let now = berth::clock::Clock::now(&cluster.clock);
    let label = month_label(month_of(now));
    for (amount, reason) in [("-0.50", "credit, \"goodwill\""), ("1.25", "=HYPERLINK(\"x\")")] {
        let adjust = pb::AdjustInvoiceRequest {
            request_id: rid(),
            tenant_id: "c".into(),
            month: label.clone(),
            amount: amount.into(),
            reason: reason.into(),
        };
        c.billing.adjust_invoice(authed(ADMIN_TOKEN, adjust)).await.expect("adjusted");
    }
    let next = month_start(month_of(now) + 1).0 + 3_600_000;
    cluster.clock.set_offset_ms(i64::try_from(next - now.0).expect("a month fits"));
    let invoice = poll("the month to end and its invoice to close", || {
        let mut billing = c.billing.clone();
        let close = pb::CloseInvoiceRequest {
            request_id: rid(),
            tenant_id: "c".into(),
            month: label.clone(),
        };
        async move {
            let closed = billing.close_invoice(authed(ADMIN_TOKEN, close)).await.ok()?;
            closed.into_inner().invoice
        }
    })
    .await;

    let browser = Browser::of(&cluster, cluster.leader().await);
    let session = browser.session(&token).await;
    let path = format!("/tenants/c/invoices/{label}.csv");
    let csv = poll("the leader to hold the invoice", || async {
        let csv = browser.get(&path, &session).await;
        (csv.status == 200).then_some(csv)
    })
    .await;
    let rows: Vec<&str> = csv.body.lines().collect();
    assert!(rows[0].starts_with("month,kind,pool,item,"), "{}", csv.body);
    for line in &invoice.lines {
        let row = format!("{label},line,{},{},", line.pool, line.item);
        let row = rows.iter().find(|r| r.starts_with(&row)).expect("the line is there");
        assert!(row.ends_with(&format!(",{},{}", line.per_hour, line.amount)), "{row}");
        assert!(row.contains(&format!(",{},", line.quantity)), "the exact quantity: {row}");
    }
    assert!(rows.contains(
        &format!("{label},adjustment,,\"credit, \"\"goodwill\"\"\",,,,,,,-0.50").as_str()
    ));
    assert!(rows
        .contains(&format!("{label},adjustment,,\"'=HYPERLINK(\"\"x\"\")\",,,,,,,1.25").as_str()));
    assert_eq!(rows.last(), Some(&format!("{label},total,,,,,,,,,{}", invoice.total).as_str()));
    let page = browser.get("/tenants/c/usage", &session).await;
    assert!(page.body.contains(&format!("href=\"{path}\"")), "the usage page links it");

    let other = browser.session(&a_token).await;
    assert_eq!(browser.get(&path, &other).await.status, 404, "not another tenant's");
    cluster.shutdown().await;
}
