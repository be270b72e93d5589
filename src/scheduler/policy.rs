//! Policy versions: every change to a tenant's quota, rate limits, budget or billing plan is a
//! numbered version, with who made it, when and at which log index, and the whole policy as
//! it stood after the change; `RollbackPolicy` makes an earlier version's policy current
//! again, as a new version.
//!
//! A tenant's versions are numbered from 1 (its creation, with no limits) and keep the last
//! `POLICY_VERSIONS_MAX`; an older one is forgotten, and rolling back to it is refused as
//! `POLICY_VERSION_NOT_FOUND`. A rollback goes through the same setters as each change, so it
//! is checked like them (a quota below what the tenant holds now is refused: release first)
//! and refused whole or applied whole.

use serde::{Deserialize, Serialize};
use std::collections::VecDeque;

use super::budget::Budget;
use super::command::{Rejection, Response};
use super::ids::{LogIndex, PlanId, RequestId, TenantId, TokenHash, TokenId, UnixMillis};
use super::quota::Quota;
use super::rates::RateLimits;
use super::Scheduler;

/// Most policy versions a tenant keeps (the oldest are forgotten first).
pub const POLICY_VERSIONS_MAX: usize = 32;

/// Who proposed an entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Actor {
    /// The admin token.
    Admin,
    /// A tenant's token, by name.
    Token(TokenId),
    /// A token no tenant has (any more) when the entry is applied: its command is refused.
    UnknownToken,
}

impl Actor {
    pub fn name(&self) -> String {
        match self {
            Actor::Admin => "admin".to_owned(),
            Actor::Token(name) => format!("token:{name}"),
            Actor::UnknownToken => "token:unknown".to_owned(),
        }
    }
}

/// What a tenant is held to and pays by.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    pub quota: Quota,
    pub rate_limits: Option<RateLimits>,
    pub budget: Option<Budget>,
    pub billing_plan: Option<PlanId>,
}

/// Which part of the policy a version changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PolicyChange {
    Created,
    Quota,
    RateLimits,
    Budget,
    BillingPlan,
    /// Made version `to` current again.
    Rollback {
        to: u64,
    },
}

impl PolicyChange {
    pub fn name(self) -> String {
        match self {
            PolicyChange::Created => "created".to_owned(),
            PolicyChange::Quota => "quota".to_owned(),
            PolicyChange::RateLimits => "rate_limits".to_owned(),
            PolicyChange::Budget => "budget".to_owned(),
            PolicyChange::BillingPlan => "billing_plan".to_owned(),
            PolicyChange::Rollback { to } => format!("rollback to {to}"),
        }
    }
}

/// One version of a tenant's policy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyVersion {
    pub version: u64,
    pub at: UnixMillis,
    pub log_index: LogIndex,
    pub actor: Actor,
    pub request_id: Option<RequestId>,
    pub change: PolicyChange,
    /// The whole policy from this version on.
    pub policy: Policy,
}

/// A tenant's last `POLICY_VERSIONS_MAX` versions, oldest first.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyHistory {
    pub versions: VecDeque<PolicyVersion>,
}

impl PolicyHistory {
    /// The current version's number (0 only for a history never recorded).
    pub fn current(&self) -> u64 {
        self.versions.back().map_or(0, |v| v.version)
    }

    pub fn get(&self, version: u64) -> Option<&PolicyVersion> {
        let first = self.versions.front()?.version;
        let at = usize::try_from(version.checked_sub(first)?).ok()?;
        self.versions.get(at).filter(|v| v.version == version)
    }
}

/// Who proposed an entry, what it came with: the command's `request_id` and its token.
pub(super) struct Origin {
    pub index: LogIndex,
    pub request_id: Option<RequestId>,
    pub token: Option<TokenHash>,
}

impl Scheduler {
    /// Who an entry authorized by `token` (`None`: the admin) came from.
    pub fn actor(&self, token: Option<TokenHash>) -> Actor {
        match token {
            None => Actor::Admin,
            Some(hash) => match self.ix.tokens.get(&hash) {
                Some((_, name)) => Actor::Token(name.clone()),
                None => Actor::UnknownToken,
            },
        }
    }

    /// `tenant`'s policy as it stands.
    pub fn policy_of(&self, tenant: &TenantId) -> Option<Policy> {
        let t = self.state.tenants.get(tenant)?;
        Some(Policy {
            quota: t.quota.clone(),
            rate_limits: t.rate.as_ref().map(|r| r.limits),
            budget: t.budget.as_ref().map(|b| b.budget.clone()),
            billing_plan: t.billing_plan.clone(),
        })
    }

    /// Records `tenant`'s policy as it now stands as its next version.
    pub(super) fn record_policy(
        &mut self,
        tenant: &TenantId,
        change: PolicyChange,
        origin: Origin,
    ) {
        let Some(policy) = self.policy_of(tenant) else { return };
        let actor = self.actor(origin.token);
        let at = self.state.now;
        let Some(t) = self.state.tenants.get_mut(tenant) else { return };
        let history = &mut t.policy;
        let version = history.current().saturating_add(1);
        history.versions.push_back(PolicyVersion {
            version,
            at,
            log_index: origin.index,
            actor,
            request_id: origin.request_id,
            change,
            policy,
        });
        while history.versions.len() > POLICY_VERSIONS_MAX {
            history.versions.pop_front();
        }
    }

    /// `RollbackPolicy`: `to`'s policy, part by part through each part's own setter (a part
    /// equal to the current one is left alone), refused whole if any part is. Answers the
    /// version the rollback becomes (`apply_entry` records it next).
    pub(super) fn rollback_policy(
        &mut self,
        tenant: &TenantId,
        to: u64,
    ) -> Result<Response, Rejection> {
        let t = self.tenant(tenant)?;
        let target = t
            .policy
            .get(to)
            .ok_or_else(|| Rejection::PolicyVersionNotFound {
                tenant: tenant.clone(),
                version: to,
                oldest: t.policy.versions.front().map_or(0, |v| v.version),
            })?
            .policy
            .clone();
        // Every version passed its checks when it was made; a snapshot from a peer is checked
        // by `check_invariants`, and this checks again before any part changes.
        target.quota.validate()?;
        target.rate_limits.as_ref().map_or(Ok(()), RateLimits::validate)?;
        target.budget.as_ref().map_or(Ok(()), Budget::validate)?;
        let now = self.policy_of(tenant).expect("invariant: the tenant exists");
        // Checked before anything changes: the one setter after `set_quota` that can refuse.
        if let Some(plan) = &target.billing_plan {
            if !self.state.price_plans.contains_key(plan) {
                return Err(Rejection::PlanNotFound { plan: plan.clone() });
            }
        }
        if target.quota != now.quota {
            self.set_quota(tenant, target.quota)?;
        }
        if target.rate_limits != now.rate_limits {
            self.set_rate_limits(tenant, target.rate_limits)?;
        }
        if target.budget != now.budget {
            self.set_budget(tenant, target.budget)?;
        }
        if target.billing_plan != now.billing_plan {
            self.set_billing_plan(tenant, target.billing_plan)?;
        }
        let version = self.tenant(tenant)?.policy.current().saturating_add(1);
        Ok(Response::PolicyRolledBack { version })
    }
}
