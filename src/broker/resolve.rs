//! Resolve and decide: everything the policy needs about one request, read
//! from trusted sources (the stack and its tags from the stack source, the
//! component's owner and the requester's groups from the catalog), then the
//! pure decision under the policy in force.

use std::sync::Arc;

use super::{BrokerError, CredentialRequest};
use crate::catalog::{Catalog, EntityRef};
use crate::identity::Principal;
use crate::policy::{self, AgentBounds, AgentRequest, Decision, LivePolicy, PolicyInput};
use crate::stacks::{ComponentTags, Stack, StackRef, StackSource};

/// One request's facts, resolved from trusted sources before the policy decides.
#[derive(Debug, Clone)]
pub(super) struct Resolved {
    /// The requester, with their groups from the catalog.
    pub principal: Principal,
    pub stack: Stack,
    pub component: Option<EntityRef>,
    pub owner: Option<EntityRef>,
    pub environment: Option<String>,
}

pub(super) struct Resolver {
    pub stacks: Arc<dyn StackSource>,
    pub catalog: Arc<dyn Catalog>,
    pub policy: Arc<LivePolicy>,
    /// The stack tags that name the catalog component (per tool: each tool's
    /// source has its own key) and the environment.
    pub component_tags: ComponentTags,
    pub environment_tag: String,
}

impl Resolver {
    /// The facts about `stack` and `principal`, or `None` when the stack source
    /// does not know the stack.
    pub async fn resolve(
        &self,
        principal: Principal,
        stack: &StackRef,
    ) -> Result<Option<Resolved>, BrokerError> {
        let Some(stack) = self.stacks.stack(stack).await? else {
            return Ok(None);
        };
        let component_tag = self.component_tags.for_tool(stack.reference.tool());
        let component = stack.tags.get(component_tag).and_then(|value| {
            EntityRef::parse(value, Some("component"), "default")
                .inspect_err(|e| tracing::warn!(stack = %stack.reference, error = %e, "stack's component tag is not an entity reference"))
                .ok()
        });
        let (owner, groups) = tokio::join!(
            async {
                match &component {
                    Some(component) => self.catalog.owner_of(component).await,
                    None => Ok(None),
                }
            },
            self.catalog.groups_of(&principal.subject)
        );
        let environment = stack.tags.get(&self.environment_tag).cloned();
        Ok(Some(Resolved {
            principal: Principal {
                groups: groups?,
                ..principal
            },
            stack,
            component,
            owner: owner?,
            environment,
        }))
    }

    /// The decision for the requester; for an agent, the person's decision
    /// (the rules with the person's identity and groups, the requester kind
    /// staying `agent` so rules can single agents out) narrowed by the
    /// agent's bounds.
    #[tracing::instrument(name = "decide", skip_all)]
    pub fn decide(&self, resolved: &Resolved, request: &CredentialRequest) -> Decision {
        let policy = self.policy.snapshot();
        let person = policy::decide(
            &policy.rules,
            &PolicyInput {
                principal: &resolved.principal,
                stack: &resolved.stack,
                component: resolved.component.as_ref(),
                owner: resolved.owner.as_ref(),
                environment: resolved.environment.as_deref(),
                provider: &request.provider,
                requested_duration: request.duration,
            },
        );
        match policy::agent_of(&resolved.principal) {
            Some(agent) => policy::narrow(
                person,
                &AgentRequest {
                    agent: &agent,
                    provider: &request.provider,
                    requested_duration: request.duration,
                },
                &policy.agents,
            ),
            None => person,
        }
    }

    /// The agent making the request and the bounds entry that applies to it.
    pub fn agent_bounds(
        &self,
        principal: &Principal,
        request: &CredentialRequest,
    ) -> Option<(String, AgentBounds)> {
        let agent = policy::agent_of(principal)?;
        let policy = self.policy.snapshot();
        let entry = policy::bounds_for(&policy.agents, &agent, &request.provider)?.clone();
        Some((agent, entry))
    }
}
