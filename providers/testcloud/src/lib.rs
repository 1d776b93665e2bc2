//! testcloud: a fake cloud that exists only to prove the provider boundary. It
//! plugs into the broker through one cargo feature (`testcloud`, off by
//! default) and one registry line, and exercises every part of the boundary a
//! real cloud uses: its own `[providers.testcloud]` table, typed targets
//! (`project/NAME`), its own duration limits, a claim of its own in the subject
//! token, a credential with public and secret fields, and an `env` format.
//!
//! Its "exchange" checks what a relying party checks that it can without keys
//! (the audience and its own claim) and answers with a random token whose id is
//! the subject token's `jti`, so tests can tie the credential to the audit
//! log's intent. It talks to nothing: never enable it in a deployed build.

use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use stackpass_provider::{
    parse_settings, pattern_parts, CloudProvider, Credential, ExchangeRequest, IssuanceFacts,
    Limits, OutputFormat, PatternPart, ProviderError, ProviderFactory, ProviderKind,
    ReceivedCredential, SettingProblem, SettingsContext, SigningAlgorithm, SubjectClaims, Target,
    TrustContext,
};

pub const KIND: ProviderKind = ProviderKind::from_static("testcloud");
pub const PROJECT_CLAIM: &str = "https://testcloud.example/project";

const LIMITS: Limits = Limits {
    min_duration: Duration::from_secs(60),
    max_duration: Duration::from_secs(2 * 3600),
    default_duration: Duration::from_secs(600),
};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    #[serde(default = "default_audience")]
    audience: String,
    /// `ES256` (default) or `RS256`, so tests can have the broker sign with
    /// either of its algorithms.
    #[serde(default)]
    signing_algorithm: Option<String>,
}

fn default_audience() -> String {
    "testcloud".into()
}

/// A project, the testcloud target: `project/NAME`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Project(pub String);

fn name_char(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'
}

fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 40 && name.chars().all(name_char)
}

/// The registry's entry for testcloud.
pub struct Testcloud;

impl ProviderFactory for Testcloud {
    fn kind(&self) -> ProviderKind {
        KIND
    }

    fn configure(
        &self,
        table: serde_json::Value,
        _context: &SettingsContext,
    ) -> Result<Arc<dyn CloudProvider>, Vec<SettingProblem>> {
        let settings: Settings = parse_settings(table)?;
        if settings.audience.is_empty() {
            return Err(vec![SettingProblem::new("audience", "must not be empty")]);
        }
        let signing_algorithm = match settings.signing_algorithm.as_deref() {
            None => SigningAlgorithm::default(),
            Some(text) => SigningAlgorithm::ALL
                .into_iter()
                .find(|a| a.as_str() == text)
                .ok_or_else(|| {
                    vec![SettingProblem::new(
                        "signing_algorithm",
                        format!("{text:?} is not ES256 or RS256"),
                    )]
                })?,
        };
        Ok(Arc::new(TestcloudProvider {
            audience: settings.audience,
            signing_algorithm,
        }))
    }

    fn output_formats(&self) -> &'static [OutputFormat] {
        const FORMATS: &[OutputFormat] = &[OutputFormat::credentials("env")];
        FORMATS
    }

    fn render(&self, format: &str, credential: &ReceivedCredential) -> Result<String, String> {
        match format {
            "env" => Ok(format!(
                "export TESTCLOUD_TOKEN={}\nexport TESTCLOUD_PROJECT={}",
                credential.field("token")?.expose_secret(),
                credential.field("project")?.expose_secret(),
            )),
            other => Err(format!(
                "testcloud credentials cannot be printed as {other}"
            )),
        }
    }
}

struct TestcloudProvider {
    audience: String,
    signing_algorithm: SigningAlgorithm,
}

#[async_trait::async_trait]
impl CloudProvider for TestcloudProvider {
    fn kind(&self) -> ProviderKind {
        KIND
    }

    fn limits(&self) -> Limits {
        LIMITS
    }

    fn target_syntax(&self) -> &'static str {
        "project/NAME"
    }

    fn check_target_pattern(&self, pattern: &str) -> Result<(), String> {
        let parts = pattern_parts(pattern);
        let ok = match parts.split_first() {
            Some((PatternPart::Literal(first), rest)) => {
                first.strip_prefix("project/").is_some_and(|name| {
                    let mut literals =
                        std::iter::once(name).chain(rest.iter().filter_map(|part| match part {
                            PatternPart::Literal(text) => Some(*text),
                            PatternPart::Hole => None,
                        }));
                    (!name.is_empty() || !rest.is_empty())
                        && literals.all(|text| text.chars().all(name_char))
                })
            }
            _ => false,
        };
        if ok {
            Ok(())
        } else {
            Err(format!(
                "{pattern:?} is not a testcloud project; write project/NAME"
            ))
        }
    }

    fn trust_setup(&self, context: &TrustContext<'_>) -> String {
        format!(
            "testcloud trusts issuer {} for audience {} (projects: {})",
            context.issuer_url,
            self.audience,
            context.targets.join(", ")
        )
    }

    fn parse_target(&self, text: &str) -> Result<Target, String> {
        match text.strip_prefix("project/") {
            Some(name) if valid_name(name) => Ok(Target::new(text, Project(name.to_owned()))),
            _ => Err(format!(
                "{text:?} is not a testcloud project; write project/NAME"
            )),
        }
    }

    fn signing_algorithm(&self) -> SigningAlgorithm {
        self.signing_algorithm
    }

    fn claims_supported(&self) -> &'static [&'static str] {
        &[PROJECT_CLAIM]
    }

    fn subject_claims(&self, target: &Target, _facts: &IssuanceFacts) -> SubjectClaims {
        let mut claims = serde_json::Map::new();
        if let Some(project) = target.parsed::<Project>() {
            claims.insert(PROJECT_CLAIM.into(), project.0.clone().into());
        }
        SubjectClaims {
            audience: self.audience.clone(),
            claims,
            ..SubjectClaims::default()
        }
    }

    async fn exchange(&self, request: ExchangeRequest) -> Result<Credential, ProviderError> {
        let rejected = |message: &str| ProviderError::Rejected {
            provider: KIND,
            code: "InvalidToken".into(),
            message: message.into(),
            hint: "testcloud trusts only tokens for its configured audience".into(),
        };
        let project = request
            .target
            .parsed::<Project>()
            .ok_or_else(|| rejected("the target is not a testcloud project"))?;
        let claims: serde_json::Value = request
            .subject_token
            .expose_secret()
            .split('.')
            .nth(1)
            .and_then(|payload| URL_SAFE_NO_PAD.decode(payload).ok())
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .ok_or_else(|| rejected("the subject token is not a JWT"))?;
        if claims["aud"] != self.audience.as_str() {
            return Err(rejected("the subject token is for another audience"));
        }
        if claims[PROJECT_CLAIM] != project.0.as_str() {
            return Err(rejected("the subject token names another project"));
        }
        let jti = claims["jti"]
            .as_str()
            .ok_or_else(|| rejected("the subject token has no jti"))?;
        let expires_at = time::OffsetDateTime::now_utc() + request.duration;
        let token = format!("tc.{}.{}", project.0, random_suffix(jti));
        Ok(Credential::new(jti, expires_at)
            .public("project", Some(project.0.clone()))
            .secret("token", SecretString::from(token)))
    }
}

/// Some unpredictable text, so tests can check the secret never leaks.
fn random_suffix(seed: &str) -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write(seed.as_bytes());
    format!("{:016x}", hasher.finish())
}
