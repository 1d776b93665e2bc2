//! Shared test support: the one home of fixtures and doubles, one file per double.
//! Everything is re-exported here, so a test module needs one
//! `use crate::support::*;`. `benches/issuance.rs` includes this module too.
//!
//! - [`tokens`]: [`TestKey`], an ES256 key as an identity provider holds it, and
//!   [`sign_jwt`] for tokens no library would build.
//! - [`backstage`]: [`BackstageDouble`], Backstage's auth backend and catalog API
//!   with request counters, and the catalog entities it serves.
//! - [`sts`]: [`Moto`], moto's real STS emulator, and [`StsRecorder`], which
//!   records what the broker sent to STS and forwards it or answers by itself.
//! - [`broker`]: [`Broker`], the real `stackpass` binary serving on a random port
//!   with a config written to a temp dir, its stderr captured for log assertions;
//!   [`TestResponse`]; and [`World`], the usual setup of all three.
//! - [`postgres`]: [`PgDatabase`], a fresh database per test on a real server.
//! - [`balancer`]: [`Balancer`], a load balancer that follows each backend's
//!   `/readyz` as a Kubernetes Service's endpoints do.
//! - [`webhook`]: [`WebhookListener`], the notification webhook double.
//! - [`otlp`]: [`OtlpCollector`], an OpenTelemetry collector's OTLP/HTTP
//!   traces receiver, decoding the spans the broker exports.
//! - [`prometheus`]: [`scrape`], a `/metrics` page read by Prometheus's own
//!   text-format parser.
//! - [`google`]: [`GoogleDouble`], Google STS and IAM Credentials
//!   (`generateAccessToken`), judging subject tokens as workload identity
//!   federation does.
//! - [`entra`]: [`EntraDouble`], the Microsoft Entra token endpoint for client
//!   credentials with a federated assertion, with its AADSTS errors.
//! - [`pulumi_cloud`]: [`PulumiCloudDouble`], Pulumi Cloud's Get Stack, with
//!   its token check, 404 for stacks it hides, a request counter and an outage.
//! - [`hcp_terraform`]: [`HcpTerraformDouble`], HCP Terraform's Show Workspace
//!   and effective tag bindings (projects' bindings inherited, workspace
//!   overrides), with the same counter and outage.
//! - [`audit`]: reading, crashing and verifying the audit log from outside.
//! - [`process`]: paths, the `stackpass` CLI, free ports, local HTTP servers.
//! - [`tls`]: [`TestCa`], a private CA made in the test, and [`serve_tls`].
//! - Machine issuers, each an [`OidcIssuer`] with its documented claims:
//!   [`github_actions`], [`gitlab_ci`], [`pulumi_deployments`],
//!   [`hcp_terraform_identity`], [`kubernetes`].

pub mod audit;
pub mod backstage;
pub mod balancer;
pub mod broker;
pub mod entra;
pub mod github_actions;
pub mod gitlab_ci;
pub mod google;
pub mod hcp_terraform;
pub mod hcp_terraform_identity;
pub mod kubernetes;
pub mod otlp;
pub mod postgres;
pub mod process;
pub mod prometheus;
pub mod pulumi_cloud;
pub mod pulumi_deployments;
pub mod sts;
pub mod tls;
pub mod tokens;
pub mod webhook;

pub use audit::*;
pub use backstage::*;
pub use balancer::*;
pub use broker::*;
pub use entra::*;
pub use github_actions::*;
pub use gitlab_ci::*;
pub use google::*;
pub use hcp_terraform::*;
pub use hcp_terraform_identity::*;
pub use kubernetes::*;
pub use otlp::*;
pub use postgres::*;
pub use process::*;
pub use prometheus::*;
pub use pulumi_cloud::*;
pub use pulumi_deployments::*;
pub use sts::*;
pub use tls::*;
pub use tokens::*;
pub use webhook::*;
