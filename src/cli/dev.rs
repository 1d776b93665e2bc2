//! `stackpass dev token`: signs an identity token with the configured development
//! issuer's key, so the quickstart needs no Backstage. It refuses to run unless the
//! configuration trusts a development issuer, and the broker refuses to listen on
//! anything but loopback while one is trusted.

use std::time::Duration;

use crate::catalog::EntityRef;
use crate::config::Config;
use crate::issuer::SigningKey;

use super::CliError;

pub struct DevTokenArgs {
    pub user: String,
    pub lifetime: Duration,
    /// Makes the token an agent's: `act.sub` names the agent acting for `user`.
    pub actor: Option<String>,
}

pub fn dev_token(config: &Config, args: &DevTokenArgs) -> Result<String, CliError> {
    let issuer = config.development_issuer().ok_or_else(|| {
        CliError::new(
            "this configuration trusts no development issuer, so there is nothing to sign dev tokens with",
            "dev tokens are for the quickstart: run with --config examples/quickstart/stackpass.toml",
        )
    })?;
    let subject = EntityRef::parse_strict(&args.user).map_err(|e| {
        CliError::new(
            e.to_string(),
            "name a catalog user, e.g. --user user:default/jane",
        )
    })?;
    let key_file = issuer
        .key_file
        .as_ref()
        .expect("validated: development issuers have key_file");
    let key = SigningKey::load_or_generate(key_file)
        .map_err(|e| CliError::new(e.to_string(), "check the development issuer's key_file"))?;
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let mut claims = serde_json::json!({
        "iss": issuer.issuer_id().expect("validated: issuers have an id"),
        "sub": subject.to_string(),
        "aud": issuer.accepted_audiences().first().cloned().unwrap_or_default(),
        "iat": now,
        "exp": now + args.lifetime.as_secs() as i64,
    });
    if let Some(actor) = &args.actor {
        claims["act"] = serde_json::json!({ "sub": actor });
    }
    key.sign_jwt(&claims, None)
        .map_err(|e| CliError::plain(e.to_string()))
}
