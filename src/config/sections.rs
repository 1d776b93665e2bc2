//! The plain sections of the configuration: server, issuer, notifications,
//! catalog, stacks, policy and audit, with their defaults.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use secrecy::SecretString;
use serde::Deserialize;
use url::Url;

use crate::catalog::EntityRef;
use crate::database::sqlite_path;
use crate::policy::{AgentBoundsConfig, RuleConfig};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NotificationsConfig {
    /// A webhook that takes Slack-compatible JSON (`{"text": …}`). Slack webhook
    /// URLs are secrets: prefer `STACKPASS_NOTIFICATIONS__WEBHOOK_URL`.
    #[serde(deserialize_with = "optional_secret")]
    pub webhook_url: Option<SecretString>,
    /// How long one POST to the webhook may take.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// How often each broker looks for records other replicas committed.
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    /// How long a broker's claim on a message lasts; a claim by a broker that
    /// died is taken over after this.
    #[serde(with = "humantime_serde")]
    pub lease: Duration,
    /// The longest wait between retries of one message.
    #[serde(with = "humantime_serde")]
    pub max_retry_interval: Duration,
    /// A message whose record is older than this is given up (and audited).
    #[serde(with = "humantime_serde")]
    pub give_up_after: Duration,
}

impl Default for NotificationsConfig {
    fn default() -> Self {
        NotificationsConfig {
            webhook_url: None,
            timeout: Duration::from_secs(10),
            poll_interval: Duration::from_secs(5),
            lease: Duration::from_secs(60),
            max_retry_interval: Duration::from_secs(300),
            give_up_after: Duration::from_secs(24 * 3600),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    /// The broker's public URL: the `iss` of every subject token, so clouds must be
    /// able to fetch `{public_url}/.well-known/openid-configuration`.
    pub public_url: Option<Url>,
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    pub max_body_bytes: usize,
    /// Requests the broker works on at once (`/v1` only: the discovery
    /// documents, the JWKS and the health checks are always answered).
    pub max_concurrent_requests: usize,
    /// Open connections at once; more are closed on accept.
    pub max_connections: usize,
    /// A client must send a request's headers within this; an idle
    /// keep-alive connection is closed after it too.
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// A client must send a request's body within this, once its headers (and
    /// token) were accepted.
    #[serde(with = "humantime_serde")]
    pub body_read_timeout: Duration,
    /// Load balancers or ingress (CIDR blocks) whose `X-Forwarded-For` names
    /// the client; from anyone else the header is ignored.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// After SIGTERM, how long the broker keeps serving with `/readyz`
    /// failing, so load balancers stop sending to it before it stops
    /// accepting (0s: stop accepting at once).
    #[serde(with = "humantime_serde")]
    pub shutdown_delay: Duration,
    /// `[server.tls]`: serve https with this certificate and key (absent:
    /// plain http, for a broker behind a TLS-terminating proxy).
    pub tls: Option<ServerTlsConfig>,
}

/// `[server.tls]`: the broker's own certificate, reloaded when the files change.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerTlsConfig {
    /// PEM: the server certificate first, then its intermediates.
    pub cert_file: PathBuf,
    /// PEM: the certificate's private key (PKCS#8, or RSA or EC in their
    /// traditional PEM forms).
    pub key_file: PathBuf,
    /// How often the two files are read for changes (a renewed certificate
    /// is served without a restart).
    #[serde(with = "humantime_serde", default = "default_tls_reload_interval")]
    pub reload_interval: Duration,
}

fn default_tls_reload_interval() -> Duration {
    Duration::from_secs(5)
}

/// `[limits]`: rates and bursts, per replica. A rate of 0 turns that limit off.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Issuances (`/v1/credentials`, `/oauth2/token`, MCP `get_credentials`)
    /// per principal per minute, and how many may come at once.
    pub issuance_per_principal_per_minute: u32,
    pub issuance_per_principal_burst: u32,
    /// Issuances per client address per minute, and the burst.
    pub issuance_per_address_per_minute: u32,
    pub issuance_per_address_burst: u32,
    /// Requests whose token fails verification, per client address per
    /// minute, and the burst; past it, the address gets 429 before any token
    /// is verified.
    pub auth_failures_per_address_per_minute: u32,
    pub auth_failures_per_address_burst: u32,
    /// The most principals or addresses each limit tracks; idle ones are
    /// forgotten every minute, and past this many the rest share one bucket.
    pub max_tracked_keys: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            issuance_per_principal_per_minute: 120,
            issuance_per_principal_burst: 60,
            issuance_per_address_per_minute: 600,
            issuance_per_address_burst: 300,
            auth_failures_per_address_per_minute: 30,
            auth_failures_per_address_burst: 10,
            max_tracked_keys: 100_000,
        }
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            public_url: None,
            request_timeout: Duration::from_secs(30),
            max_body_bytes: 16 * 1024,
            max_concurrent_requests: 512,
            max_connections: 4096,
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(10),
            trusted_proxies: Vec::new(),
            shutdown_delay: Duration::ZERO,
            tls: None,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IssuerConfig {
    /// The key set: a directory with `keyset.json` and one PEM file per key
    /// (`stackpass keys generate --dir`), ES256 and RS256, rotated with
    /// `stackpass keys rotate`.
    pub key_dir: PathBuf,
    /// Before key sets: one PKCS#8 PEM ES256 key file. Still honoured (it is then
    /// the only key: ES256, no RS256); `stackpass keys generate --dir DIR
    /// --import-es256 FILE` moves it into a key set, keeping its kid.
    pub signing_key: Option<PathBuf>,
    /// Lifetime of the subject tokens stackpass mints; they are exchanged at once.
    #[serde(with = "humantime_serde")]
    pub token_lifetime: Duration,
    /// Development only: create the key set (and `signing_key`, if set) on first
    /// start.
    pub create_key_if_missing: bool,
    /// How often the key set's manifest is checked for changes (keys also reload
    /// on SIGHUP).
    #[serde(with = "humantime_serde")]
    pub key_reload_interval: Duration,
    /// `stackpass-signing-key.pem` beside the config file: `signing_key`'s
    /// default before key sets, still used when neither a key set nor
    /// `signing_key` is there.
    #[serde(skip)]
    pub former_default_key: PathBuf,
}

/// `issuer.signing_key`'s default before key sets.
const FORMER_DEFAULT_KEY: &str = "stackpass-signing-key.pem";

impl Default for IssuerConfig {
    fn default() -> Self {
        IssuerConfig {
            key_dir: PathBuf::from("stackpass-keys"),
            signing_key: None,
            token_lifetime: Duration::from_secs(300),
            create_key_if_missing: false,
            key_reload_interval: Duration::from_secs(30),
            former_default_key: PathBuf::from(FORMER_DEFAULT_KEY),
        }
    }
}

impl IssuerConfig {
    /// Resolves relative key paths against the config file's directory.
    pub(super) fn resolve_paths(&mut self, base: &std::path::Path) {
        let resolve = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        resolve(&mut self.key_dir);
        if let Some(p) = self.signing_key.as_mut() {
            resolve(p);
        }
        self.former_default_key = base.join(FORMER_DEFAULT_KEY);
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CatalogKind {
    Backstage,
    Static,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CatalogConfig {
    pub kind: CatalogKind,
    /// Backstage base URL.
    pub url: Option<Url>,
    /// Static external-access token for the catalog API. Prefer `token_file` or the
    /// `STACKPASS_CATALOG__TOKEN` variable to writing it into the file.
    #[serde(default, deserialize_with = "optional_secret")]
    pub token: Option<SecretString>,
    pub token_file: Option<PathBuf>,
    /// Static catalog file.
    pub file: Option<PathBuf>,
    #[serde(default = "default_cache_ttl", with = "humantime_serde")]
    pub cache_ttl: Duration,
    #[serde(default = "default_cache_capacity")]
    pub cache_capacity: u64,
    #[serde(default = "default_fetch_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Lets the catalog (ownership and group membership) come over plain http
    /// from a host that is not loopback: anyone on that path can rewrite it.
    #[serde(default)]
    pub insecure_allow_http: bool,
    /// A PEM bundle of CAs to trust for the catalog (a private CA).
    pub ca_file: Option<PathBuf>,
    /// `false`: trust only `ca_file`, not the public CAs.
    #[serde(default = "default_trust_public_roots")]
    pub trust_public_roots: bool,
}

fn default_trust_public_roots() -> bool {
    true
}

fn optional_secret<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<SecretString>, D::Error> {
    Ok(Option::<String>::deserialize(d)?.map(SecretString::from))
}

fn default_cache_ttl() -> Duration {
    Duration::from_secs(60)
}

fn default_cache_capacity() -> u64 {
    10_000
}

fn default_fetch_timeout() -> Duration {
    Duration::from_secs(5)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StacksKind {
    Static,
}

/// `[stacks]`: where stacks and their tags come from. The table itself is the
/// original single source (a static registry for every tool); `[stacks.pulumi]`
/// and `[stacks.terraform]` give a tool a source of its own, and a tool with
/// neither has no stacks at all.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StacksConfig {
    /// The source for every tool without a table of its own (only `static`).
    pub kind: Option<StacksKind>,
    pub file: Option<PathBuf>,
    /// The tag of `[stacks]`' own source whose value names the catalog component.
    #[serde(default = "default_component_tag")]
    pub component_tag: String,
    /// The stack tag whose value names the environment, for every source (policy
    /// rules select on it, so there is one).
    #[serde(default = "default_environment_tag")]
    pub environment_tag: String,
    /// The source of `pulumi:` stacks.
    pub pulumi: Option<StackSourceConfig>,
    /// The source of `terraform:` workspaces.
    pub terraform: Option<StackSourceConfig>,
}

impl StacksConfig {
    /// The tables of the tools that have their own source, with their key.
    pub fn tool_sources(&self) -> impl Iterator<Item = (&'static str, &StackSourceConfig)> {
        [("pulumi", &self.pulumi), ("terraform", &self.terraform)]
            .into_iter()
            .filter_map(|(tool, source)| source.as_ref().map(|s| (tool, s)))
    }

    pub(super) fn tool_sources_mut(&mut self) -> impl Iterator<Item = &mut StackSourceConfig> {
        [self.pulumi.as_mut(), self.terraform.as_mut()]
            .into_iter()
            .flatten()
    }

    /// The longest any one stack lookup can wait for its source.
    pub fn longest_wait(&self) -> Duration {
        self.tool_sources()
            .map(|(_, s)| s.longest_wait())
            .max()
            .unwrap_or_default()
    }
}

/// One tool's stack source: `[stacks.pulumi]` or `[stacks.terraform]`.
#[derive(Debug, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum StackSourceConfig {
    /// A static registry file, as `[stacks]` reads it.
    Static(StaticStacksConfig),
    /// Pulumi Cloud (or self-hosted Pulumi Cloud): the stack's tags.
    PulumiCloud(RemoteStacksConfig),
    /// HCP Terraform or Terraform Enterprise: the workspace's effective tag bindings.
    HcpTerraform(RemoteStacksConfig),
}

impl StackSourceConfig {
    pub fn component_tag(&self) -> &str {
        match self {
            StackSourceConfig::Static(s) => &s.component_tag,
            StackSourceConfig::PulumiCloud(r) | StackSourceConfig::HcpTerraform(r) => {
                &r.component_tag
            }
        }
    }

    /// The longest one lookup can wait for the source: HCP Terraform takes
    /// two requests (the workspace, then its tag bindings), one after the other.
    pub fn longest_wait(&self) -> Duration {
        match self {
            StackSourceConfig::Static(_) => Duration::ZERO,
            StackSourceConfig::PulumiCloud(r) => r.timeout,
            StackSourceConfig::HcpTerraform(r) => r.timeout * 2,
        }
    }

    pub fn kind_name(&self) -> &'static str {
        match self {
            StackSourceConfig::Static(_) => "static",
            StackSourceConfig::PulumiCloud(_) => "pulumi-cloud",
            StackSourceConfig::HcpTerraform(_) => "hcp-terraform",
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaticStacksConfig {
    pub file: PathBuf,
    #[serde(default = "default_source_component_tag")]
    pub component_tag: String,
}

/// A stack source reached over HTTP, with its cache.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoteStacksConfig {
    /// Pulumi Cloud's API URL (`https://api.pulumi.com`, or a self-hosted API
    /// component's) or the HCP Terraform / Terraform Enterprise address
    /// (`https://app.terraform.io`); unset: the SaaS one.
    pub url: Option<Url>,
    /// The access token. Prefer `token_file` or the environment
    /// (`STACKPASS_STACKS__PULUMI__TOKEN`, `STACKPASS_STACKS__TERRAFORM__TOKEN`).
    #[serde(default, deserialize_with = "optional_secret")]
    pub token: Option<SecretString>,
    pub token_file: Option<PathBuf>,
    /// The tag whose value names the catalog component; valid in both Pulumi
    /// Cloud and HCP Terraform (`backstage.io/component` is valid in neither).
    #[serde(default = "default_source_component_tag")]
    pub component_tag: String,
    /// hcp-terraform only: tag keys whose value counts only when the workspace
    /// inherits it from its project. A workspace binding of its own for one of
    /// these keys (a workspace admin's override) makes the workspace unknown.
    /// Unset: the component tag alone.
    pub project_tags: Option<Vec<String>>,
    /// How long one HTTP request to the source may take.
    #[serde(default = "default_fetch_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// How long an answer is used without asking again.
    #[serde(default = "default_cache_ttl", with = "humantime_serde")]
    pub cache_ttl: Duration,
    /// How long past `cache_ttl` a stack's last answer may still be used while
    /// the source is down (unreachable, 5xx, 429). `0s`: never.
    #[serde(default = "default_stale_window", with = "humantime_serde")]
    pub stale_window: Duration,
    /// How long "no such stack" (404, or no access) is remembered. `0s`: never;
    /// unset: 10s, or `cache_ttl` if that is shorter.
    #[serde(default, with = "humantime_serde")]
    pub negative_cache_ttl: Option<Duration>,
    #[serde(default = "default_cache_capacity")]
    pub cache_capacity: u64,
    /// Lets tags come over plain http from a host that is not loopback: anyone
    /// on that path could rewrite ownership.
    #[serde(default)]
    pub insecure_allow_http: bool,
    /// A PEM bundle of CAs to trust for this source (a self-hosted service's
    /// private CA).
    pub ca_file: Option<PathBuf>,
    /// `false`: trust only `ca_file`, not the public CAs.
    #[serde(default = "default_trust_public_roots")]
    pub trust_public_roots: bool,
}

fn default_component_tag() -> String {
    "backstage.io/component".into()
}

/// The component tag of `[stacks.<tool>]` sources: a key Pulumi Cloud, HCP
/// Terraform and static files all accept.
pub const SOURCE_COMPONENT_TAG: &str = "backstage-component";

fn default_source_component_tag() -> String {
    SOURCE_COMPONENT_TAG.into()
}

fn default_stale_window() -> Duration {
    Duration::from_secs(15 * 60)
}

impl RemoteStacksConfig {
    pub fn negative_ttl(&self) -> Duration {
        self.negative_cache_ttl
            .unwrap_or(Duration::from_secs(10).min(self.cache_ttl))
    }
}

fn default_environment_tag() -> String {
    "environment".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PolicyConfig {
    /// Rules written in the server config; tried before the files' rules.
    pub rules: Vec<RuleConfig>,
    /// Agent bounds written in the server config (`[[policy.agents]]`).
    pub agents: Vec<AgentBoundsConfig>,
    /// Policy files, or directories of `*.toml` policy files, in order.
    pub files: Vec<PathBuf>,
    /// How often policy files are checked for changes (they also reload on SIGHUP).
    #[serde(with = "humantime_serde")]
    pub reload_interval: Duration,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        PolicyConfig {
            rules: Vec::new(),
            agents: Vec::new(),
            files: Vec::new(),
            reload_interval: Duration::from_secs(2),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// `sqlite://PATH` (relative paths are relative to the config file) or
    /// `postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE`. Prefer the
    /// `STACKPASS_AUDIT__URL` variable for URLs that carry a password.
    pub url: String,
    /// How long a write waits for a lock or a connection before the request fails closed.
    #[serde(with = "humantime_serde")]
    pub busy_timeout: Duration,
    /// Members of these catalog groups may read the whole audit log; everyone
    /// else may read only their own records.
    pub auditor_groups: Vec<EntityRef>,
    /// How long records are kept; `stackpass audit prune` removes older ones.
    #[serde(with = "humantime_serde")]
    pub retention: Option<Duration>,
    /// Where the server writes a signed checkpoint of the chain's head every
    /// `checkpoint_interval` (unset: none are written; `stackpass audit
    /// checkpoint --sign` from cron does the same).
    pub checkpoint_dir: Option<PathBuf>,
    #[serde(with = "humantime_serde")]
    pub checkpoint_interval: Duration,
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            url: "sqlite://stackpass.db".into(),
            busy_timeout: Duration::from_secs(5),
            auditor_groups: Vec::new(),
            retention: None,
            checkpoint_dir: None,
            checkpoint_interval: Duration::from_secs(3600),
        }
    }
}

/// `[agents]`: who administers AI agents acting for people.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentsConfig {
    /// Members of these catalog groups may revoke (and restore) an agent for
    /// every person; without any, only people revoke their own delegations.
    pub admin_groups: Vec<EntityRef>,
}

impl AuditConfig {
    /// The SQLite file path, if the URL names one.
    pub fn sqlite_path(&self) -> Option<PathBuf> {
        sqlite_path(&self.url)
    }
}

/// `[mcp]`: the MCP server at `/mcp` (see `api::mcp`). Off unless enabled: it
/// is a second way in for agents, and an operator should choose it.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct McpConfig {
    #[serde(default)]
    pub enabled: bool,
    /// An audience that names the MCP server besides its resource URL
    /// (`{server.public_url}/mcp`), for identity providers that cannot put a
    /// URL in `aud`. Tokens whose every audience is one of the two are accepted.
    pub audience: Option<String>,
    /// The issuers (`iss`, exactly) that agents and people get tokens for `/mcp`
    /// from, as the protected-resource metadata advertises them. Default:
    /// every trusted issuer that accepts an MCP audience.
    #[serde(default)]
    pub authorization_servers: Vec<String>,
    /// Scopes the metadata advertises as `scopes_supported` (RFC 9728);
    /// informational: the broker's policy, not scopes, decides.
    #[serde(default)]
    pub scopes_supported: Vec<String>,
}
