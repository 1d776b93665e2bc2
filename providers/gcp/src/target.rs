//! GCP targets: a workload identity pool provider, and optionally the service
//! account to impersonate through it:
//!
//! `projects/NUMBER/locations/global/workloadIdentityPools/POOL/providers/PROVIDER[/serviceAccounts/EMAIL]`
//!
//! The first part is the pool provider's resource name as Google writes it;
//! the subject token's audience and the STS `audience` are derived from it.
//! Checked as a pattern when policy loads, parsed fully per request.

use stackpass_provider::{masked_pattern, HOLE};

pub const SYNTAX: &str = "projects/NUMBER/locations/global/workloadIdentityPools/POOL/providers/PROVIDER[/serviceAccounts/EMAIL]";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GcpTarget {
    pub project_number: String,
    pub pool: String,
    pub provider: String,
    pub service_account: Option<String>,
}

impl GcpTarget {
    pub fn parse(text: &str) -> Result<GcpTarget, String> {
        let segments = check_shape(text).map_err(|why| explain(text, &why))?;
        Ok(GcpTarget {
            project_number: segments[1].to_owned(),
            pool: segments[5].to_owned(),
            provider: segments[7].to_owned(),
            service_account: segments.get(9).map(|s| (*s).to_owned()),
        })
    }

    /// `projects/…/providers/…`: the pool provider's resource name.
    pub fn provider_name(&self) -> String {
        format!(
            "projects/{}/locations/global/workloadIdentityPools/{}/providers/{}",
            self.project_number, self.pool, self.provider
        )
    }

    /// What STS takes as `audience`.
    pub fn sts_audience(&self) -> String {
        format!("//iam.googleapis.com/{}", self.provider_name())
    }

    /// The subject token's `aud`: a pool provider's default allowed audience,
    /// so no audience needs configuring at Google.
    pub fn token_audience(&self) -> String {
        format!("https://iam.googleapis.com/{}", self.provider_name())
    }

    /// The project id a service account lives in (`NAME@PROJECT.iam.gserviceaccount.com`).
    pub fn project_id(&self) -> Option<&str> {
        self.service_account
            .as_deref()?
            .split_once('@')?
            .1
            .strip_suffix(".iam.gserviceaccount.com")
    }
}

/// Checks a rule's target template; each hole must sit inside one segment.
pub fn check_pattern(pattern: &str) -> Result<(), String> {
    let masked = masked_pattern(pattern).map_err(|why| explain(pattern, &why))?;
    check_shape(&masked)
        .map(|_| ())
        .map_err(|why| explain(pattern, &why))
}

fn explain(text: &str, why: &str) -> String {
    format!("{text:?} is not a GCP target: {why}; write {SYNTAX}")
}

/// The fixed words in order, and what each value segment must be.
fn check_shape(text: &str) -> Result<Vec<&str>, String> {
    let segments: Vec<&str> = text.split('/').collect();
    if segments.len() != 8 && segments.len() != 10 {
        return Err(format!(
            "it has {} path segments, not 8 (pool provider) or 10 (with a service account)",
            segments.len()
        ));
    }
    let fixed = [
        (0, "projects"),
        (2, "locations"),
        (3, "global"),
        (4, "workloadIdentityPools"),
        (6, "providers"),
        (8, "serviceAccounts"),
    ];
    for (index, word) in fixed {
        if let Some(found) = segments.get(index) {
            if *found != word {
                return Err(format!(
                    "segment {} is {found:?}, expected {word:?}",
                    index + 1
                ));
            }
        }
    }
    let number = segments[1];
    if number.is_empty() || !number.chars().all(|c| c.is_ascii_digit() || c == HOLE) {
        return Err(format!(
            "the project NUMBER {number:?} must be digits (the project number, not its id)"
        ));
    }
    for (what, id) in [("POOL", segments[5]), ("PROVIDER", segments[7])] {
        check_id(what, id)?;
    }
    if let Some(email) = segments.get(9) {
        check_email(email)?;
    }
    Ok(segments)
}

/// Pool and provider ids: 4 to 32 lowercase letters, digits and hyphens.
fn check_id(what: &str, id: &str) -> Result<(), String> {
    let valid_chars = id
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == HOLE);
    let has_hole = id.contains(HOLE);
    if !valid_chars || id.is_empty() || id.len() > 32 || (!has_hole && id.len() < 4) {
        return Err(format!(
            "{what} {id:?} must be 4 to 32 lowercase letters, digits or hyphens"
        ));
    }
    if !has_hole && (id.starts_with('-') || id.starts_with("gcp-")) {
        return Err(format!(
            "{what} {id:?} may not start with a hyphen or \"gcp-\""
        ));
    }
    Ok(())
}

fn check_email(email: &str) -> Result<(), String> {
    let valid = email.split_once('@').is_some_and(|(name, domain)| {
        !name.is_empty()
            && domain.contains('.')
            && email
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '@' | '.' | '-' | '_' | HOLE))
    });
    if valid {
        Ok(())
    } else {
        Err(format!(
            "the service account {email:?} must be an email such as deployer@PROJECT.iam.gserviceaccount.com"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POOL: &str =
        "projects/123456789012/locations/global/workloadIdentityPools/stackpass/providers/broker";

    #[test]
    fn a_pool_provider_with_and_without_a_service_account() {
        let plain = GcpTarget::parse(POOL).unwrap();
        assert_eq!(plain.service_account, None);
        assert_eq!(plain.sts_audience(), format!("//iam.googleapis.com/{POOL}"));
        assert_eq!(
            plain.token_audience(),
            format!("https://iam.googleapis.com/{POOL}")
        );
        let with = GcpTarget::parse(&format!(
            "{POOL}/serviceAccounts/deployer@acme-prod.iam.gserviceaccount.com"
        ))
        .unwrap();
        assert_eq!(
            with.service_account.as_deref(),
            Some("deployer@acme-prod.iam.gserviceaccount.com")
        );
        assert_eq!(with.project_id(), Some("acme-prod"));
    }

    #[test]
    fn malformed_targets_say_what_is_wrong() {
        for (text, needle) in [
            ("projects/acme/locations/global/workloadIdentityPools/stackpass/providers/broker", "digits"),
            ("projects/1/locations/us/workloadIdentityPools/stackpass/providers/broker", "\"global\""),
            ("projects/1/locations/global/workloadIdentityPools/ab/providers/broker", "4 to 32"),
            ("projects/1/locations/global/workloadIdentityPools/gcp-pool/providers/broker", "gcp-"),
            ("projects/1/locations/global/workloadIdentityPools/pool/providers/broker/serviceAccounts/nobody", "email"),
            ("projects/1/locations/global/workloadIdentityPools/pool", "path segments"),
        ] {
            let error = GcpTarget::parse(text).unwrap_err();
            assert!(error.contains(needle), "{text}: {error}");
        }
    }

    #[test]
    fn patterns_allow_holes_inside_segments_only() {
        check_pattern("projects/{tags.gcp-project-number}/locations/global/workloadIdentityPools/stackpass/providers/broker/serviceAccounts/{component}-deployer@{tags.gcp-project}.iam.gserviceaccount.com").unwrap();
        check_pattern("projects/1/locations/global/workloadIdentityPools/{owner}/providers/broker")
            .unwrap();
        assert!(check_pattern(
            "projects/{a}/locations/global/workloadIdentityPools/stackpass/providers"
        )
        .is_err());
        assert!(check_pattern("{whole}").is_err());
    }
}
