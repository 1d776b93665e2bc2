//! `[identity]` and `[[identity.issuers]]`: which token issuers the broker
//! trusts, how their tokens are checked, which subjects each may vouch for and
//! how its keys are fetched (https, CA bundle). Only asymmetric algorithms can
//! be configured. Machine issuers (`github-actions`, `gitlab-ci`,
//! `pulumi-deployments`, `hcp-terraform`, `kubernetes`) bring their own pins:
//! the owner, namespace or organization ids they trust, and audiences, which
//! differ per issuer and so are always required.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use url::Url;

use super::ConfigProblem;
use crate::catalog::EntityRef;
use crate::http_client::{check_scheme, TlsTrust};
use crate::identity::machines::{
    GITHUB_DEFAULT_EVENTS, GITHUB_REFUSED_EVENTS, GITLAB_DEFAULT_SOURCES, GITLAB_REFUSED_SOURCES,
};
use crate::identity::{SubjectPattern, SubjectPatternError, BACKSTAGE_USER_TOKEN_TYPE};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IdentityConfig {
    pub issuers: Vec<TrustedIssuerConfig>,
    /// Tokens longer than this are rejected before any parsing.
    pub max_token_bytes: usize,
    /// How long fetched signing keys are trusted before they are fetched again.
    #[serde(with = "humantime_serde")]
    pub jwks_refresh_interval: Duration,
    /// An unknown `kid` triggers a refetch at most this often per issuer, so a flood
    /// of forged tokens cannot turn into a flood of requests to the issuer.
    #[serde(with = "humantime_serde")]
    pub jwks_min_refetch_interval: Duration,
    /// Fetched keys keep verifying while refreshes fail, but no longer than
    /// this; then the issuer is unavailable (503) instead of trusted.
    #[serde(with = "humantime_serde")]
    pub jwks_max_key_age: Duration,
    #[serde(with = "humantime_serde")]
    pub fetch_timeout: Duration,
}

impl Default for IdentityConfig {
    fn default() -> Self {
        IdentityConfig {
            issuers: Vec::new(),
            max_token_bytes: 8 * 1024,
            jwks_refresh_interval: Duration::from_secs(600),
            jwks_min_refetch_interval: Duration::from_secs(30),
            jwks_max_key_age: Duration::from_secs(24 * 3600),
            fetch_timeout: Duration::from_secs(5),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum IssuerKind {
    /// A Backstage auth backend: keys discovered under `{url}/api/auth`.
    Backstage,
    /// Any OIDC provider: keys discovered under `{issuer}/.well-known/openid-configuration`.
    Oidc,
    /// A local key pair for the quickstart and tests; `stackpass dev token` signs with it.
    Development,
    /// GitHub Actions' OIDC tokens; the caller is the component annotated
    /// with the repository.
    GithubActions,
    /// GitLab CI ID tokens; the caller is the component annotated with the project.
    GitlabCi,
    /// Pulumi Deployments' OIDC tokens; the caller is the component of the
    /// stack deployed, bound to that stack.
    PulumiDeployments,
    /// HCP Terraform workload identity; the caller is the component of the
    /// workspace's stack, bound to it.
    HcpTerraform,
    /// Kubernetes service-account tokens; the caller is the component
    /// configured for the service account.
    Kubernetes,
}

impl IssuerKind {
    pub fn as_str(self) -> &'static str {
        match self {
            IssuerKind::Backstage => "backstage",
            IssuerKind::Oidc => "oidc",
            IssuerKind::Development => "development",
            IssuerKind::GithubActions => "github-actions",
            IssuerKind::GitlabCi => "gitlab-ci",
            IssuerKind::PulumiDeployments => "pulumi-deployments",
            IssuerKind::HcpTerraform => "hcp-terraform",
            IssuerKind::Kubernetes => "kubernetes",
        }
    }

    /// Its tokens come from pipelines and workloads, mapped to components.
    pub fn is_machine(self) -> bool {
        !matches!(
            self,
            IssuerKind::Backstage | IssuerKind::Oidc | IssuerKind::Development
        )
    }

    /// The issuer every tenant of a hosted service shares.
    fn well_known_issuer(self) -> Option<&'static str> {
        match self {
            IssuerKind::GithubActions => Some("https://token.actions.githubusercontent.com"),
            IssuerKind::PulumiDeployments => Some("https://api.pulumi.com/oidc"),
            IssuerKind::HcpTerraform => Some("https://app.terraform.io"),
            _ => None,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustedIssuerConfig {
    pub name: String,
    pub kind: IssuerKind,
    /// Backstage base URL (e.g. `https://backstage.example.com`).
    pub url: Option<Url>,
    /// The exact `iss` tokens carry. Backstage: defaults to `{url}/api/auth`.
    pub issuer: Option<String>,
    /// Where to find the OIDC discovery document, if not at the standard place.
    pub discovery_url: Option<Url>,
    /// Accepted `aud` values. Backstage user tokens carry `backstage`; a
    /// Pulumi Deployments token carries its organization's name.
    pub audiences: Option<Vec<String>>,
    /// Default: ES256 (Backstage, development, OIDC), RS256 (machine issuers,
    /// which all sign with RSA).
    pub algorithms: Option<Vec<String>>,
    #[serde(default = "default_leeway", with = "humantime_serde")]
    pub leeway: Duration,
    /// Tokens whose `exp - iat` is longer than this are refused outright.
    #[serde(default = "default_max_token_lifetime", with = "humantime_serde")]
    pub max_token_lifetime: Duration,
    /// Development issuers: the private key `stackpass dev token` signs with.
    pub key_file: Option<PathBuf>,
    /// Entity-reference patterns (`kind:namespace/name`, parts may be `*`) of
    /// the subjects this issuer may vouch for. Default: Backstage `user:*/*`,
    /// development users and components, OIDC none (it must be listed).
    pub subjects: Option<Vec<String>>,
    /// An audience of this broker's own (e.g. `stackpass`): tokens whose only
    /// audience it is were minted for stackpass alone, which rules with
    /// `require_dedicated_audience` demand. Accepted besides `audiences`.
    pub dedicated_audience: Option<String>,
    /// Its subjects are AI agents (`oidc` and `development` issuers only):
    /// every token it signs is an agent acting for itself (bounded as an
    /// agent wherever it is used), and only its tokens are accepted as the
    /// `actor_token` of a token exchange (`POST /oauth2/token`).
    #[serde(default)]
    pub agents: bool,
    /// Lets discovery and keys come over plain http from a host that is not
    /// loopback: anyone on that path can then forge tokens.
    #[serde(default)]
    pub insecure_allow_http: bool,
    /// A PEM bundle of CAs to trust for this issuer (a private CA).
    pub ca_file: Option<PathBuf>,
    /// `false`: trust only `ca_file`, not the public CAs.
    #[serde(default = "default_true")]
    pub trust_public_roots: bool,
    /// github-actions: the `repository_owner_id`s (organization or user ids)
    /// whose repositories may call; ids survive renames, forks have others.
    pub repository_owner_ids: Option<Vec<String>>,
    /// github-actions: the `event_name`s trusted (default push,
    /// workflow_dispatch, schedule, release, merge_group, deployment).
    pub events: Option<Vec<String>>,
    /// gitlab-ci: the `namespace_id`s whose projects may call.
    pub namespace_ids: Option<Vec<String>>,
    /// gitlab-ci: the `pipeline_source`s trusted.
    pub pipeline_sources: Option<Vec<String>>,
    /// hcp-terraform: the `terraform_organization_id`s (`org-…`) trusted.
    pub organization_ids: Option<Vec<String>>,
    /// kubernetes: `"NAMESPACE/NAME" = "component:NAMESPACE/NAME"`.
    pub service_accounts: Option<BTreeMap<String, EntityRef>>,
    /// Where the system shows runs, for the audit's run links (default:
    /// `https://github.com` for GitHub's issuer, the issuer for GitLab and
    /// HCP Terraform).
    pub web_url: Option<Url>,
}

fn default_true() -> bool {
    true
}

fn default_leeway() -> Duration {
    Duration::from_secs(30)
}

/// Backstage's own user tokens live 1h; a longer-lived token is a longer
/// window for a plugin that was sent it to replay it here.
fn default_max_token_lifetime() -> Duration {
    Duration::from_secs(3600)
}

impl TrustedIssuerConfig {
    /// Backstage's auth backend lives under `{url}/api/auth`; it is both the issuer
    /// and the base of the discovery document.
    fn backstage_auth_base(&self) -> Option<String> {
        match (self.kind, &self.url) {
            (IssuerKind::Backstage, Some(url)) => {
                Some(format!("{}/api/auth", url.as_str().trim_end_matches('/')))
            }
            _ => None,
        }
    }

    /// The `iss` value this issuer's tokens must carry.
    pub fn issuer_id(&self) -> Option<String> {
        self.issuer
            .clone()
            .or_else(|| self.backstage_auth_base())
            .or_else(|| self.kind.well_known_issuer().map(str::to_owned))
    }

    /// Where the system shows runs, for the audit's run links.
    pub fn run_web_url(&self) -> Option<String> {
        if let Some(url) = &self.web_url {
            return Some(url.as_str().trim_end_matches('/').to_owned());
        }
        match self.kind {
            IssuerKind::GithubActions => (self.issuer_id().as_deref()
                == IssuerKind::GithubActions.well_known_issuer())
            .then(|| "https://github.com".to_owned()),
            IssuerKind::GitlabCi | IssuerKind::HcpTerraform => self.issuer_id(),
            _ => None,
        }
    }

    pub fn github_events(&self) -> Vec<String> {
        self.events.clone().unwrap_or_else(|| {
            GITHUB_DEFAULT_EVENTS
                .iter()
                .map(|e| e.to_string())
                .collect()
        })
    }

    pub fn gitlab_sources(&self) -> Vec<String> {
        self.pipeline_sources.clone().unwrap_or_else(|| {
            GITLAB_DEFAULT_SOURCES
                .iter()
                .map(|e| e.to_string())
                .collect()
        })
    }

    pub fn algorithm_names(&self) -> Vec<String> {
        self.algorithms.clone().unwrap_or_else(|| {
            vec![if self.kind.is_machine() {
                "RS256"
            } else {
                "ES256"
            }
            .into()]
        })
    }

    pub fn discovery(&self) -> Option<Url> {
        if let Some(url) = &self.discovery_url {
            return Some(url.clone());
        }
        let base = match self.kind {
            IssuerKind::Development => return None,
            IssuerKind::Backstage => self.backstage_auth_base(),
            _ => self.issuer_id(),
        }?;
        Url::parse(&format!(
            "{}/.well-known/openid-configuration",
            base.trim_end_matches('/')
        ))
        .ok()
    }

    pub fn accepted_audiences(&self) -> Vec<String> {
        let mut audiences = match (&self.audiences, self.kind) {
            (Some(audiences), _) => audiences.clone(),
            (None, IssuerKind::Backstage) => vec!["backstage".into()],
            (None, _) => Vec::new(),
        };
        if let Some(own) = &self.dedicated_audience {
            if !audiences.contains(own) {
                audiences.push(own.clone());
            }
        }
        audiences
    }

    /// The subject patterns as written, or the kind's default.
    pub fn subject_patterns(&self) -> Vec<String> {
        match (&self.subjects, self.kind) {
            (Some(subjects), _) => subjects.clone(),
            (None, IssuerKind::Backstage) => vec!["user:*/*".into()],
            (None, IssuerKind::Development) => {
                vec!["user:*/*".into(), "component:*/*".into()]
            }
            // OIDC and machine issuers: the operator must say, and keep them
            // apart from every other issuer's.
            (None, _) => Vec::new(),
        }
    }

    pub fn parsed_subjects(&self) -> Result<Vec<SubjectPattern>, SubjectPatternError> {
        self.subject_patterns()
            .iter()
            .map(|p| SubjectPattern::parse(p))
            .collect()
    }

    /// The `typ` header its tokens must carry: Backstage user tokens only.
    pub fn token_type(&self) -> Option<&'static str> {
        (self.kind == IssuerKind::Backstage).then_some(BACKSTAGE_USER_TOKEN_TYPE)
    }

    pub fn tls_trust(&self) -> TlsTrust {
        TlsTrust {
            ca_file: self.ca_file.clone(),
            public_roots: self.trust_public_roots,
        }
    }

    pub fn parsed_algorithms(&self) -> Result<Vec<jsonwebtoken::Algorithm>, String> {
        self.algorithm_names()
            .iter()
            .map(|a| parse_algorithm(a))
            .collect()
    }
}

impl TrustedIssuerConfig {
    /// Each machine kind's pins, and keys written for another kind.
    fn machine_problems(&self) -> Vec<(&'static str, String)> {
        let mut problems = Vec::new();
        let kind = self.kind;
        let only_for = |field: &'static str, set: bool, owner: IssuerKind| {
            (set && kind != owner).then(|| {
                (
                    field,
                    format!(
                        "is only for {} issuers; this one is {}",
                        owner.as_str(),
                        kind.as_str()
                    ),
                )
            })
        };
        problems.extend(only_for(
            "repository_owner_ids",
            self.repository_owner_ids.is_some(),
            IssuerKind::GithubActions,
        ));
        problems.extend(only_for(
            "events",
            self.events.is_some(),
            IssuerKind::GithubActions,
        ));
        problems.extend(only_for(
            "namespace_ids",
            self.namespace_ids.is_some(),
            IssuerKind::GitlabCi,
        ));
        problems.extend(only_for(
            "pipeline_sources",
            self.pipeline_sources.is_some(),
            IssuerKind::GitlabCi,
        ));
        problems.extend(only_for(
            "organization_ids",
            self.organization_ids.is_some(),
            IssuerKind::HcpTerraform,
        ));
        problems.extend(only_for(
            "service_accounts",
            self.service_accounts.is_some(),
            IssuerKind::Kubernetes,
        ));
        if self.web_url.is_some() && !kind.is_machine() {
            problems.push(("web_url", "is only for machine issuers".into()));
        }
        if kind.is_machine() && self.audiences.as_ref().is_none_or(|a| a.is_empty()) {
            problems.push((
                "audiences",
                match kind {
                    IssuerKind::PulumiDeployments => "list your Pulumi organization names: a Deployments token's aud is its organization".into(),
                    _ => format!("list the audiences this broker's {} tokens are minted for (each issuer's differ; e.g. the audience your pipelines request)", kind.as_str()),
                },
            ));
        }
        let numeric_ids = |field: &'static str, ids: &Option<Vec<String>>, what: &str| {
            match ids
            .as_deref()
        {
            None | Some([]) => Some((
                field,
                format!("list the {what} this issuer trusts; ids, unlike names, survive renames and are never reused"),
            )),
            Some(ids) => ids
                .iter()
                .find(|id| id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit()))
                .map(|id| (field, format!("{id:?} is not a numeric id"))),
        }
        };
        let listed_refused =
            |field: &'static str, listed: &Option<Vec<String>>, refused: &[&str], why: &str| {
                listed
                    .iter()
                    .flatten()
                    .find(|e| refused.contains(&e.as_str()))
                    .map(|e| (field, format!("{e} can never be trusted: {why}")))
            };
        match kind {
            IssuerKind::GithubActions => {
                problems.extend(numeric_ids(
                    "repository_owner_ids",
                    &self.repository_owner_ids,
                    "repository_owner_ids (organization or user ids)",
                ));
                problems.extend(listed_refused(
                    "events",
                    &self.events,
                    GITHUB_REFUSED_EVENTS,
                    "its runs execute with the base repository's identity for code a fork may have written",
                ));
                if self.events.as_ref().is_some_and(|e| e.is_empty()) {
                    problems.push(("events", "lists no event, so no run could call".into()));
                }
            }
            IssuerKind::GitlabCi => {
                problems.extend(numeric_ids(
                    "namespace_ids",
                    &self.namespace_ids,
                    "namespace_ids (group or user namespace ids)",
                ));
                problems.extend(listed_refused(
                    "pipeline_sources",
                    &self.pipeline_sources,
                    GITLAB_REFUSED_SOURCES,
                    "it can run a fork's merge request code with the parent project's identity",
                ));
                if self.issuer.is_none() {
                    problems.push((
                        "issuer",
                        "set issuer to your GitLab instance's URL, e.g. \"https://gitlab.com\""
                            .into(),
                    ));
                }
            }
            IssuerKind::HcpTerraform => match &self.organization_ids {
                Some(ids) if !ids.is_empty() => {
                    if let Some(bad) = ids.iter().find(|id| !id.starts_with("org-")) {
                        problems.push((
                            "organization_ids",
                            format!("{bad:?} is not an organization id (org-…); names can be renamed, ids cannot"),
                        ));
                    }
                }
                _ => problems.push((
                    "organization_ids",
                    "list the terraform_organization_ids (org-…) this issuer trusts".into(),
                )),
            },
            IssuerKind::Kubernetes => {
                if self.issuer.is_none() {
                    problems.push((
                        "issuer",
                        "set issuer to the cluster's service-account issuer (kube-apiserver --service-account-issuer)".into(),
                    ));
                }
                match &self.service_accounts {
                    Some(accounts) if !accounts.is_empty() => {
                        for (account, component) in accounts {
                            let shaped = account
                                .split_once('/')
                                .is_some_and(|(ns, n)| !ns.is_empty() && !n.is_empty() && !n.contains('/'));
                            if !shaped {
                                problems.push((
                                    "service_accounts",
                                    format!("{account:?} is not NAMESPACE/NAME"),
                                ));
                            }
                            if component.kind() != "component" {
                                problems.push((
                                    "service_accounts",
                                    format!("{account} maps to {component}; service accounts act as components"),
                                ));
                            }
                        }
                    }
                    _ => problems.push((
                        "service_accounts",
                        "map each trusted service account to its component, e.g. { \"payments/deployer\" = \"component:default/payments\" }".into(),
                    )),
                }
            }
            IssuerKind::PulumiDeployments
            | IssuerKind::Backstage
            | IssuerKind::Oidc
            | IssuerKind::Development => {}
        }
        problems
    }
}

/// Only asymmetric algorithms: a shared secret cannot be published in a JWKS, and
/// allowing HMAC is how "HS256 signed with the public key" forgeries work.
fn parse_algorithm(name: &str) -> Result<jsonwebtoken::Algorithm, String> {
    use jsonwebtoken::Algorithm::*;
    match name {
        "ES256" => Ok(ES256),
        "ES384" => Ok(ES384),
        "RS256" => Ok(RS256),
        "RS384" => Ok(RS384),
        "RS512" => Ok(RS512),
        "PS256" => Ok(PS256),
        "PS384" => Ok(PS384),
        "PS512" => Ok(PS512),
        "EdDSA" => Ok(EdDSA),
        "HS256" | "HS384" | "HS512" => Err(format!(
            "{name} is a shared-secret algorithm and cannot be trusted for identity tokens; use ES256, RS256 or EdDSA"
        )),
        other => Err(format!(
            "unknown algorithm {other:?}; use one of ES256, ES384, RS256, RS384, RS512, PS256, PS384, PS512, EdDSA"
        )),
    }
}

impl IdentityConfig {
    /// What keeps issuers apart and their keys honest: subject patterns that
    /// parse and do not overlap between issuers, https (or loopback, or an
    /// explicit opt-in) for discovery, a CA to trust, a sane key age.
    pub(super) fn trust_problems(&self) -> Vec<ConfigProblem> {
        let mut problems = Vec::new();
        let mut problem =
            |key: String, message: String| problems.push(ConfigProblem { key, message });
        if self.jwks_max_key_age < self.jwks_refresh_interval {
            problem(
                "identity.jwks_max_key_age".into(),
                "must be at least jwks_refresh_interval, or keys would expire before they are refreshed".into(),
            );
        }
        let mut vouched: Vec<(usize, SubjectPattern)> = Vec::new();
        for (i, issuer) in self.issuers.iter().enumerate() {
            let key = |field: &str| format!("identity.issuers[{i}].{field}");
            match issuer.parsed_subjects() {
                Ok(patterns) if patterns.is_empty() => problem(
                    key("subjects"),
                    "this issuer may vouch for nobody; list the subjects its tokens may name, e.g. [\"component:ci/*\"], and keep them apart from every other issuer's".into(),
                ),
                Ok(patterns) => {
                    for pattern in patterns {
                        if issuer.kind.is_machine() && !pattern.admits_kind("component") {
                            problem(
                                key("subjects"),
                                format!("{pattern} names no component, but a {} issuer's callers are the components its pipelines deploy; use component:NAMESPACE/* patterns", issuer.kind.as_str()),
                            );
                        }
                        if issuer.agents && pattern.admits_kind("user") {
                            problem(
                                key("subjects"),
                                format!("{pattern} admits users, but this issuer vouches for agents (agents = true), and an agent is never a person; use component:NAMESPACE/* patterns"),
                            );
                        }
                        if issuer.kind == IssuerKind::Backstage && !pattern.admits_kind("user") {
                            problem(
                                key("subjects"),
                                format!("{pattern} names no user, but a backstage issuer's tokens are user tokens and name users only; use user:NAMESPACE/* patterns"),
                            );
                        }
                        // Two machine issuers may share components: neither
                        // names its caller, each reaches only the components
                        // its own binding (annotation and id, stack tag,
                        // explicit map) leads to. An issuer that names its
                        // subject directly must never share one.
                        let both_machines = |j: usize| {
                            issuer.kind.is_machine() && self.issuers[j].kind.is_machine()
                        };
                        if let Some((other, theirs)) = vouched
                            .iter()
                            .find(|(j, p)| *j != i && p.overlaps(&pattern) && !both_machines(*j))
                        {
                            problem(
                                key("subjects"),
                                format!("{pattern} overlaps {theirs} of identity.issuers[{other}] ({}); either issuer could then act as the same subject, so give each issuer its own kinds or namespaces", self.issuers[*other].name),
                            );
                        }
                        vouched.push((i, pattern));
                    }
                }
                Err(e) => problem(key("subjects"), e.to_string()),
            }
            if issuer.agents && !matches!(issuer.kind, IssuerKind::Oidc | IssuerKind::Development) {
                problem(
                    key("agents"),
                    format!("a {} issuer's tokens name people or pipelines, never agents; set agents = true only on the oidc (or development) issuer that signs your agents' tokens", issuer.kind.as_str()),
                );
            }
            for (field, message) in issuer.machine_problems() {
                problem(key(field), message);
            }
            if issuer
                .dedicated_audience
                .as_deref()
                .is_some_and(|a| a.trim().is_empty())
            {
                problem(key("dedicated_audience"), "must not be empty".into());
            }
            // The URL actually fetched is the discovery document; name the key
            // the operator wrote it under.
            let field = match (&issuer.discovery_url, &issuer.url) {
                (Some(_), _) => "discovery_url",
                (None, Some(_)) => "url",
                (None, None) => "issuer",
            };
            let checked = match issuer.kind {
                IssuerKind::Development => None,
                _ => issuer
                    .discovery()
                    .map(|u| check_scheme(&u, issuer.insecure_allow_http)),
            };
            if let Some(Err(e)) = checked {
                problem(
                    key(field),
                    format!("{e}; use https (with ca_file for a private CA), or set insecure_allow_http = true for this issuer if you accept that risk"),
                );
            }
            if !issuer.trust_public_roots && issuer.ca_file.is_none() {
                problem(
                    key("trust_public_roots"),
                    "false needs a ca_file, or no server could be trusted".into(),
                );
            }
        }
        problems
    }
}

#[cfg(test)]
mod tests {
    use crate::config::tests::{write, MINIMAL};
    use crate::config::Config;

    fn load(issuers: &str) -> Result<Config, String> {
        let dir = tempfile::tempdir().unwrap();
        Config::load(&write(dir.path(), &format!("{MINIMAL}\n{issuers}")))
            .map_err(|e| e.to_string())
    }

    const GITHUB: &str = r#"
        [[identity.issuers]]
        name = "github"
        kind = "github-actions"
        audiences = ["https://stackpass.example.com"]
        subjects = ["component:default/*"]
        repository_owner_ids = ["7"]
    "#;

    #[test]
    fn machine_issuers_have_their_well_known_urls_and_rsa() {
        let config = load(GITHUB).unwrap();
        let github = &config.identity.issuers[1];
        assert_eq!(
            github.issuer_id().as_deref(),
            Some("https://token.actions.githubusercontent.com")
        );
        assert_eq!(
            github.discovery().unwrap().as_str(),
            "https://token.actions.githubusercontent.com/.well-known/openid-configuration"
        );
        assert_eq!(github.algorithm_names(), ["RS256"]);
        assert_eq!(github.run_web_url().as_deref(), Some("https://github.com"));
        assert!(github.github_events().contains(&"push".to_owned()));
    }

    #[test]
    fn machine_issuers_need_their_pins_and_audiences() {
        for (issuer, expected) in [
            (GITHUB.replace("repository_owner_ids = [\"7\"]", ""), "identity.issuers[1].repository_owner_ids"),
            (GITHUB.replace("[\"7\"]", "[\"acme\"]"), "\"acme\" is not a numeric id"),
            (GITHUB.replace("audiences = [\"https://stackpass.example.com\"]", ""), "identity.issuers[1].audiences"),
            (GITHUB.replace("subjects = [\"component:default/*\"]", ""), "identity.issuers[1].subjects"),
            (GITHUB.replace("component:default/*", "user:default/*"), "names no component"),
            (format!("{GITHUB}events = [\"push\", \"pull_request_target\"]\n"), "pull_request_target can never be trusted"),
            (format!("{GITHUB}namespace_ids = [\"1\"]\n"), "is only for gitlab-ci issuers"),
            (
                "[[identity.issuers]]\nname = \"gl\"\nkind = \"gitlab-ci\"\naudiences = [\"sp\"]\nsubjects = [\"component:gl/*\"]\nnamespace_ids = [\"5\"]\n".into(),
                "set issuer to your GitLab instance's URL",
            ),
            (
                "[[identity.issuers]]\nname = \"tf\"\nkind = \"hcp-terraform\"\naudiences = [\"sp\"]\nsubjects = [\"component:tf/*\"]\norganization_ids = [\"acme\"]\n".into(),
                "is not an organization id",
            ),
            (
                "[[identity.issuers]]\nname = \"pd\"\nkind = \"pulumi-deployments\"\nsubjects = [\"component:pd/*\"]\n".into(),
                "list your Pulumi organization names",
            ),
            (
                "[[identity.issuers]]\nname = \"k8s\"\nkind = \"kubernetes\"\nissuer = \"https://kubernetes.default.svc\"\naudiences = [\"sp\"]\nsubjects = [\"component:k8s/*\"]\nservice_accounts = { \"deployer\" = \"component:k8s/payments\" }\n".into(),
                "\"deployer\" is not NAMESPACE/NAME",
            ),
        ] {
            let err = load(&issuer).unwrap_err();
            assert!(err.contains(expected), "{expected}: {err}");
        }
    }

    #[test]
    fn machine_issuers_may_share_components_but_not_with_naming_issuers() {
        let err = load(&format!(
            "{GITHUB}\n[[identity.issuers]]\nname = \"ci\"\nkind = \"oidc\"\nissuer = \"https://ci.example.com\"\naudiences = [\"sp\"]\nsubjects = [\"component:default/payments\"]\n"
        ))
        .unwrap_err();
        assert!(err.contains("overlaps component:default/*"), "{err}");
        let ok = format!(
            "{GITHUB}\n[[identity.issuers]]\nname = \"tf\"\nkind = \"hcp-terraform\"\naudiences = [\"sp\"]\nsubjects = [\"component:default/*\"]\norganization_ids = [\"org-AbC\"]\nmax_token_lifetime = \"2h\"\n"
        );
        load(&ok).unwrap();
    }

    #[test]
    fn agent_issuers_are_oidc_and_vouch_for_no_person() {
        const AGENTS: &str = "[[identity.issuers]]\nname = \"agents\"\nkind = \"oidc\"\nissuer = \"https://agents.example.com\"\naudiences = [\"stackpass\"]\nsubjects = [\"component:agents/*\"]\nagents = true\n";
        let config = load(AGENTS).unwrap();
        assert!(config.identity.issuers[1].agents);
        let err = load(&AGENTS.replace("component:agents/*", "user:agents/*")).unwrap_err();
        assert!(err.contains("admits users"), "{err}");
        let err = load(&format!("{GITHUB}agents = true\n")).unwrap_err();
        assert!(err.contains("identity.issuers[1].agents"), "{err}");
    }
}
