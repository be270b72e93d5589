//! The web console: what a tenant or an operator would otherwise read from CLI output, served
//! by the replica itself on its own address (`--console-listen`), over the same TLS as the API
//! (HTTP/1.1; its assets are compiled into the binary, so it works offline).
//!
//! A person signs in with a bearer token, posted once: the console keeps it in memory under an
//! opaque session id, set as an `HttpOnly`, `SameSite=Strict` (and, under TLS, `Secure`) cookie,
//! and never puts it in a page or a URL. Every request authenticates the session's token again
//! and reads through the API's own handlers in-process, so scoping, rate limits and the
//! freshness of reads are the API's: a revoked token ends its session at the next request, and
//! a tenant's session sees its own tenant only (another tenant's page is 404, and which tenant
//! comes from the session, never the URL). Every POST must come from the console's own origin;
//! every page forbids scripts from anywhere but the console and framing by anyone.

mod activity;
mod live;
mod operator;
mod pages;
mod tenant;

pub use activity::{CONSOLE_EVENTS_MAX, CONSOLE_EVENTS_SCAN_MAX};
pub use live::{CONSOLE_LIVE_BUFFER, CONSOLE_LIVE_INTERVAL};
pub use operator::CONSOLE_QUEUE_ROWS_MAX;
pub use pages::CONSOLE_ROWS_MAX;
pub use tenant::CONSOLE_USAGE_DAYS;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::{combinators::BoxBody, BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_stream::{Stream, StreamExt};
use tonic::Code;

use crate::api::pb::{self, scheduler_server::Scheduler};
use crate::api::{Api, Caller};
use crate::raft::replica::Replica;

/// What the console answers with: a whole page, or a live stream.
type Body = BoxBody<Bytes, std::convert::Infallible>;

/// Most sessions one replica's console keeps; signing in beyond it ends the least recently used.
pub const CONSOLE_SESSIONS_MAX: usize = 1_000;
/// A session unused for this long is ended.
pub const CONSOLE_SESSION_IDLE_MAX: Duration = Duration::from_secs(8 * 3600);
/// Largest sign-in form, in bytes (a token is well under a tenth of it).
pub const CONSOLE_FORM_BYTES_MAX: usize = 4 * 1024;
/// Most console connections served at once; more wait to be accepted.
pub const CONSOLE_CONNECTIONS_MAX: usize = 256;
/// How long a one-time sign-in link (`berth console`) may wait to be opened.
pub const CONSOLE_LINK_TTL: Duration = Duration::from_secs(60);
/// Most sign-in links waiting to be opened at once; another ends the one closest to expiring.
pub const CONSOLE_LINKS_MAX: usize = 64;
/// Most sign-in links one token has waiting; another ends its own oldest.
pub const CONSOLE_LINKS_PER_TOKEN_MAX: usize = 4;
/// Most pages kept to share between tabs at once (each for `CONSOLE_LIVE_INTERVAL`); beyond
/// it, a page is drawn for its tab alone.
pub const CONSOLE_DRAWINGS_MAX: usize = 256;
/// Most time to read a request's headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Most time one connection is served.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(120);

/// The session cookie's name.
const COOKIE: &str = "berth_console";

/// What every page may load: its own script and styles, and connect back for its live stream
/// and content; nothing else, and no frame may hold it.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                   connect-src 'self'; \
                   form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// A one-time sign-in link waiting to be opened.
struct Link {
    token: String,
    /// Whom it signs in as, for the confirmation page.
    who: String,
    lapses: Instant,
}

/// One page drawn once for the tabs that want it at once.
struct Drawing {
    begun: Instant,
    /// How far the state it reads had got when it was begun.
    as_of: Option<u64>,
    /// The page, filled by the first tab to ask.
    page: Arc<tokio::sync::OnceCell<Bytes>>,
}

/// A signed-in person: the token they signed in with, who it made them, and when they last
/// asked for something.
struct Session {
    token: String,
    caller: Caller,
    used: Instant,
}

/// The console of one replica.
pub struct Console {
    api: Api,
    replica: Replica,
    replica_id: u64,
    /// Sessions by the SHA-256 of their id, so a lookup's timing tells nothing about an id.
    sessions: Mutex<BTreeMap<[u8; 32], Session>>,
    /// Pages begun in the last `CONSOLE_LIVE_INTERVAL`, shared by the tabs that fetch them
    /// (`drawn`): by scope and address.
    drawings: Mutex<BTreeMap<String, Drawing>>,
    /// The tick every live note waits for (`live`), so one page's tabs all ask at once.
    pub(crate) ticks_from: Instant,
    /// One-time sign-in links by the SHA-256 of their code.
    links: Mutex<BTreeMap<[u8; 32], Link>>,
    /// Under TLS: cookies are `Secure` and origins `https`.
    tls: bool,
}

/// Who asked, once their session's token has been checked again.
pub(crate) struct Visitor {
    session: [u8; 32],
    token: String,
    caller: Caller,
}

impl Console {
    pub fn new(api: Api, replica: Replica, tls: bool) -> Arc<Console> {
        let replica_id = replica.id();
        Arc::new(Console {
            api,
            replica,
            replica_id,
            sessions: Mutex::default(),
            links: Mutex::default(),
            drawings: Mutex::default(),
            ticks_from: Instant::now(),
            tls,
        })
    }

    /// Serves every connection `incoming` yields (already through TLS, if any) until `stopped`.
    pub async fn serve<I, IO>(
        self: Arc<Self>,
        incoming: I,
        stopped: impl std::future::Future<Output = ()> + Send + 'static,
    ) where
        I: Stream<Item = std::io::Result<IO>> + Send + 'static,
        IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let slots = Arc::new(Semaphore::new(CONSOLE_CONNECTIONS_MAX));
        let mut incoming = std::pin::pin!(incoming);
        let mut stopped = std::pin::pin!(stopped);
        let mut connections = tokio::task::JoinSet::new();
        loop {
            let io = tokio::select! {
                _ = &mut stopped => break,
                io = incoming.next() => match io {
                    Some(Ok(io)) => io,
                    Some(Err(e)) => {
                        tracing::debug!(error = %e, "console connection not accepted");
                        continue;
                    }
                    None => break,
                },
            };
            let permit = tokio::select! {
                _ = &mut stopped => break,
                permit = slots.clone().acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => break,
                },
            };
            let console = self.clone();
            connections.spawn(async move {
                let service = hyper::service::service_fn(move |request| {
                    let console = console.clone();
                    async move { Ok::<_, std::convert::Infallible>(console.handle(request).await) }
                });
                let served = hyper::server::conn::http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(HEADER_TIMEOUT)
                    .serve_connection(hyper_util::rt::TokioIo::new(io), service);
                match tokio::time::timeout(CONNECTION_TIMEOUT, served).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => tracing::debug!(error = %e, "console connection ended"),
                    Err(_) => tracing::debug!("console connection cut off"),
                }
                drop(permit);
            });
            while connections.try_join_next().is_some() {}
        }
        connections.shutdown().await;
    }

    async fn handle(self: Arc<Self>, request: Request<Incoming>) -> Response<Body> {
        let mut response = self.route(request).await;
        let headers = response.headers_mut();
        for (name, value) in [
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "same-origin"),
            (header::CACHE_CONTROL, "no-store"),
            (header::X_FRAME_OPTIONS, "DENY"),
        ] {
            headers.insert(name, HeaderValue::from_static(value));
        }
        response
    }

    async fn route(self: Arc<Self>, request: Request<Incoming>) -> Response<Body> {
        let path = request.uri().path().to_owned();
        let method = request.method().clone();
        match (&method, path.as_str()) {
            (&Method::GET, "/console.css") => asset(pages::CSS, "text/css; charset=utf-8"),
            (&Method::GET, "/console.js") => asset(pages::JS, "text/javascript; charset=utf-8"),
            (&Method::GET, "/events") => match self.visitor(request.headers()).await {
                Ok(visitor) if visitor.caller == Caller::Admin => {
                    self.live(visitor, live::Scope::Cluster, request.headers())
                }
                Ok(_) => not_found(),
                Err(response) => response,
            },
            (&Method::GET, "/sign-in") => match self.visitor(request.headers()).await {
                Ok(_) => redirect("/", None),
                Err(_) => html(StatusCode::OK, pages::sign_in(None)),
            },
            (&Method::POST, "/sign-in") => self.sign_in(request).await,
            (&Method::POST, "/sign-in/link") => self.issue_link(request.headers()).await,
            (&Method::GET, "/sign-in/link") => self.show_link(request.uri().query()),
            (&Method::POST, "/sign-in/link/open") => self.open_link(request).await,
            (&Method::POST, "/sign-out") => {
                if !self.same_origin(request.headers()) {
                    return forbidden_origin();
                }
                if let Some(key) = session_key(request.headers()) {
                    self.lock().remove(&key);
                }
                redirect("/sign-in", Some(self.cookie("", Duration::ZERO)))
            }
            (&Method::GET, "/") => match self.visitor(request.headers()).await {
                Ok(visitor) => match &visitor.caller {
                    Caller::Tenant(tenant, _) => redirect(&format!("/tenants/{tenant}"), None),
                    Caller::Admin => self.operator(&visitor, request.headers()).await,
                },
                Err(response) => response,
            },
            (&Method::GET, "/activity") => match self.visitor(request.headers()).await {
                Ok(visitor) => match &visitor.caller {
                    Caller::Tenant(tenant, _) => {
                        redirect(&format!("/tenants/{tenant}/activity"), None)
                    }
                    Caller::Admin => {
                        self.activity(&visitor, (request.uri(), request.headers()), None).await
                    }
                },
                Err(response) => response,
            },
            (_, _) if path.starts_with("/tenants/") => {
                let visitor = match self.visitor(request.headers()).await {
                    Ok(visitor) => visitor,
                    Err(response) => return response,
                };
                let (tenant, below) = match path["/tenants/".len()..].split_once('/') {
                    Some((tenant, below)) => (tenant.to_owned(), Some(below.to_owned())),
                    None => (path["/tenants/".len()..].to_owned(), None),
                };
                if !self.may_see(&visitor, &tenant) {
                    return not_found();
                }
                self.tenant_route(visitor, request, &tenant, below.as_deref()).await
            }
            (
                _,
                "/" | "/sign-in" | "/sign-in/link" | "/sign-in/link/open" | "/sign-out"
                | "/console.css" | "/console.js" | "/events" | "/activity",
            ) => html(
                StatusCode::METHOD_NOT_ALLOWED,
                pages::problem("That method is not served here."),
            ),
            _ => not_found(),
        }
    }

    /// Exchanges a posted token for a session.
    async fn sign_in(&self, request: Request<Incoming>) -> Response<Body> {
        let token = match self.posted(request, "token").await {
            Ok(token) => token,
            Err(response) => return response,
        };
        if token.is_empty() {
            return html(
                StatusCode::BAD_REQUEST,
                pages::sign_in(Some("Paste a token to sign in.")),
            );
        }
        let caller = match self.api.caller_of(&token).await {
            Ok(caller) => caller,
            Err(status) => {
                let why = match status.code() {
                    Code::Unauthenticated => "That token is not known, or has expired.",
                    _ => "The cluster could not check that token now; try again.",
                };
                return html(StatusCode::UNAUTHORIZED, pages::sign_in(Some(why)));
            }
        };
        self.start_session(token, caller)
    }

    /// A new session for `token` (already authenticated as `caller`): its cookie, and home.
    fn start_session(&self, token: String, caller: Caller) -> Response<Body> {
        let mut id = [0u8; 32];
        if getrandom::fill(&mut id).is_err() {
            return html(
                StatusCode::SERVICE_UNAVAILABLE,
                pages::problem("No randomness for a session id; try again."),
            );
        }
        let id = crate::raft::replica::hex(&id);
        let now = Instant::now();
        {
            let mut sessions = self.lock();
            sessions.retain(|_, s| now.duration_since(s.used) < CONSOLE_SESSION_IDLE_MAX);
            while sessions.len() >= CONSOLE_SESSIONS_MAX {
                let Some(oldest) = sessions.iter().min_by_key(|(_, s)| s.used).map(|(k, _)| *k)
                else {
                    break;
                };
                sessions.remove(&oldest);
            }
            sessions.insert(key_of(&id), Session { token, caller, used: now });
        }
        redirect("/", Some(self.cookie(&id, CONSOLE_SESSION_IDLE_MAX)))
    }

    /// `POST /sign-in/link` with `Authorization: Bearer <token>` (what `berth console` sends):
    /// a one-time code that signs a browser in with that token, once, within
    /// `CONSOLE_LINK_TTL`. The answer is the link's path; the token never goes in it.
    async fn issue_link(&self, headers: &HeaderMap) -> Response<Body> {
        let token = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .unwrap_or_default();
        if token.is_empty() || token.len() > CONSOLE_FORM_BYTES_MAX {
            return text(StatusCode::UNAUTHORIZED, "send the token as Authorization: Bearer\n");
        }
        let caller = match self.api.caller_of(token).await {
            Ok(caller) => caller,
            Err(status) if status.code() == Code::Unauthenticated => {
                return text(StatusCode::UNAUTHORIZED, "that token is not known, or has expired\n")
            }
            Err(status) => {
                return text(StatusCode::SERVICE_UNAVAILABLE, &format!("{}\n", status.message()))
            }
        };
        let mut code = [0u8; 32];
        if getrandom::fill(&mut code).is_err() {
            return text(StatusCode::SERVICE_UNAVAILABLE, "no randomness for a code; try again\n");
        }
        let code = crate::raft::replica::hex(&code);
        let now = Instant::now();
        {
            let mut links = self.links.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            links.retain(|_, l| l.lapses > now);
            // One token's links end its own oldest first, so one token cannot push out
            // everyone else's; past the replica's bound, the one closest to expiring ends.
            loop {
                let own = links.iter().filter(|(_, l)| l.token == token);
                let ending = if own.clone().count() >= CONSOLE_LINKS_PER_TOKEN_MAX {
                    own.min_by_key(|(_, l)| l.lapses).map(|(k, _)| *k)
                } else if links.len() >= CONSOLE_LINKS_MAX {
                    links.iter().min_by_key(|(_, l)| l.lapses).map(|(k, _)| *k)
                } else {
                    None
                };
                let Some(ending) = ending else { break };
                links.remove(&ending);
            }
            let who = self.who(&caller);
            let link = Link { token: token.to_owned(), who, lapses: now + CONSOLE_LINK_TTL };
            links.insert(key_of(&code), link);
        }
        text(StatusCode::OK, &format!("/sign-in/link?code={code}\n"))
    }

    /// `GET /sign-in/link?code=…`: the link `berth console` printed. It changes nothing: it
    /// asks the person who opened it to confirm whom they sign in as (a link sent by someone
    /// else signs nobody in unasked, and a scanner fetching it does not use it up).
    fn show_link(&self, query: Option<&str>) -> Response<Body> {
        let code = form_urlencoded::parse(query.unwrap_or_default().as_bytes())
            .find(|(name, _)| name == "code")
            .map(|(_, value)| value.into_owned())
            .unwrap_or_default();
        let now = Instant::now();
        let who = {
            let links = self.links.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            links.get(&key_of(&code)).filter(|l| l.lapses > now).map(|l| l.who.clone())
        };
        match who {
            Some(who) => html(StatusCode::OK, pages::confirm_link(&code, &who)),
            None => link_refused(),
        }
    }

    /// `POST /sign-in/link/open` from the confirmation page: the link is used up, and its
    /// token, checked again, signs this browser in.
    async fn open_link(&self, request: Request<Incoming>) -> Response<Body> {
        let code = match self.posted(request, "code").await {
            Ok(code) => code,
            Err(response) => return response,
        };
        let now = Instant::now();
        let token = {
            let mut links = self.links.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            links.remove(&key_of(&code)).filter(|l| l.lapses > now).map(|l| l.token)
        };
        let Some(token) = token else { return link_refused() };
        match self.api.caller_of(&token).await {
            Ok(caller) => self.start_session(token, caller),
            Err(status) if status.code() == Code::Unauthenticated => link_refused(),
            Err(status) => self.unavailable(&status),
        }
    }

    /// The visitor a request's session cookie names, its token checked again; or the page to
    /// answer with instead (sign in, or signed out because the token no longer works).
    async fn visitor(&self, headers: &HeaderMap) -> Result<Visitor, Response<Body>> {
        let signed_out = || redirect("/sign-in", None);
        let key = session_key(headers).ok_or_else(signed_out)?;
        let token = {
            let mut sessions = self.lock();
            let Some(session) = sessions.get_mut(&key) else { return Err(signed_out()) };
            let now = Instant::now();
            if now.duration_since(session.used) >= CONSOLE_SESSION_IDLE_MAX {
                sessions.remove(&key);
                return Err(signed_out());
            }
            session.used = now;
            session.token.clone()
        };
        match self.api.caller_of(&token).await {
            Ok(caller) => {
                let same = self.lock().get(&key).is_some_and(|s| s.caller == caller);
                if !same {
                    self.lock().remove(&key);
                    return Err(signed_out());
                }
                Ok(Visitor { session: key, token, caller })
            }
            Err(status) if status.code() == Code::Unauthenticated => {
                self.lock().remove(&key);
                Err(redirect("/sign-in", Some(self.cookie("", Duration::ZERO))))
            }
            Err(status) => Err(self.unavailable(&status)),
        }
    }

    /// Whether `visitor` may see `tenant`'s pages: the operator any, a tenant its own only.
    fn may_see(&self, visitor: &Visitor, tenant: &str) -> bool {
        match &visitor.caller {
            Caller::Admin => true,
            Caller::Tenant(own, _) => own.0 == tenant,
        }
    }

    /// A page under `/tenants/{tenant}/` (`below` is the rest of the path), once the visitor
    /// may see the tenant.
    async fn tenant_route(
        self: Arc<Self>,
        visitor: Visitor,
        request: Request<Incoming>,
        tenant: &str,
        below: Option<&str>,
    ) -> Response<Body> {
        let token = visitor.token.clone();
        let now = self.replica.now().0;
        // How far the state a page reads has got, at least: taken before the reads.
        let as_of = self.replica.view().last_applied_index;
        let live = format!("/tenants/{tenant}/events");
        let get = request.method() == Method::GET;
        match below {
            None if get => {
                let read = tenant::Overview::read(&self.api, &token, tenant, now);
                let render =
                    |page: tenant::Overview| page.render(&self.frame(&visitor, live, as_of));
                self.drawn(&visitor, (request.uri(), request.headers()), as_of, read, render).await
            }
            Some("events") if get => self.clone().live(
                visitor,
                live::Scope::Tenant(tenant.to_owned()),
                request.headers(),
            ),
            Some("usage") if get => {
                let read = tenant::Usage::read(&self.api, &token, tenant, now);
                let render = |page: tenant::Usage| page.render(&self.frame(&visitor, live, as_of));
                self.drawn(&visitor, (request.uri(), request.headers()), as_of, read, render).await
            }
            Some("activity") if get => {
                let own = match &visitor.caller {
                    Caller::Tenant(own, _) => Some(own.0.clone()),
                    Caller::Admin => Some(tenant.to_owned()),
                };
                self.activity(&visitor, (request.uri(), request.headers()), own.as_deref()).await
            }
            Some("usage.csv") if get => {
                let csv = tenant::usage_csv(&self.api, &token, tenant, now).await;
                self.csv(csv.map(Some), &format!("berth-{tenant}-usage.csv"))
            }
            Some("statement.csv") if get => {
                let csv = tenant::statement_csv(&self.api, &token, tenant).await;
                self.csv(csv.map(Some), &format!("berth-{tenant}-statement.csv"))
            }
            Some(file) if get && file.starts_with("invoices/") => {
                match file["invoices/".len()..].strip_suffix(".csv") {
                    Some(month) if !month.contains('/') => {
                        let csv = tenant::invoice_csv(&self.api, &token, tenant, month).await;
                        self.csv(csv, &format!("berth-{tenant}-invoice-{month}.csv"))
                    }
                    _ => not_found(),
                }
            }
            Some(queued) if queued.starts_with("queue/") => {
                let queued = &queued["queue/".len()..];
                match (request.method(), queued.strip_suffix("/cancel")) {
                    (&Method::POST, Some(placement)) if !placement.contains('/') => {
                        self.cancel(&visitor, request, tenant, placement).await
                    }
                    (&Method::GET, None) if !queued.contains('/') => {
                        let read = tenant::Explanation::read(&self.api, &token, tenant, queued);
                        match read.await {
                            // Not live: each drawing is a dry run, which copies the state.
                            Ok(Some(page)) => html(
                                StatusCode::OK,
                                page.render(&self.frame(&visitor, String::new(), as_of)),
                            ),
                            Ok(None) => no_longer_waits(),
                            Err(status) if status.code() == Code::NotFound => no_longer_waits(),
                            Err(status) => self.refused(&status),
                        }
                    }
                    (_, Some(_)) | (_, None)
                        if !queued.contains('/') || queued.ends_with("/cancel") =>
                    {
                        html(
                            StatusCode::METHOD_NOT_ALLOWED,
                            pages::problem("That method is not served here."),
                        )
                    }
                    _ => not_found(),
                }
            }
            _ if !get && below.is_none_or(|b| !b.contains('/')) => html(
                StatusCode::METHOD_NOT_ALLOWED,
                pages::problem("That method is not served here."),
            ),
            _ => not_found(),
        }
    }

    /// Withdraws a queued placement, from the Cancel button of a page of this console.
    async fn cancel(
        &self,
        visitor: &Visitor,
        request: Request<Incoming>,
        tenant: &str,
        placement: &str,
    ) -> Response<Body> {
        let request_id = match self.posted(request, "request_id").await {
            Ok(request_id) => request_id,
            Err(response) => return response,
        };
        if request_id.is_empty() {
            return html(
                StatusCode::BAD_REQUEST,
                pages::problem("The form lacks its request id; reload the page and try again."),
            );
        }
        let cancel = pb::CancelQueuedRequest {
            request_id,
            tenant_id: tenant.to_owned(),
            placement_id: placement.to_owned(),
        };
        match Scheduler::cancel_queued(&self.api, pages::authed(&visitor.token, cancel)).await {
            Ok(_) => redirect(&format!("/tenants/{tenant}#waiting"), None),
            Err(status) if status.code() == Code::NotFound => no_longer_waits(),
            Err(status) if status.code() == Code::InvalidArgument => html(
                StatusCode::BAD_REQUEST,
                pages::problem(&format!("Not cancelled: {}", status.message())),
            ),
            Err(status) => self.refused(&status),
        }
    }

    async fn operator(&self, visitor: &Visitor, headers: &HeaderMap) -> Response<Body> {
        let view = self.replica.view();
        let as_of = view.last_applied_index;
        let now = self.replica.now().0;
        let read = operator::Operator::read(&self.api, view, &visitor.token, now);
        let render =
            |page: operator::Operator| page.render(&self.frame(visitor, "/events".into(), as_of));
        self.drawn(visitor, (&hyper::Uri::from_static("/"), headers), as_of, read, render).await
    }

    /// The events page, of every tenant (the operator) or of `own` (shared between tabs like
    /// any page: it scans the journal).
    async fn activity(
        &self,
        visitor: &Visitor,
        (uri, headers): (&hyper::Uri, &HeaderMap),
        own: Option<&str>,
    ) -> Response<Body> {
        let filter = match activity::Filter::parse(uri.query()) {
            Ok(filter) => filter,
            Err(problem) => return html(StatusCode::BAD_REQUEST, pages::problem(&problem)),
        };
        let as_of = self.replica.view().last_applied_index;
        let watched = own.or(filter.tenant.as_deref());
        let live = match watched {
            Some(t) => format!("/tenants/{t}/events"),
            None => "/events".to_owned(),
        };
        let read = async { Ok::<_, tonic::Status>(()) };
        let render = |()| {
            let frame = self.frame(visitor, live, as_of);
            activity::render(self.replica.journal(), &filter, own, &frame)
        };
        self.drawn(visitor, (uri, headers), as_of, read, render).await
    }

    /// A page read through the API (`read`, then `render`), or what its refusal means to a
    /// visitor.
    ///
    /// The tabs a live note sends to fetch the same page share one drawing of it. Notes go out
    /// on a tick common to every tab (`live`), so the tabs of one page ask at once; each says
    /// the log index its note named (`X-Berth-Seen`). A drawing
    /// for the same scope (the operator, or one tenant) and address, begun in the last
    /// `CONSOLE_LIVE_INTERVAL` from state at least that far, is sent again (or awaited, while
    /// it is drawn) instead of read and drawn anew.
    async fn drawn<T>(
        &self,
        visitor: &Visitor,
        (uri, headers): (&hyper::Uri, &HeaderMap),
        as_of: Option<u64>,
        read: impl std::future::Future<Output = Result<T, tonic::Status>>,
        render: impl FnOnce(T) -> maud::Markup,
    ) -> Response<Body> {
        let scope = match &visitor.caller {
            Caller::Admin => "operator".to_owned(),
            Caller::Tenant(tenant, _) => format!("tenant {tenant}"),
        };
        let key = format!("{scope} {uri}");
        let seen = headers
            .get("x-berth-seen")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        // Without a note's index (a page opened or reloaded, a new leader) it is drawn anew.
        let needs = seen;
        let now = Instant::now();
        let drawing = {
            let mut drawings =
                self.drawings.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            drawings.retain(|_, d| now.duration_since(d.begun) < CONSOLE_LIVE_INTERVAL);
            let reusable = drawings
                .get(&key)
                .filter(|d| needs.is_some() && d.as_of.is_some() && d.as_of >= needs);
            match reusable {
                Some(d) => Some(d.page.clone()),
                None if drawings.len() < CONSOLE_DRAWINGS_MAX || drawings.contains_key(&key) => {
                    let d = Drawing { begun: now, as_of, page: Arc::default() };
                    let page = d.page.clone();
                    drawings.insert(key, d);
                    Some(page)
                }
                None => None,
            }
        };
        let draw = || async {
            match read.await {
                Ok(page) => Ok(Bytes::from(render(page).into_string())),
                Err(status) => Err(self.refused(&status)),
            }
        };
        let drawn = match &drawing {
            Some(page) => page.get_or_try_init(draw).await.cloned(),
            None => draw().await,
        };
        match drawn {
            Ok(page) => {
                let mut response = Response::new(Full::new(page).boxed());
                set(&mut response, header::CONTENT_TYPE, "text/html; charset=utf-8");
                response
            }
            Err(response) => response,
        }
    }

    /// A CSV download; `None` is a file that does not exist.
    fn csv(&self, read: Result<Option<String>, tonic::Status>, name: &str) -> Response<Body> {
        match read {
            Ok(Some(csv)) => {
                let mut response = Response::new(Full::new(Bytes::from(csv)).boxed());
                set(&mut response, header::CONTENT_TYPE, "text/csv; charset=utf-8");
                let name: String = name
                    .chars()
                    .map(|c| if c.is_ascii_alphanumeric() || "-_.".contains(c) { c } else { '_' })
                    .collect();
                set(
                    &mut response,
                    header::CONTENT_DISPOSITION,
                    &format!("attachment; filename=\"{name}\""),
                );
                response
            }
            Ok(None) => not_found(),
            Err(status) => self.refused(&status),
        }
    }

    /// A live stream for one tab, resuming after its `Last-Event-ID` if it sends one.
    fn live(
        self: Arc<Self>,
        visitor: Visitor,
        scope: live::Scope,
        headers: &HeaderMap,
    ) -> Response<Body> {
        let resume = headers
            .get("last-event-id")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        let body = live::stream(self, visitor.session, visitor.token, scope, resume);
        let mut response = Response::new(body);
        set(&mut response, header::CONTENT_TYPE, "text/event-stream");
        response
    }

    fn frame(&self, visitor: &Visitor, live: String, as_of: Option<u64>) -> pages::Frame {
        let who = self.who(&visitor.caller);
        let mut nonce = [0u8; 16];
        if getrandom::fill(&mut nonce).is_err() {
            // Never on a working system; a page's forms then still differ from another's by
            // the time it was drawn.
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos();
            nonce = nanos.to_le_bytes();
        }
        pages::Frame { who, replica_id: self.replica_id, live, as_of, nonce }
    }

    /// A read the API refused: another tenant's or a missing one is 404, a revoked token
    /// signs out, anything else says what went wrong.
    fn refused(&self, status: &tonic::Status) -> Response<Body> {
        match status.code() {
            Code::NotFound | Code::PermissionDenied | Code::InvalidArgument => not_found(),
            Code::Unauthenticated => redirect("/sign-in", None),
            _ => self.unavailable(status),
        }
    }

    fn unavailable(&self, status: &tonic::Status) -> Response<Body> {
        html(
            StatusCode::SERVICE_UNAVAILABLE,
            pages::problem(&format!(
                "Replica {} could not answer: {} ({:?}). Reload to try again.",
                self.replica_id,
                status.message(),
                status.code()
            )),
        )
    }

    /// The field `name` of a form posted from a page of this console (trimmed; empty if
    /// missing), read up to `CONSOLE_FORM_BYTES_MAX`; or the refusal of a form from elsewhere
    /// or too large.
    async fn posted(
        &self,
        request: Request<Incoming>,
        name: &str,
    ) -> Result<String, Response<Body>> {
        if !self.same_origin(request.headers()) {
            return Err(forbidden_origin());
        }
        let body = Limited::new(request.into_body(), CONSOLE_FORM_BYTES_MAX).collect().await;
        let body = body.map_err(|_| {
            html(
                StatusCode::PAYLOAD_TOO_LARGE,
                pages::problem(&format!("The form is larger than {CONSOLE_FORM_BYTES_MAX} bytes.")),
            )
        })?;
        Ok(form_urlencoded::parse(&body.to_bytes())
            .find(|(field, _)| field == name)
            .map(|(_, value)| value.trim().to_owned())
            .unwrap_or_default())
    }

    /// Whom a caller is, as pages say it.
    fn who(&self, caller: &Caller) -> String {
        match caller {
            Caller::Admin => "operator".to_owned(),
            Caller::Tenant(tenant, _) => format!("tenant {tenant}"),
        }
    }

    /// Whether a POST comes from a page of this console: its `Origin` is this console's.
    fn same_origin(&self, headers: &HeaderMap) -> bool {
        let scheme = if self.tls { "https" } else { "http" };
        let (Some(origin), Some(host)) = (headers.get(header::ORIGIN), headers.get(header::HOST))
        else {
            return false;
        };
        let (Ok(origin), Ok(host)) = (origin.to_str(), host.to_str()) else { return false };
        origin.strip_prefix(scheme).and_then(|o| o.strip_prefix("://")) == Some(host)
    }

    fn cookie(&self, id: &str, lasts: Duration) -> String {
        let secure = if self.tls { "; Secure" } else { "" };
        format!(
            "{COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{secure}",
            lasts.as_secs()
        )
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<[u8; 32], Session>> {
        self.sessions.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

fn link_refused() -> Response<Body> {
    html(
        StatusCode::UNAUTHORIZED,
        pages::sign_in(Some(
            "That sign-in link was used already, has expired, or is not from this replica: run \
             `berth console` again, or paste a token.",
        )),
    )
}

fn no_longer_waits() -> Response<Body> {
    html(
        StatusCode::NOT_FOUND,
        pages::problem("That placement no longer waits in the queue: it was placed or withdrawn."),
    )
}

fn key_of(id: &str) -> [u8; 32] {
    Sha256::digest(id.as_bytes()).into()
}

/// The key of the session a request's cookie names, if it names one.
fn session_key(headers: &HeaderMap) -> Option<[u8; 32]> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .find_map(|pair| pair.trim().strip_prefix(COOKIE)?.strip_prefix('='))
        .filter(|id| !id.is_empty())
        .map(key_of)
}

fn set(response: &mut Response<Body>, name: header::HeaderName, value: &str) {
    if let Ok(value) = HeaderValue::from_str(value) {
        response.headers_mut().insert(name, value);
    }
}

fn asset(bytes: &'static [u8], content_type: &str) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from_static(bytes)).boxed());
    set(&mut response, header::CONTENT_TYPE, content_type);
    response
}

fn html(status: StatusCode, page: maud::Markup) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from(page.into_string())).boxed());
    *response.status_mut() = status;
    set(&mut response, header::CONTENT_TYPE, "text/html; charset=utf-8");
    response
}

fn text(status: StatusCode, text: &str) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from(text.to_owned())).boxed());
    *response.status_mut() = status;
    set(&mut response, header::CONTENT_TYPE, "text/plain; charset=utf-8");
    response
}

fn redirect(to: &str, cookie: Option<String>) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::new()).boxed());
    *response.status_mut() = StatusCode::SEE_OTHER;
    set(&mut response, header::LOCATION, to);
    if let Some(cookie) = cookie {
        set(&mut response, header::SET_COOKIE, &cookie);
    }
    response
}

fn not_found() -> Response<Body> {
    html(StatusCode::NOT_FOUND, pages::problem("There is no such page."))
}

fn forbidden_origin() -> Response<Body> {
    html(
        StatusCode::FORBIDDEN,
        pages::problem("This form was not sent from the console's own pages."),
    )
}
