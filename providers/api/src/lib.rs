//! The boundary between the broker and a cloud: the [`CloudProvider`] trait, the
//! exchange request the broker hands a provider, and the [`Credential`] a provider
//! hands back. Secret material only ever lives in `secrecy` types here, so a
//! provider cannot accidentally log or serialize it.

use std::fmt;
use std::time::Duration;

use secrecy::SecretString;
use time::OffsetDateTime;

/// The clouds stackpass knows how to talk to. Parsing is strict so that an unknown
/// provider in a request or a rule is an error, never a silent default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    Aws,
    Gcp,
    Azure,
}

impl ProviderKind {
    pub const ALL: [ProviderKind; 3] = [ProviderKind::Aws, ProviderKind::Gcp, ProviderKind::Azure];

    pub fn as_str(self) -> &'static str {
        match self {
            ProviderKind::Aws => "aws",
            ProviderKind::Gcp => "gcp",
            ProviderKind::Azure => "azure",
        }
    }
}

impl fmt::Display for ProviderKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for ProviderKind {
    type Err = UnknownProvider;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ProviderKind::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| UnknownProvider(s.to_owned()))
    }
}

#[derive(Debug, thiserror::Error)]
#[error("unknown provider {0:?}: expected one of aws, gcp, azure")]
pub struct UnknownProvider(pub String);

/// Everything a provider needs to turn a subject token into a cloud credential.
/// The broker has already authenticated, authorized and audited the intent.
#[derive(Debug)]
pub struct ExchangeRequest {
    /// The short-lived JWT stackpass signed for this provider's audience.
    pub subject_token: SecretString,
    /// Role ARN, service account or client id, already rendered from the grant.
    pub role: String,
    /// A name the cloud shows in its own logs (AWS RoleSessionName).
    pub session_name: String,
    pub duration: Duration,
    /// Inline session policy (JSON) that narrows the role further, if the grant has one.
    pub session_policy: Option<String>,
}

/// What a cloud returned. `Debug` never prints secret material.
#[derive(Debug)]
pub struct Credential {
    pub provider: ProviderKind,
    /// A non-secret identifier that the cloud's own logs also show (AWS access key id),
    /// so the audit log can be joined with CloudTrail and friends.
    pub credential_id: String,
    pub expires_at: OffsetDateTime,
    pub secret: CredentialSecret,
}

#[derive(Debug)]
pub enum CredentialSecret {
    Aws {
        access_key_id: String,
        secret_access_key: SecretString,
        session_token: SecretString,
        /// The assumed-role ARN AWS reports for the session.
        assumed_role_arn: Option<String>,
    },
}

/// Why an exchange failed, split by who has to act: the cloud said no (fix the trust
/// policy or role), or the cloud could not be reached (retry later).
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    #[error("{provider} rejected the request ({code}): {message}")]
    Rejected {
        provider: ProviderKind,
        /// The cloud's own error code, e.g. `InvalidIdentityToken`.
        code: String,
        message: String,
    },
    #[error("{provider} could not be reached: {message}")]
    Unavailable {
        provider: ProviderKind,
        message: String,
    },
    #[error("{provider} returned a response stackpass could not use: {message}")]
    InvalidResponse {
        provider: ProviderKind,
        message: String,
    },
}

/// One cloud. Implementations hold their own HTTP clients and configuration and are
/// shared across requests.
#[async_trait::async_trait]
pub trait CloudProvider: Send + Sync {
    fn kind(&self) -> ProviderKind;

    /// The `aud` the subject token must carry for this cloud. Each relying party gets
    /// its own audience so a token minted for one cloud is useless at another.
    fn audience(&self) -> &str;

    async fn exchange(&self, request: ExchangeRequest) -> Result<Credential, ProviderError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provider_kind_parses_only_known_names() {
        assert_eq!("aws".parse::<ProviderKind>().unwrap(), ProviderKind::Aws);
        assert_eq!("gcp".parse::<ProviderKind>().unwrap(), ProviderKind::Gcp);
        assert!("AWS".parse::<ProviderKind>().is_err());
        assert!("".parse::<ProviderKind>().is_err());
        assert!("oracle".parse::<ProviderKind>().is_err());
    }
}
