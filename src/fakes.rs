//! In-process fakes for unit tests: a cloud that accepts any target and counts
//! its calls, and an audit store that can be told to stop writing, so policy and
//! broker logic can be tested without a provider crate, the network or a full
//! disk.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use stackpass_provider::{
    CloudProvider, Credential, ExchangeRequest, IssuanceFacts, Limits, ProviderError, ProviderKind,
    SubjectClaims, Target, TrustContext,
};

use crate::audit::{AuditError, AuditPage, AuditQuery, AuditRecord, AuditStore, Guarded};

/// A cloud named `kind` with STS-like limits that takes any target without
/// spaces or `-bad-` in it, session policies that are JSON objects and any
/// session tag.
#[derive(Default)]
pub struct FakeCloud {
    pub kind: Option<ProviderKind>,
    /// Refuse every exchange, as a cloud whose trust policy does not match.
    pub refuse: AtomicBool,
    /// Issue credentials an hour longer than asked, as a cloud that decides
    /// lifetimes itself would.
    pub overissue: AtomicBool,
    pub calls: AtomicUsize,
    /// The subject tokens it was given, to check their claims.
    pub tokens: Mutex<Vec<SecretString>>,
    /// The session policy of each exchange, in order.
    pub session_policies: Mutex<Vec<Option<String>>>,
}

impl FakeCloud {
    pub fn named(kind: &'static str) -> Arc<dyn CloudProvider> {
        Self::shared(kind)
    }

    pub fn shared(kind: &'static str) -> Arc<FakeCloud> {
        Arc::new(FakeCloud {
            kind: Some(ProviderKind::from_static(kind)),
            ..FakeCloud::default()
        })
    }

    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    /// The claims of the last subject token it was given.
    pub fn last_claims(&self) -> serde_json::Value {
        use base64::Engine;
        let tokens = self.tokens.lock().unwrap();
        let token = tokens.last().expect("no exchange yet");
        let payload = token.expose_secret().split('.').nth(1).unwrap();
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap();
        serde_json::from_slice(&bytes).unwrap()
    }
}

#[async_trait::async_trait]
impl CloudProvider for FakeCloud {
    fn kind(&self) -> ProviderKind {
        self.kind.clone().expect("a fake cloud has a name")
    }

    fn limits(&self) -> Limits {
        Limits {
            min_duration: Duration::from_secs(900),
            max_duration: Duration::from_secs(43_200),
            default_duration: Duration::from_secs(900),
        }
    }

    fn target_syntax(&self) -> &'static str {
        "ANYTHING"
    }

    fn check_target_pattern(&self, pattern: &str) -> Result<(), String> {
        self.parse_target(pattern).map(|_| ())
    }

    fn parse_target(&self, text: &str) -> Result<Target, String> {
        if text.is_empty() || text.contains(char::is_whitespace) || text.contains("-bad-") {
            Err(format!("{text:?} is not a target"))
        } else {
            Ok(Target::new(text, ()))
        }
    }

    fn check_session_policy(&self, sample: &str) -> Result<(), String> {
        match serde_json::from_str::<serde_json::Value>(sample) {
            Ok(value) if value.is_object() => Ok(()),
            _ => Err("session_policy must be a JSON policy document (an object)".into()),
        }
    }

    fn check_session_tag_key(&self, _key: &str) -> Result<(), String> {
        Ok(())
    }

    fn trust_setup(&self, context: &TrustContext<'_>) -> String {
        format!("trust {}", context.issuer_url)
    }

    fn subject_claims(&self, _target: &Target, _facts: &IssuanceFacts) -> SubjectClaims {
        SubjectClaims {
            audience: format!("{}-audience", self.kind()),
            claims: serde_json::Map::new(),
            ..SubjectClaims::default()
        }
    }

    async fn exchange(&self, request: ExchangeRequest) -> Result<Credential, ProviderError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.tokens.lock().unwrap().push(request.subject_token);
        self.session_policies
            .lock()
            .unwrap()
            .push(request.session_policy.clone());
        if self.refuse.load(Ordering::SeqCst) {
            return Err(ProviderError::Rejected {
                provider: self.kind(),
                code: "InvalidIdentityToken".into(),
                message: "no provider for this issuer".into(),
                hint: "trust this broker's issuer".into(),
            });
        }
        let extra = if self.overissue.load(Ordering::SeqCst) {
            Duration::from_secs(3600)
        } else {
            Duration::ZERO
        };
        Ok(Credential::new(
            format!("fake-{}", request.facts.issuance_id),
            time::OffsetDateTime::now_utc() + request.duration + extra,
        )
        .secret("token", SecretString::from("fake-secret".to_owned())))
    }
}

/// An audit store over a real one that refuses appends once `allowed` more
/// have gone through, as a full disk would.
pub struct FailingAudit {
    pub inner: Arc<dyn AuditStore>,
    pub allowed: Mutex<Option<usize>>,
}

impl FailingAudit {
    pub fn over(inner: Arc<dyn AuditStore>) -> Arc<FailingAudit> {
        Arc::new(FailingAudit {
            inner,
            allowed: Mutex::new(None),
        })
    }

    /// Let `appends` more appends through, then fail every one after.
    pub fn fail_after(&self, appends: usize) {
        *self.allowed.lock().unwrap() = Some(appends);
    }
}

impl FailingAudit {
    fn take_one(&self) -> Result<(), AuditError> {
        let mut allowed = self.allowed.lock().unwrap();
        match allowed.as_mut() {
            Some(0) => Err(AuditError::Write("disk full".into())),
            Some(n) => {
                *n -= 1;
                Ok(())
            }
            None => Ok(()),
        }
    }
}

#[async_trait::async_trait]
impl AuditStore for FailingAudit {
    async fn append(&self, records: Vec<AuditRecord>) -> Result<(), AuditError> {
        self.take_one()?;
        self.inner.append(records).await
    }

    async fn append_guarded(
        &self,
        change: Guarded,
        records: Vec<AuditRecord>,
    ) -> Result<bool, AuditError> {
        self.take_one()?;
        self.inner.append_guarded(change, records).await
    }

    async fn ping(&self) -> Result<(), AuditError> {
        self.inner.ping().await
    }

    async fn agent_issuances(
        &self,
        filter: &crate::audit::IssuanceFilter,
        since: time::OffsetDateTime,
    ) -> Result<Vec<time::OffsetDateTime>, AuditError> {
        self.inner.agent_issuances(filter, since).await
    }

    async fn query(&self, query: &AuditQuery) -> Result<AuditPage, AuditError> {
        self.inner.query(query).await
    }
}
