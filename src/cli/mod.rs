//! The client-side and operator commands behind `stackpass creds`, `run`, `cache`, `dev token`,
//! `keys`, `config check`, `setup` and `audit list`. Each returns a [`CliError`]:
//! one line saying what went wrong and one hint saying what to do.

pub mod args;
pub mod audit;
pub mod cache;
mod creds;
mod dev;
mod project;
mod run;
mod setup;

use std::fmt;

pub use args::read_token;
pub use creds::{
    agents, approvals, explain, fetch_credentials, read_token_file, trust_broker_ca, AgentAction,
    ApprovalAction, CredsArgs, Printer,
};
pub use dev::{dev_token, DevTokenArgs};
pub use run::{run, RunArgs};
pub use setup::trust_setup;

#[derive(Debug)]
pub struct CliError {
    pub message: String,
    pub hint: Option<String>,
}

impl CliError {
    pub fn new(message: impl Into<String>, hint: impl Into<String>) -> Self {
        CliError {
            message: message.into(),
            hint: Some(hint.into()),
        }
    }

    pub fn plain(message: impl Into<String>) -> Self {
        CliError {
            message: message.into(),
            hint: None,
        }
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "error: {}", self.message)?;
        if let Some(hint) = &self.hint {
            write!(f, "\nhint: {hint}")?;
        }
        Ok(())
    }
}

impl std::error::Error for CliError {}
