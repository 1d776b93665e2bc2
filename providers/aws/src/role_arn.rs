//! IAM role ARNs, the AWS target: `arn:PARTITION:iam::ACCOUNT:role/[PATH/]NAME`.
//! Checked as a pattern when policy loads (with `{…}` holes for per-request
//! values) and parsed fully per request.

use stackpass_provider::{masked_pattern, HOLE};

pub const SYNTAX: &str = "arn:aws:iam::ACCOUNT:role/NAME";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleArn {
    pub partition: String,
    pub account: String,
    /// `role/` and everything after it, as IAM writes it.
    pub resource: String,
}

impl RoleArn {
    pub fn parse(text: &str) -> Result<RoleArn, String> {
        check_shape(text).map_err(|why| explain(text, &why))?;
        let mut fields = text.splitn(6, ':');
        let (_, partition, _, _, account, resource) = (
            fields.next(),
            fields.next().unwrap_or_default(),
            fields.next(),
            fields.next(),
            fields.next().unwrap_or_default(),
            fields.next().unwrap_or_default(),
        );
        Ok(RoleArn {
            partition: partition.to_owned(),
            account: account.to_owned(),
            resource: resource.to_owned(),
        })
    }
}

/// Checks a rule's role template: the literal parts must be where an ARN
/// allows them, and each hole must sit where its value cannot change the
/// ARN's shape.
pub fn check_pattern(pattern: &str) -> Result<(), String> {
    let masked = masked_pattern(pattern).map_err(|why| explain(pattern, &why))?;
    check_shape(&masked).map_err(|why| explain(pattern, &why))
}

fn explain(text: &str, why: &str) -> String {
    format!("{text:?} is not an IAM role ARN: {why}; write {SYNTAX}")
}

/// The shape of a role ARN; `HOLE` characters match any allowed value.
fn check_shape(text: &str) -> Result<(), String> {
    let fields: Vec<&str> = text.splitn(6, ':').collect();
    let [arn, partition, service, region, account, resource] = fields[..] else {
        return Err("it needs six ':'-separated fields".into());
    };
    if arn != "arn" {
        return Err("it must start with arn:".into());
    }
    let partition_ok = partition.contains(HOLE)
        || (partition.starts_with("aws")
            && partition
                .chars()
                .all(|c| c.is_ascii_lowercase() || c == '-'));
    if !partition_ok {
        return Err(format!("{partition:?} is not an AWS partition"));
    }
    if service != "iam" {
        return Err("the service must be iam".into());
    }
    if !region.is_empty() {
        return Err("IAM ARNs have no region".into());
    }
    let account_ok = if account.contains(HOLE) {
        account.chars().all(|c| c == HOLE || c.is_ascii_digit())
    } else {
        account.len() == 12 && account.chars().all(|c| c.is_ascii_digit())
    };
    if !account_ok {
        return Err("the account must be 12 digits".into());
    }
    let Some(path_and_name) = resource.strip_prefix("role/") else {
        return Err("the resource must be role/NAME".into());
    };
    let name = path_and_name.rsplit('/').next().unwrap_or_default();
    if name.is_empty() {
        return Err("the role name is empty".into());
    }
    if path_and_name.split('/').any(str::is_empty) {
        return Err("the role path has an empty segment".into());
    }
    let allowed = |c: char| c == HOLE || c.is_ascii_alphanumeric() || "+=,.@_-/".contains(c);
    if !path_and_name.chars().all(allowed) {
        return Err("role names and paths use letters, digits and +=,.@_-".into());
    }
    if !name.contains(HOLE) && name.len() > 64 {
        return Err("the role name is longer than 64 characters".into());
    }
    if text.len() > 2048 {
        return Err("it is longer than 2048 characters".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_arns_parse() {
        let arn = RoleArn::parse("arn:aws:iam::111111111111:role/payments-deployer").unwrap();
        assert_eq!(arn.account, "111111111111");
        assert_eq!(arn.partition, "aws");
        assert_eq!(arn.resource, "role/payments-deployer");
        assert!(RoleArn::parse("arn:aws-us-gov:iam::111111111111:role/team/x").is_ok());
    }

    #[test]
    fn malformed_role_arns_say_why() {
        for (bad, why) in [
            ("arn:aws:iam::1:role/r", "12 digits"),
            ("arn:aws:s3:::bucket", "service must be iam"),
            ("arn:aws:iam::111111111111:user/jane", "role/NAME"),
            ("arn:aws:iam:us-east-1:111111111111:role/r", "no region"),
            ("arn:aws:iam::111111111111:role/", "empty"),
            ("arn:aws:iam::111111111111:role/a//b", "empty segment"),
            ("arn:aws:iam::111111111111:role/a*", "letters, digits"),
            ("arn:gcp:iam::111111111111:role/r", "partition"),
            ("role/r", "six"),
        ] {
            let error = RoleArn::parse(bad).unwrap_err();
            assert!(error.contains(why), "{bad}: {error}");
            assert!(error.contains(SYNTAX), "{error}");
        }
    }

    #[test]
    fn patterns_allow_holes_only_where_values_cannot_reshape_the_arn() {
        for good in [
            "arn:aws:iam::{tags.aws-account}:role/{component}-deployer",
            "arn:aws:iam::111111111111:role/{component}",
            "arn:{tags.partition}:iam::{tags.account}:role/teams/{owner}/{component}",
        ] {
            assert_eq!(check_pattern(good), Ok(()), "{good}");
        }
        for bad in [
            "arn:aws:iam::{tags.aws-account}x:role/r",
            "arn:aws:iam::{tags.a}:user/{component}",
            "arn:aws:iam::1:role/{component}",
            "{tags.arn}",
        ] {
            assert!(check_pattern(bad).is_err(), "{bad}");
        }
    }
}
