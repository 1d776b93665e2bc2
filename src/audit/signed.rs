//! Signed checkpoints: the chain's head, signed with the broker's own issuer
//! key as a compact JWS, so a checkpoint kept outside the database cannot be
//! forged by whoever can write where it is kept, and anyone holding the
//! broker's published JWKS can check it.
//!
//! The JWS header has `typ: stackpass-checkpoint+jwt` (so a subject token is
//! never mistaken for one) and the `kid` of the signing key; the payload is
//! `{"iss": <issuer URL>, "iat": <unix time>, "checkpoint": "stackpass-checkpoint-v1:SEQ:HASH"}`.
//! A bare `stackpass-checkpoint-v1:…` line is an unsigned checkpoint; it is
//! only as trustworthy as the place it was kept, so verification takes one
//! only when asked to explicitly.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::Checkpoint;
use crate::issuer::KeyRing;

const TYP: &str = "stackpass-checkpoint+jwt";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignedCheckpointError {
    #[error("no signing key is loaded to sign the checkpoint with")]
    NoKey,
    #[error("could not sign the checkpoint: {0}")]
    Signing(String),
    #[error(
        "not a checkpoint: expected a signed checkpoint (a JWS) or a stackpass-checkpoint-v1 line"
    )]
    Unreadable,
    #[error("the checkpoint is signed by key {0:?}, which the JWKS does not hold (retired keys leave the JWKS: verify with a JWKS saved while the key was published)")]
    UnknownKey(String),
    #[error("the checkpoint's signature does not verify: {0}")]
    BadSignature(String),
}

#[derive(Serialize, Deserialize)]
struct Claims {
    iss: String,
    iat: i64,
    checkpoint: String,
}

/// A checkpoint as handed to `verify`: signed, or a bare unsigned line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckpointText {
    Signed(String),
    Unsigned(Checkpoint),
}

impl CheckpointText {
    pub fn parse(text: &str) -> Result<CheckpointText, SignedCheckpointError> {
        let text = text.trim();
        if let Some(checkpoint) = Checkpoint::parse(text) {
            return Ok(CheckpointText::Unsigned(checkpoint));
        }
        let jws_like = text.split('.').count() == 3
            && text
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if jws_like {
            Ok(CheckpointText::Signed(text.to_owned()))
        } else {
            Err(SignedCheckpointError::Unreadable)
        }
    }
}

/// Who vouched for a verified checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointSigner {
    pub kid: String,
    pub issuer: String,
    pub signed_at: OffsetDateTime,
}

/// Signs `checkpoint` with the ring's first signing key (ES256 when there is one).
pub fn sign_checkpoint(
    checkpoint: &Checkpoint,
    keys: &KeyRing,
    issuer_url: &str,
    now: OffsetDateTime,
) -> Result<String, SignedCheckpointError> {
    let key = keys.signing().next().ok_or(SignedCheckpointError::NoKey)?;
    let claims = Claims {
        iss: issuer_url.to_owned(),
        iat: now.unix_timestamp(),
        checkpoint: checkpoint.to_string(),
    };
    key.sign_jwt(&claims, Some(TYP))
        .map_err(|e| SignedCheckpointError::Signing(e.to_string()))
}

/// Checks a signed checkpoint against `jwks` (the broker's published key set):
/// the key its `kid` names, with the algorithm that key declares.
pub fn verify_signed_checkpoint(
    jws: &str,
    jwks: &jsonwebtoken::jwk::JwkSet,
) -> Result<(Checkpoint, CheckpointSigner), SignedCheckpointError> {
    let bad = |e: String| SignedCheckpointError::BadSignature(e);
    let header = jsonwebtoken::decode_header(jws).map_err(|e| bad(e.to_string()))?;
    if header.typ.as_deref() != Some(TYP) {
        return Err(bad(format!("its typ is {:?}, not {TYP:?}", header.typ)));
    }
    let kid = header.kid.ok_or_else(|| bad("it names no kid".into()))?;
    let jwk = jwks
        .find(&kid)
        .ok_or_else(|| SignedCheckpointError::UnknownKey(kid.clone()))?;
    let declared = jwk
        .common
        .key_algorithm
        .and_then(|a| a.to_string().parse::<jsonwebtoken::Algorithm>().ok())
        .ok_or_else(|| bad(format!("JWKS key {kid:?} declares no usable alg")))?;
    if declared != header.alg {
        return Err(bad(format!(
            "signed with {:?}, but key {kid:?} is for {declared:?}",
            header.alg
        )));
    }
    let key = jsonwebtoken::DecodingKey::from_jwk(jwk).map_err(|e| bad(e.to_string()))?;
    let mut validation = jsonwebtoken::Validation::new(declared);
    validation.required_spec_claims.clear();
    validation.validate_exp = false;
    validation.validate_aud = false;
    let claims = jsonwebtoken::decode::<Claims>(jws, &key, &validation)
        .map_err(|e| bad(e.to_string()))?
        .claims;
    let checkpoint = Checkpoint::parse(&claims.checkpoint)
        .ok_or_else(|| bad("its payload holds no stackpass-checkpoint-v1 line".into()))?;
    let signed_at = OffsetDateTime::from_unix_timestamp(claims.iat)
        .map_err(|_| bad("its iat is not a time".into()))?;
    Ok((
        checkpoint,
        CheckpointSigner {
            kid,
            issuer: claims.iss,
            signed_at,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::issuer::SigningKey;
    use secrecy::ExposeSecret;
    use stackpass_provider::SigningAlgorithm;

    fn ring() -> KeyRing {
        KeyRing::single(SigningKey::random(SigningAlgorithm::Es256).unwrap().0)
    }

    fn jwks(ring: &KeyRing) -> jsonwebtoken::jwk::JwkSet {
        let keys: Vec<_> = ring
            .published(OffsetDateTime::now_utc())
            .map(SigningKey::public_jwk)
            .collect();
        serde_json::from_value(serde_json::json!({ "keys": keys })).unwrap()
    }

    fn checkpoint() -> Checkpoint {
        Checkpoint {
            seq: 42,
            hash: "ab".repeat(32),
        }
    }

    #[test]
    fn a_signed_checkpoint_verifies_with_the_published_jwks() {
        let ring = ring();
        let now = OffsetDateTime::now_utc().replace_nanosecond(0).unwrap();
        let jws = sign_checkpoint(&checkpoint(), &ring, "https://stackpass.test", now).unwrap();
        let CheckpointText::Signed(text) = CheckpointText::parse(&format!("{jws}\n")).unwrap()
        else {
            panic!("a JWS is a signed checkpoint")
        };
        let (verified, signer) = verify_signed_checkpoint(&text, &jwks(&ring)).unwrap();
        assert_eq!(verified, checkpoint());
        assert_eq!(signer.issuer, "https://stackpass.test");
        assert_eq!(signer.signed_at, now);
        assert_eq!(signer.kid, ring.signing().next().unwrap().kid());
    }

    #[test]
    fn a_forged_or_foreign_checkpoint_is_refused() {
        let keys = ring();
        let now = OffsetDateTime::now_utc();
        let jws = sign_checkpoint(&checkpoint(), &keys, "https://stackpass.test", now).unwrap();
        // Signed by a key the JWKS does not hold.
        let other = ring();
        let foreign =
            sign_checkpoint(&checkpoint(), &other, "https://stackpass.test", now).unwrap();
        assert!(matches!(
            verify_signed_checkpoint(&foreign, &jwks(&keys)),
            Err(SignedCheckpointError::UnknownKey(_))
        ));
        // Signed by another key under the published key's kid.
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
        header.kid = Some(keys.signing().next().unwrap().kid().to_owned());
        header.typ = Some(TYP.to_owned());
        let claims = Claims {
            iss: "https://stackpass.test".into(),
            iat: 1,
            checkpoint: checkpoint().to_string(),
        };
        let (_, other_pem) = SigningKey::random(SigningAlgorithm::Es256).unwrap();
        let other_key =
            jsonwebtoken::EncodingKey::from_ec_pem(other_pem.expose_secret().as_bytes()).unwrap();
        let impostor = jsonwebtoken::encode(&header, &claims, &other_key).unwrap();
        assert!(matches!(
            verify_signed_checkpoint(&impostor, &jwks(&keys)),
            Err(SignedCheckpointError::BadSignature(_))
        ));
        // A payload swapped under the original signature.
        let parts: Vec<&str> = jws.split('.').collect();
        let forged_payload = base64::Engine::encode(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            serde_json::json!({ "iss": "https://stackpass.test", "iat": 1,
                "checkpoint": Checkpoint { seq: 41, hash: "cd".repeat(32) }.to_string() })
            .to_string(),
        );
        let swapped = format!("{}.{forged_payload}.{}", parts[0], parts[2]);
        assert!(matches!(
            verify_signed_checkpoint(&swapped, &jwks(&keys)),
            Err(SignedCheckpointError::BadSignature(_))
        ));
        assert_eq!(
            CheckpointText::parse("not a checkpoint"),
            Err(SignedCheckpointError::Unreadable)
        );
        assert_eq!(
            CheckpointText::parse(&checkpoint().to_string()),
            Ok(CheckpointText::Unsigned(checkpoint()))
        );
    }
}
