//! `berth console`: a one-time link that signs a browser in to a replica's web console with
//! the token this command is given, so the token is never typed into, or put in, a page.

use std::time::Duration;

use anyhow::Context;
use berth::client::ClientSecurity;
use clap::Args;
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use serde::Serialize;

use super::Connection;

#[derive(Args, Debug)]
pub struct ConsoleArgs {
    /// The replica's console: `berth up` serves them at https://127.0.0.1:7701 to 7703.
    #[arg(long, env = "BERTH_CONSOLE", default_value = "https://127.0.0.1:7701")]
    pub url: String,
}

#[derive(Serialize)]
struct Link {
    url: String,
    expires_in_ms: u64,
}

/// How long to wait for the console, connection and answer together.
const TIMEOUT: Duration = Duration::from_secs(10);

pub async fn run(connection: &Connection, args: ConsoleArgs) -> anyhow::Result<()> {
    let token = connection
        .token
        .as_deref()
        .context("give the token to sign in with: --token or BERTH_TOKEN")?;
    let base = args.url.trim_end_matches('/');
    let uri: hyper::Uri = base.parse().with_context(|| "--url must be like https://host:port")?;
    let tls = match (uri.scheme_str(), connection.security()?) {
        (Some("https"), ClientSecurity::Tls(tls)) => Some(tls),
        (Some("http"), ClientSecurity::Insecure) => None,
        (Some("https"), ClientSecurity::Insecure) => {
            anyhow::bail!("--insecure speaks plaintext: give an http:// console URL")
        }
        _ => anyhow::bail!("the console is served over TLS: give an https:// URL (and --ca)"),
    };
    let host = uri.host().context("--url names no host")?.trim_matches(['[', ']']).to_owned();
    let port = uri.port_u16().unwrap_or(if tls.is_some() { 443 } else { 80 });
    let path =
        tokio::time::timeout(TIMEOUT, issue(&host, port, tls, token)).await.map_err(|_| {
            anyhow::anyhow!("the console at {base} did not answer within {TIMEOUT:?}")
        })??;
    let link = Link { url: format!("{base}{path}"), expires_in_ms: 60_000 };
    if connection.json {
        return crate::output::show(true, &link);
    }
    println!("Open this within 60 s; it signs one browser in, once:\n  {}", link.url);
    Ok(())
}

/// Asks the console for a one-time sign-in link: its path.
async fn issue(
    host: &str,
    port: u16,
    tls: Option<berth::tls::ClientTls>,
    token: &str,
) -> anyhow::Result<String> {
    let tcp = tokio::net::TcpStream::connect((host, port))
        .await
        .with_context(|| format!("no console answers at {host}:{port}"))?;
    let request = hyper::Request::post("/sign-in/link")
        .header(hyper::header::HOST, format!("{host}:{port}"))
        .header(hyper::header::AUTHORIZATION, format!("Bearer {token}"))
        .body(Empty::<Bytes>::new())?;
    let response = match tls {
        Some(tls) => send(tls.connect_http1(host, tcp).await?, request).await?,
        None => send(tcp, request).await?,
    };
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    let body = String::from_utf8_lossy(&body).trim().to_owned();
    anyhow::ensure!(status.is_success(), "the console refused: {status}: {body}");
    anyhow::ensure!(body.starts_with("/sign-in/link?code="), "not a sign-in link: {body:.80}");
    Ok(body)
}

async fn send<IO>(
    io: IO,
    request: hyper::Request<Empty<Bytes>>,
) -> anyhow::Result<hyper::Response<hyper::body::Incoming>>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(io)).await?;
    tokio::spawn(connection);
    Ok(sender.send_request(request).await?)
}
