//! In-process fakes for unit tests: a cloud that accepts any target, so policy
//! and broker logic can be tested without a provider crate or the network.

use std::sync::Arc;
use std::time::Duration;

use stackpass_provider::{
    CloudProvider, Credential, ExchangeRequest, IssuanceFacts, Limits, ProviderError, ProviderKind,
    SubjectClaims, Target,
};

/// A cloud named `kind` with STS-like limits that takes any target without
/// spaces, session policies that are JSON objects and any session tag.
pub struct FakeCloud {
    pub kind: ProviderKind,
}

impl FakeCloud {
    pub fn named(kind: &'static str) -> Arc<dyn CloudProvider> {
        Arc::new(FakeCloud {
            kind: ProviderKind::from_static(kind),
        })
    }
}

#[async_trait::async_trait]
impl CloudProvider for FakeCloud {
    fn kind(&self) -> ProviderKind {
        self.kind.clone()
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
        if text.is_empty() || text.contains(char::is_whitespace) {
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

    fn subject_claims(&self, _target: &Target, _facts: &IssuanceFacts) -> SubjectClaims {
        SubjectClaims {
            audience: format!("{}-audience", self.kind),
            claims: serde_json::Map::new(),
        }
    }

    async fn exchange(&self, request: ExchangeRequest) -> Result<Credential, ProviderError> {
        Ok(Credential::new(
            format!("fake-{}", request.facts.issuance_id),
            time::OffsetDateTime::now_utc() + request.duration,
        ))
    }
}
