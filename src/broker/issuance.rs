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
//!
//! The steps from the first commit to the hand-over run in a task of their own,
//! so that a caller who hangs up, or a request that times out, cannot cut them
//! short: every intent gets an outcome that tells the truth. If the caller is
//! gone before the cloud is called, nothing is minted (`abandoned`); if it is
//! gone once the credential exists, the credential is recorded and then
//! `withheld`, so its key id is in the log either way.

use std::sync::Arc;
use std::time::Duration;

use stackpass_provider::{
    federation, CloudProvider, Credential, ExchangeRequest, IssuanceFacts, Mode, ProviderError,
};
use time::OffsetDateTime;
use tokio::sync::oneshot;
use tracing::Instrument;
use uuid::Uuid;

use super::events::{Allowance, AllowedIssuance, Asked, Event, Recorder};
use super::resolve::Resolved;
use super::{BrokerError, CredentialRequest, Issued, RequestContext};
use crate::audit::Guarded;
use crate::identity::Principal;
use crate::issuer::{Issuer, SubjectToken, SubjectTokenRequest};
use crate::policy::{Denial, Grant, RuleMiss};

pub(super) struct Exchange {
    pub issuer: Issuer,
    pub recorder: Recorder,
    /// The longest the broker waits for a cloud, whatever the provider's own
    /// timeouts say: its share of the request timeout.
    pub cloud_budget: Duration,
}

impl Exchange {
    pub async fn run(
        &self,
        asked: &Asked<'_>,
        resolved: &Resolved,
        grant: Grant,
        allowance: Allowance,
        quota: Option<Guarded>,
        provider: &Arc<dyn CloudProvider>,
    ) -> Result<Issued, BrokerError> {
        provider
            .check_delivery(&grant.target, asked.request.mode, grant.duration)
            .map_err(BrokerError::InvalidRequest)?;
        let job = Job {
            context: asked.context.clone(),
            principal: asked.principal.clone(),
            request: asked.request.clone(),
            resolved: resolved.clone(),
            grant,
            allowance,
            quota,
            issuance_id: Uuid::new_v4(),
        };
        let (facts, claims) = job.with_issuance(|issuance| {
            let facts = issuance_facts(issuance);
            let claims = provider.subject_claims(&issuance.grant.target, &facts);
            (facts, claims)
        });
        let federation = asked.request.mode == Mode::Federation;
        let audience = claims.audience.clone();
        let subject_token = self.issuer.mint(&SubjectTokenRequest {
            facts: &facts,
            provider: claims,
            algorithm: provider.signing_algorithm(),
            lifetime: federation.then_some(job.grant.duration),
        })?;

        let (answer, answered) = oneshot::channel();
        let handover = Handover { answer };
        let recorder = self.recorder.clone();
        let provider = provider.clone();
        let cloud_budget = self.cloud_budget;
        // A child of the request's span: log lines and exported spans of the
        // issuance's own task carry both ids.
        let span = tracing::info_span!("issuance", issuance_id = %job.issuance_id,
            provider = %job.grant.provider, rule = %job.grant.rule);
        let task = async move {
            if federation {
                job.federate(recorder, handover, subject_token, audience, &provider)
                    .await;
            } else {
                job.exchange(
                    recorder,
                    handover,
                    subject_token,
                    facts,
                    &provider,
                    cloud_budget,
                )
                .await;
            }
        };
        tokio::spawn(task.instrument(span));
        answered
            .await
            .map_err(|_| BrokerError::IssuanceInterrupted)?
    }
}

/// Hands the result to the waiting request, if it is still waiting.
struct Handover {
    answer: oneshot::Sender<Result<Issued, BrokerError>>,
}

impl Handover {
    fn caller_gone(&self) -> bool {
        self.answer.is_closed()
    }

    fn fail(self, error: BrokerError) {
        let _ = self.answer.send(Err(error));
    }
}

/// One allowed issuance, owned, so that it can finish in its own task.
struct Job {
    context: RequestContext,
    principal: Principal,
    request: CredentialRequest,
    resolved: Resolved,
    grant: Grant,
    allowance: Allowance,
    /// An agent quota to hold when the issuance's first records commit.
    quota: Option<Guarded>,
    issuance_id: Uuid,
}

impl Job {
    fn asked(&self) -> Asked<'_> {
        Asked {
            context: &self.context,
            principal: &self.principal,
            request: &self.request,
        }
    }

    fn issuance<'a>(&'a self, asked: &'a Asked<'a>) -> AllowedIssuance<'a> {
        AllowedIssuance {
            asked,
            resolved: &self.resolved,
            grant: &self.grant,
            allowance: &self.allowance,
            issuance_id: self.issuance_id,
        }
    }

    fn with_issuance<T>(&self, f: impl FnOnce(&AllowedIssuance<'_>) -> T) -> T {
        let asked = self.asked();
        f(&self.issuance(&asked))
    }

    /// Credentials mode: intent, cloud exchange, outcome, hand-over.
    async fn exchange(
        &self,
        recorder: Recorder,
        handover: Handover,
        subject_token: SubjectToken,
        facts: IssuanceFacts,
        provider: &Arc<dyn CloudProvider>,
        cloud_budget: Duration,
    ) {
        let asked = self.asked();
        let issuance = &self.issuance(&asked);
        let intent = self
            .record_first(
                &recorder,
                &[
                    Event::Allowed(issuance),
                    Event::IssuanceIntent {
                        issuance,
                        subject_token_id: subject_token.jti,
                    },
                ],
            )
            .await;
        if let Err(error) = intent {
            return handover.fail(error);
        }
        if handover.caller_gone() {
            let abandoned = recorder
                .record(&[Event::IssuanceAbandoned { issuance }])
                .await;
            if let Err(error) = abandoned {
                tracing::error!(request_id = %self.context.request_id, issuance_id = %self.issuance_id,
                    %error, "could not record an abandoned issuance");
            }
            return;
        }

        let grant_ends = OffsetDateTime::now_utc() + self.grant.duration + EXPIRY_TOLERANCE;
        let exchange = provider.exchange(ExchangeRequest {
            subject_token: subject_token.token,
            target: self.grant.target.clone(),
            duration: self.grant.duration,
            session_policy: self.grant.session_policy.clone(),
            scopes: self.grant.scopes.clone(),
            facts,
        });
        let started = std::time::Instant::now();
        let result = tokio::time::timeout(cloud_budget, exchange)
            .instrument(tracing::info_span!("cloud_exchange", provider = %provider.kind()))
            .await
            .unwrap_or_else(|_| {
                Err(ProviderError::Unavailable {
                    provider: provider.kind(),
                    message: format!(
                        "no answer within the broker's {}s budget for the cloud call",
                        cloud_budget.as_secs()
                    ),
                })
            })
            .and_then(|credential| outlives_check(credential, grant_ends, provider));
        observe_exchange(provider.kind().as_str(), started, result.as_ref().err());
        let credential = match result {
            Ok(credential) => credential,
            Err(error) => {
                let failed = Event::IssuanceFailed {
                    issuance,
                    error: &error,
                };
                if let Err(audit_error) = recorder.record(&[failed]).await {
                    tracing::error!(request_id = %self.context.request_id, issuance_id = %self.issuance_id,
                        error = %audit_error, "could not record a failed issuance");
                }
                return handover.fail(error.into());
            }
        };
        let credential_id = credential.credential_id.clone();
        let issued = Event::Issued {
            issuance,
            credential_id: &credential_id,
            expires_at: credential.expires_at,
        };
        self.hand_over(
            issuance,
            &recorder,
            handover,
            vec![issued],
            credential,
            false,
        )
        .await;
    }

    /// Federation mode: the subject token is the credential. It lives as long as
    /// the grant, so the caller's tools can exchange it when they need to; the
    /// cloud still decides what it is good for (audience, subject).
    async fn federate(
        &self,
        recorder: Recorder,
        handover: Handover,
        token: SubjectToken,
        audience: String,
        provider: &Arc<dyn CloudProvider>,
    ) {
        let asked = self.asked();
        let issuance = &self.issuance(&asked);
        let mut credential = Credential::new(token.jti.to_string(), token.expires_at)
            .public(
                federation::TOKEN_TYPE,
                Some(federation::JWT_TOKEN_TYPE.into()),
            )
            .public(federation::AUDIENCE, Some(audience.clone()));
        for (name, value) in provider.federation_fields(&self.grant.target) {
            credential = credential.public(name, value);
        }
        let credential = credential.secret(federation::SUBJECT_TOKEN, token.token);
        // The decision and the outcome are one commit: nothing is minted at a cloud.
        let outcome = vec![
            Event::Allowed(issuance),
            Event::Federated {
                issuance,
                subject_token_id: token.jti,
                audience: &audience,
                expires_at: token.expires_at,
            },
        ];
        self.hand_over(issuance, &recorder, handover, outcome, credential, true)
            .await;
    }

    /// Commits the outcome (and, if the caller is already gone, that the
    /// credential was withheld), then hands the credential over; a caller that
    /// leaves between the commit and the hand-over is recorded too.
    /// Commits the issuance's first records (its decision with the intent,
    /// or with the federation outcome), holding the agent's quota under the
    /// chain lock if it has one: when a concurrent request took the last
    /// issuance in the window, nothing is written and the caller is told to
    /// ask again (the next answer carries the real `Retry-After`).
    async fn record_first(
        &self,
        recorder: &Recorder,
        events: &[Event<'_>],
    ) -> Result<(), BrokerError> {
        let Some(quota) = &self.quota else {
            return Ok(recorder.record(events).await?);
        };
        if recorder.record_guarded(quota.clone(), events).await? {
            return Ok(());
        }
        let message = "quota: a request at the same moment took the agent's last issuance in this window; ask again to learn when one frees up";
        let label = self
            .grant
            .agent_bounds
            .as_ref()
            .map(|bounds| crate::policy::bounds_label(&bounds.entry));
        let denial = Denial {
            summary: message.into(),
            denied_by: label.clone(),
            rules: label
                .into_iter()
                .map(|rule| RuleMiss {
                    rule,
                    reasons: vec![message.into()],
                })
                .collect(),
        };
        recorder
            .record(&[Event::Denied {
                asked: &self.asked(),
                resolved: &self.resolved,
                denial: &denial,
                dry_run: false,
            }])
            .await?;
        Err(BrokerError::QuotaExceeded {
            retry_after: Duration::from_secs(1),
            message: message.into(),
        })
    }

    async fn hand_over(
        &self,
        issuance: &AllowedIssuance<'_>,
        recorder: &Recorder,
        handover: Handover,
        mut outcome: Vec<Event<'_>>,
        credential: Credential,
        first: bool,
    ) {
        let credential_id = credential.credential_id.clone();
        let withheld = || Event::IssuanceWithheld {
            issuance,
            credential_id: &credential_id,
        };
        let gone = handover.caller_gone();
        if gone {
            outcome.push(withheld());
        }
        let recorded = if first {
            self.record_first(recorder, &outcome).await
        } else {
            recorder.record(&outcome).await.map_err(Into::into)
        };
        if let Err(error) = recorded {
            // The credential exists but is dropped here, unseen: without a
            // committed record it must not reach the caller.
            tracing::error!(request_id = %self.context.request_id, issuance_id = %self.issuance_id,
                %credential_id, %error,
                "issued credential withheld: its audit record could not be committed");
            return handover.fail(error);
        }
        if gone {
            return;
        }
        if let Err(Ok(_unseen)) = handover
            .answer
            .send(Ok(issued_credential(issuance, credential)))
        {
            if let Err(error) = recorder.record(&[withheld()]).await {
                tracing::error!(request_id = %self.context.request_id, issuance_id = %self.issuance_id,
                    %credential_id, %error, "could not record a withheld credential");
            }
        }
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
        actor_chain: principal.actors().into_iter().map(str::to_owned).collect(),
        stack: resolved.stack.reference.to_string(),
        component: resolved.component.as_ref().map(ToString::to_string),
        component_name: resolved.component.as_ref().map(|c| c.name().to_owned()),
        owner: resolved.owner.as_ref().map(ToString::to_string),
        environment: resolved.environment.clone(),
        rule: issuance.grant.rule.clone(),
        session_tags: issuance.grant.session_tags.clone(),
    }
}

/// The cloud call's latency and, when it failed, the cloud's error code on
/// `/metrics`. Codes come from the cloud's answer, so they are cut to a short
/// plain token: a misbehaving endpoint cannot make the label set grow without
/// bound or carry text into the page.
fn observe_exchange(provider: &str, started: std::time::Instant, error: Option<&ProviderError>) {
    use crate::metrics::{CLOUD_EXCHANGE_ERRORS, CLOUD_EXCHANGE_SECONDS};
    let provider = provider.to_owned();
    let result = if error.is_some() { "error" } else { "ok" };
    metrics::histogram!(CLOUD_EXCHANGE_SECONDS, "provider" => provider.clone(), "result" => result)
        .record(started.elapsed().as_secs_f64());
    let Some(error) = error else { return };
    let code = match error {
        ProviderError::Rejected { code, .. } => error_code_label(code),
        ProviderError::Unavailable { .. } => "unavailable".to_owned(),
        ProviderError::InvalidResponse { .. } => "invalid_response".to_owned(),
    };
    metrics::counter!(CLOUD_EXCHANGE_ERRORS, "provider" => provider, "code" => code).increment(1);
}

fn error_code_label(code: &str) -> String {
    let plain = !code.is_empty()
        && code.len() <= 64
        && code
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if plain {
        code.to_owned()
    } else {
        "other".to_owned()
    }
}
