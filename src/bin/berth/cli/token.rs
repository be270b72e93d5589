//! `berth token`: issue and revoke a tenant's named tokens.

use berth::client::pb;
use clap::Subcommand;

use super::args::parse_duration_ms;
use super::Session;

#[derive(Subcommand, Debug)]
pub enum TokenCmd {
    /// Issue a tenant token (printed once).
    Issue {
        tenant: String,
        name: String,
        /// Lifetime, like 90s, 15m, 12h or 30d (at most 365d); by default it never expires.
        #[arg(long, value_parser = parse_duration_ms)]
        expires_in: Option<u64>,
    },
    Revoke {
        tenant: String,
        name: String,
    },
}

pub async fn run(s: &Session, cmd: TokenCmd) -> anyhow::Result<()> {
    match cmd {
        TokenCmd::Issue { tenant, name, expires_in } => {
            let m = pb::IssueTokenRequest {
                request_id: s.request_id(),
                tenant_id: tenant,
                token_name: name,
                ttl_ms: expires_in.unwrap_or(0),
            };
            s.show(&call!(s, tenants, issue_token, m))
        }
        TokenCmd::Revoke { tenant, name } => {
            let m = pb::RevokeTokenRequest {
                request_id: s.request_id(),
                tenant_id: tenant,
                token_name: name,
            };
            s.show(&call!(s, tenants, revoke_token, m))
        }
    }
}
