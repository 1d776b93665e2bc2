//! Credentials: what a cloud returned (broker side) and what the CLI received
//! (client side). Secret fields live only in `secrecy` types on both sides;
//! `Debug` never prints them.

use std::collections::BTreeMap;

use secrecy::SecretString;
use time::OffsetDateTime;

/// One field of a credential, in the order the provider lists them. The API
/// returns them as the `credentials` object of the response.
#[derive(Debug)]
pub enum CredentialField {
    /// Not secret (an AWS access key id, an assumed-role ARN); `None` is `null`.
    Public(Option<String>),
    Secret(SecretString),
}

/// What a cloud returned for one exchange.
#[derive(Debug)]
#[non_exhaustive]
pub struct Credential {
    /// A non-secret identifier the cloud's own logs also show (AWS access key
    /// id), so the audit log can be joined with CloudTrail and friends.
    pub credential_id: String,
    pub expires_at: OffsetDateTime,
    pub fields: Vec<(&'static str, CredentialField)>,
}

impl Credential {
    pub fn new(credential_id: impl Into<String>, expires_at: OffsetDateTime) -> Self {
        Credential {
            credential_id: credential_id.into(),
            expires_at,
            fields: Vec::new(),
        }
    }

    pub fn public(mut self, name: &'static str, value: Option<String>) -> Self {
        self.fields.push((name, CredentialField::Public(value)));
        self
    }

    pub fn secret(mut self, name: &'static str, value: SecretString) -> Self {
        self.fields.push((name, CredentialField::Secret(value)));
        self
    }
}

/// A credential as the CLI received it from the broker: the `credentials`
/// object's string fields (public and secret alike held as secrets) and the
/// expiry as the broker wrote it (RFC 3339).
#[derive(Debug)]
pub struct ReceivedCredential {
    pub expires_at: String,
    pub fields: BTreeMap<String, SecretString>,
}

impl ReceivedCredential {
    /// A field the provider's own format needs, or an error naming it.
    pub fn field(&self, name: &str) -> Result<&SecretString, String> {
        self.fields
            .get(name)
            .ok_or_else(|| format!("the broker's answer has no credentials.{name}"))
    }
}
