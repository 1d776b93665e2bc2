//! How `stackpass run` hands a provider's credentials to the command it runs,
//! and keeps them fresh for as long as the command runs.
//!
//! Fixed variables go stale: a `pulumi up` that outlives its credentials fails
//! halfway. So the CLI serves the current credential on a loopback endpoint
//! that only the child knows the secret of, and each provider says how its
//! cloud's tools are pointed at such an endpoint (AWS: the container
//! credentials provider; GCP: a URL-sourced external account; Azure: the OIDC
//! request URL that Terraform's and Pulumi's providers read), which document it
//! serves, and which files in a private directory the CLI rewrites on every
//! refresh. The CLI knows no cloud; the provider knows no process handling.

use std::path::Path;

use secrecy::SecretString;

use crate::{Mode, ReceivedCredential};

/// Where the CLI serves this provider's current credential to the child.
#[derive(Debug)]
pub struct ChildEndpoint<'a> {
    /// `http://127.0.0.1:PORT/<kind>`.
    pub url: &'a str,
    /// The per-run secret the child must present, as `Authorization: SECRET`
    /// or `Authorization: Bearer SECRET`.
    pub secret: &'a SecretString,
    /// A directory only this user can read (0700), removed after the run.
    pub dir: &'a Path,
}

/// What the child's environment gets for one provider.
#[derive(Debug, Default)]
pub struct ChildEnvironment {
    /// Variables to set; values may be secret (the endpoint's secret).
    pub set: Vec<(&'static str, SecretString)>,
    /// Variables to remove, because the cloud's tools would otherwise find other
    /// credentials before these.
    pub remove: &'static [&'static str],
}

/// A file in [`ChildEndpoint::dir`] the child reads, rewritten on every refresh.
#[derive(Debug)]
pub struct ChildFile {
    pub name: &'static str,
    pub contents: SecretString,
}

/// How `stackpass run` delivers one provider's credentials.
pub trait ChildDelivery: Send + Sync {
    /// The mode `run` asks the broker for.
    fn mode(&self) -> Mode;

    /// The child's environment, given the first credential (its non-secret
    /// fields name tenants, audiences, service accounts) and the endpoint.
    fn environment(
        &self,
        first: &ReceivedCredential,
        endpoint: &ChildEndpoint<'_>,
    ) -> Result<ChildEnvironment, String>;

    /// The JSON document the endpoint serves for the current credential.
    fn document(&self, credential: &ReceivedCredential) -> Result<SecretString, String>;

    /// Files the child reads, written before it starts and after each refresh.
    fn files(
        &self,
        _credential: &ReceivedCredential,
        _endpoint: &ChildEndpoint<'_>,
    ) -> Result<Vec<ChildFile>, String> {
        Ok(Vec::new())
    }
}
