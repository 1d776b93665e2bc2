//! Which audiences a token names, read after the verifier accepted it (so
//! the `aud` read here is the signed one). The MCP server takes only tokens
//! aimed at it alone; `/v1` leaves those tokens to it.

use base64::Engine;

/// The token's `aud` (a string or an array) is non-empty and names only
/// `accepted` values. Only meaningful for a token the verifier accepted:
/// the audience read here is then the signed one.
pub(super) fn aimed_at(token: &str, accepted: &[String]) -> bool {
    let audiences = audiences(token);
    !audiences.is_empty() && audiences.iter().all(|a| accepted.contains(a))
}

/// Whether the token's `aud` names any of `audiences` (for `/v1`, which
/// leaves tokens minted for the MCP server to it). Only meaningful for a
/// token the verifier accepted.
pub(super) fn names_any(token: &str, audiences: &[String]) -> bool {
    !audiences.is_empty() && self::audiences(token).iter().any(|a| audiences.contains(a))
}

/// The token's `aud`, a string or an array of them; none if unreadable.
fn audiences(token: &str) -> Vec<String> {
    let claims = token
        .split('.')
        .nth(1)
        .and_then(|payload| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(payload)
                .ok()
        })
        .and_then(|bytes| {
            serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(&bytes).ok()
        });
    let text = |value: &serde_json::Value| value.as_str().map(str::to_owned);
    match claims.as_ref().and_then(|claims| claims.get("aud")) {
        Some(aud @ serde_json::Value::String(_)) => text(aud).into_iter().collect(),
        Some(serde_json::Value::Array(auds)) => {
            // A non-string member makes the whole list unreadable.
            auds.iter()
                .map(text)
                .collect::<Option<Vec<_>>>()
                .unwrap_or_default()
        }
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn token(claims: serde_json::Value) -> String {
        let encode = |v: serde_json::Value| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
        };
        format!(
            "{}.{}.sig",
            encode(json!({ "alg": "ES256" })),
            encode(claims)
        )
    }

    #[test]
    fn only_tokens_for_this_server_alone_are_aimed_at_it() {
        let accepted = [
            "https://sp.example/mcp".to_owned(),
            "stackpass-mcp".to_owned(),
        ];
        for aud in [
            json!("https://sp.example/mcp"),
            json!(["stackpass-mcp"]),
            json!(["stackpass-mcp", "https://sp.example/mcp"]),
        ] {
            assert!(aimed_at(&token(json!({ "aud": aud })), &accepted), "{aud}");
        }
        for aud in [
            json!("backstage"),
            json!(["backstage", "https://sp.example/mcp"]),
            json!("https://sp.example"),
            json!("https://sp.example/mcp/"),
            json!([]),
            json!(null),
            json!(7),
        ] {
            assert!(!aimed_at(&token(json!({ "aud": aud })), &accepted), "{aud}");
        }
        assert!(!aimed_at(&token(json!({})), &accepted));
        assert!(!aimed_at("not-a-jwt", &accepted));
    }

    #[test]
    fn a_token_naming_this_server_among_others_is_not_for_v1() {
        let mcp = ["https://sp.example/mcp".to_owned()];
        let names = |aud| names_any(&token(json!({ "aud": aud })), &mcp);
        assert!(names(json!("https://sp.example/mcp")));
        assert!(names(json!(["stackpass", "https://sp.example/mcp"])));
        assert!(!names(json!("stackpass")));
        assert!(!names(json!(["stackpass"])));
        // MCP off: nothing is set aside for it.
        assert!(!names_any(
            &token(json!({ "aud": "https://sp.example/mcp" })),
            &[]
        ));
    }
}
