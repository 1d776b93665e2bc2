//! stackpass: an HTTP credential broker. A verified Backstage (or other OIDC)
//! identity names a Pulumi or Terraform stack and receives short-lived cloud
//! credentials, if the stack's tags tie it to a catalog component the caller's team
//! owns; every decision and issuance is audited. See ARCHITECTURE.md for the map.

pub mod api;
pub mod approvals;
pub mod audit;
pub mod broker;
pub mod catalog;
pub mod cli;
pub mod config;
pub mod database;
#[cfg(test)]
mod fakes;
pub mod http_client;
pub mod identity;
pub mod issuer;
pub mod metrics;
pub mod notify;
pub mod policy;
pub mod registry;
pub mod revocations;
pub mod stacks;
pub mod startup;
pub mod telemetry;
pub mod wire;
