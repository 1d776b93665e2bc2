//! How a provider's credential travels in an RFC 8693 token-exchange answer
//! (`POST /oauth2/token`): the URN an agent names as `requested_token_type`,
//! and the credential as the answer's one `access_token` string. Each
//! provider names its own, so the core's token endpoint names no cloud.

use secrecy::{ExposeSecret, SecretString};

use crate::{Credential, CredentialField};

/// Every provider's token type starts here, e.g.
/// `urn:stackpass:params:oauth:token-type:aws-credentials`.
pub const TOKEN_TYPE_PREFIX: &str = "urn:stackpass:params:oauth:token-type:";

/// RFC 8693 section 2.2.1: the `token_type` of an issued token that is not
/// an OAuth access token (not usable as a bearer).
pub const NOT_APPLICABLE: &str = "N_A";

/// The credential as one `access_token` string and its `token_type`.
pub struct ExchangedToken {
    pub access_token: SecretString,
    /// `Bearer` when the string is itself a bearer token; [`NOT_APPLICABLE`]
    /// for documents such as AWS's three-part credentials.
    pub token_type: &'static str,
}

impl std::fmt::Debug for ExchangedToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExchangedToken")
            .field("token_type", &self.token_type)
            .finish_non_exhaustive()
    }
}

impl ExchangedToken {
    /// The secret field `name` of `credential`, a bearer access token
    /// (GCP's and Azure's OAuth access tokens).
    pub fn bearer_field(credential: &Credential, name: &str) -> Option<ExchangedToken> {
        credential
            .fields
            .iter()
            .find_map(|(field, value)| match value {
                CredentialField::Secret(secret) if *field == name => Some(ExchangedToken {
                    access_token: SecretString::from(secret.expose_secret().to_owned()),
                    token_type: "Bearer",
                }),
                _ => None,
            })
    }
}
