//! The integration tests, one binary: each module below was its own test file,
//! and all of them share the fixtures and doubles in [`support`]. They start the
//! real `stackpass` binary, moto's STS emulator (from `.venv`), a real PostgreSQL
//! server and a real Backstage backend, so run them through `scripts/test`, which
//! installs those first. After that, `cargo test --all-features --test integration
//! [filter]` runs them again, e.g. with the filter `issuance::` for one module
//! (`--all-features` compiles in testcloud, the test-only provider).

mod support;

mod agents;
mod approvals;
mod audit;
mod audit_log;
mod azure;
mod backstage_real;
mod cancellation;
mod cli;
mod deploy;
mod doubles;
mod drain;
mod examples;
mod exhaustion;
mod gcp;
mod https;
mod identity;
mod issuance;
mod issuer_trust;
mod keys;
mod limits;
mod machines;
mod mcp;
mod notifications;
mod observability;
mod openapi;
mod policy;
mod postgres;
mod quickstart;
mod revocation;
mod run;
mod setup;
mod stack_sources;
#[cfg(feature = "testcloud")]
mod testcloud;
mod token_exchange;
