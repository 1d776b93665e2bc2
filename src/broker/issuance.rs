//! Issuance, once the decision allows it: mint the subject token, commit the
//! decision and the intent, exchange the token at the cloud, commit the
//! outcome, and only then hand the credential back.
//!
//! In federation mode the subject token is the credential: it is minted for
//! the grant's duration and committed with the decision; no cloud is called.
//!
//! Invariant: a credential leaves this module only after its outcome record is
//! committed. A failed intent write means no cloud call; a failed outcome write
//! means the credential is dropped unseen (its intent record shows it was about
//! to be minted).

use std::sync::Arc;

use stackpass_provider::{
    federation, CloudProvider, Credential, ExchangeRequest, IssuanceFacts, Mode, ProviderError,
    SubjectClaims,
};
use time::OffsetDateTime;
use uuid::Uuid;

use super::events::{Allowance, AllowedIssuance, Asked, Event, Recorder};
use super::resolve::Resolved;
use super::{BrokerError, Issued};
use crate::issuer::{Issuer, SubjectTokenRequest};
use crate::policy::Grant;

pub(super) struct Exchange {
    pub issuer: Issuer,
    pub recorder: Recorder,
}

impl Exchange {
    pub async fn run(
        &self,
        asked: &Asked<'_>,
        resolved: &Resolved,
        grant: Grant,
        allowance: Allowance,
        provider: &Arc<dyn CloudProvider>,
    ) -> Result<Issued, BrokerError> {
        provider
            .check_delivery(&grant.target, asked.request.mode, grant.duration)
            .map_err(BrokerError::InvalidRequest)?;
        let issuance = AllowedIssuance {
            asked,
            resolved,
            grant: &grant,
            allowance: &allowance,
            issuance_id: Uuid::new_v4(),
        };
        let facts = issuance_facts(&issuance);
        let claims = provider.subject_claims(&grant.target, &facts);
        if asked.request.mode == Mode::Federation {
            return self.federate(&issuance, &facts, claims, provider).await;
        }
        let subject_token = self.issuer.mint(&SubjectTokenRequest {
            facts: &facts,
            provider: claims,
            algorithm: provider.signing_algorithm(),
            lifetime: None,
        })?;
        self.recorder
            .record(&[
                Event::Allowed(&issuance),
                Event::IssuanceIntent {
                    issuance: &issuance,
                    subject_token_id: subject_token.jti,
                },
            ])
            .await?;

        let grant_ends = OffsetDateTime::now_utc() + grant.duration + EXPIRY_TOLERANCE;
        let result = provider
            .exchange(ExchangeRequest {
                subject_token: subject_token.token,
                target: grant.target.clone(),
                duration: grant.duration,
                session_policy: grant.session_policy.clone(),
                facts,
            })
            .await
            .and_then(|credential| outlives_check(credential, grant_ends, provider));
        let credential = match result {
            Ok(credential) => credential,
            Err(error) => {
                let failed = Event::IssuanceFailed {
                    issuance: &issuance,
                    error: &error,
                };
                if let Err(audit_error) = self.recorder.record(&[failed]).await {
                    tracing::error!(request_id = %asked.context.request_id, issuance_id = %issuance.issuance_id,
                        error = %audit_error, "could not record a failed issuance");
                }
                return Err(error.into());
            }
        };

        let issued = Event::Issued {
            issuance: &issuance,
            credential_id: &credential.credential_id,
            expires_at: credential.expires_at,
        };
        if let Err(error) = self.recorder.record(&[issued]).await {
            // The credential exists at the cloud but is dropped here, unseen: without
            // a committed record it must not reach the caller.
            tracing::error!(request_id = %asked.context.request_id, issuance_id = %issuance.issuance_id,
                credential_id = %credential.credential_id, %error,
                "issued credential withheld: its audit record could not be committed");
            return Err(error.into());
        }
        Ok(issued_credential(&issuance, credential))
    }

    /// Federation mode: the subject token is the credential. It lives as long as
    /// the grant, so the caller's tools can exchange it when they need to; the
    /// cloud still decides what it is good for (audience, subject).
    async fn federate(
        &self,
        issuance: &AllowedIssuance<'_>,
        facts: &IssuanceFacts,
        claims: SubjectClaims,
        provider: &Arc<dyn CloudProvider>,
    ) -> Result<Issued, BrokerError> {
        let audience = claims.audience.clone();
        let token = self.issuer.mint(&SubjectTokenRequest {
            facts,
            provider: claims,
            algorithm: provider.signing_algorithm(),
            lifetime: Some(issuance.grant.duration),
        })?;
        self.recorder
            .record(&[
                Event::Allowed(issuance),
                Event::Federated {
                    issuance,
                    subject_token_id: token.jti,
                    audience: &audience,
                    expires_at: token.expires_at,
                },
            ])
            .await?;
        let mut credential = Credential::new(token.jti.to_string(), token.expires_at)
            .public(
                federation::TOKEN_TYPE,
                Some(federation::JWT_TOKEN_TYPE.into()),
            )
            .public(federation::AUDIENCE, Some(audience));
        for (name, value) in provider.federation_fields(&issuance.grant.target) {
            credential = credential.public(name, value);
        }
        Ok(issued_credential(
            issuance,
            credential.secret(federation::SUBJECT_TOKEN, token.token),
        ))
    }
}

/// Clock skew between the broker and the cloud that a credential's expiry may
/// show without counting as longer than the grant.
const EXPIRY_TOLERANCE: std::time::Duration = std::time::Duration::from_secs(60);

/// A credential must not outlive its grant: if the cloud issued a longer one
/// anyway, it is withheld and the failure audited.
fn outlives_check(
    credential: Credential,
    grant_ends: OffsetDateTime,
    provider: &Arc<dyn CloudProvider>,
) -> Result<Credential, ProviderError> {
    if credential.expires_at <= grant_ends {
        return Ok(credential);
    }
    Err(ProviderError::InvalidResponse {
        provider: provider.kind(),
        message: format!(
            "the cloud issued a credential that expires at {}, after the grant ends; it was withheld",
            credential.expires_at
        ),
    })
}

fn issued_credential(issuance: &AllowedIssuance<'_>, credential: Credential) -> Issued {
    let grant = issuance.grant;
    Issued {
        issuance_id: issuance.issuance_id,
        requester: issuance.resolved.principal.subject.clone(),
        stack: issuance.resolved.stack.reference.clone(),
        expires_at: credential.expires_at,
        rule: grant.rule.clone(),
        provider: grant.provider.clone(),
        target: grant.target.clone(),
        duration: grant.duration,
        credential,
    }
}

/// What the provider may put into the subject token and show the cloud.
fn issuance_facts(issuance: &AllowedIssuance<'_>) -> IssuanceFacts {
    let resolved = issuance.resolved;
    let principal = &resolved.principal;
    IssuanceFacts {
        issuance_id: issuance.issuance_id.to_string(),
        requester: principal.subject.to_string(),
        requester_kind: principal.kind.as_str().to_owned(),
        actor: principal.actor.clone(),
        stack: resolved.stack.reference.to_string(),
        component: resolved.component.as_ref().map(ToString::to_string),
        component_name: resolved.component.as_ref().map(|c| c.name().to_owned()),
        owner: resolved.owner.as_ref().map(ToString::to_string),
        environment: resolved.environment.clone(),
        rule: issuance.grant.rule.clone(),
        session_tags: issuance.grant.session_tags.clone(),
    }
}
