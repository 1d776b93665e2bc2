//! The hash chain that makes the audit log tamper-evident, as pure functions:
//! the canonical encoding of a stored record, its hash, and the walk that finds
//! the first broken link. Both stores and `stackpass audit verify` use these, so
//! there is exactly one definition of what a record's hash covers.
//!
//! Canonical encoding, version 1 (documented in ARCHITECTURE.md): the JSON array
//!
//! ```text
//! ["stackpass-audit-v1", seq, record_id, recorded_at, event, outcome, request_id,
//!  issuance_id, requester, requester_kind, actor, issuer, stack, tags, component,
//!  owner, rule, provider, role, duration_seconds, expires_at, credential_id,
//!  client_addr, detail, prev_hash]
//! ```
//!
//! with every value exactly as stored (text columns as JSON strings, `tags` and
//! `detail` as the stored JSON text, integers as numbers, absent values as
//! `null`), serialized without whitespace. `hash` is the lowercase hex SHA-256 of
//! those bytes. `seq` is inside the hash, so moving a record breaks it; `prev_hash`
//! is inside too, so every record commits to the whole history before it.

use std::fmt;

use sha2::{Digest, Sha256};

/// The `prev_hash` of the first record of a chain that was never pruned.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

const ENCODING_VERSION: &str = "stackpass-audit-v1";

/// A record's columns exactly as stored: what the hash covers.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StoredRecord {
    pub seq: i64,
    pub record_id: String,
    pub recorded_at: String,
    pub event: String,
    pub outcome: String,
    pub request_id: String,
    pub issuance_id: Option<String>,
    pub requester: Option<String>,
    pub requester_kind: Option<String>,
    pub actor: Option<String>,
    pub issuer: Option<String>,
    pub stack: Option<String>,
    pub tags: Option<String>,
    pub component: Option<String>,
    pub owner: Option<String>,
    pub rule: Option<String>,
    pub provider: Option<String>,
    pub role: Option<String>,
    pub duration_seconds: Option<i64>,
    pub expires_at: Option<String>,
    pub credential_id: Option<String>,
    pub client_addr: Option<String>,
    pub detail: Option<String>,
    pub prev_hash: String,
    pub hash: String,
}

impl StoredRecord {
    pub fn canonical_encoding(&self) -> String {
        serde_json::to_string(&Canonical(self)).expect("text and integers always serialize")
    }

    pub fn compute_hash(&self) -> String {
        // The encoding goes straight into the hash, unbuffered: the writer
        // seals every record in its one thread.
        let mut hasher = Sha256::new();
        serde_json::to_writer(&mut hasher, &Canonical(self))
            .expect("text and integers always serialize");
        hex(&hasher.finalize())
    }

    /// Places the record after (`seq`, `prev_hash`) and seals it with its hash.
    pub fn seal(&mut self, seq: i64, prev_hash: &str) {
        self.seq = seq;
        self.prev_hash = prev_hash.to_owned();
        self.hash = self.compute_hash();
    }
}

/// A record as the canonical encoding's JSON array. serde_json writes each
/// element exactly as it writes the same `serde_json::Value`.
struct Canonical<'a>(&'a StoredRecord);

impl serde::Serialize for Canonical<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        let r = self.0;
        let mut array = serializer.serialize_seq(Some(25))?;
        array.serialize_element(ENCODING_VERSION)?;
        array.serialize_element(&r.seq)?;
        array.serialize_element(&r.record_id)?;
        array.serialize_element(&r.recorded_at)?;
        array.serialize_element(&r.event)?;
        array.serialize_element(&r.outcome)?;
        array.serialize_element(&r.request_id)?;
        array.serialize_element(&r.issuance_id)?;
        array.serialize_element(&r.requester)?;
        array.serialize_element(&r.requester_kind)?;
        array.serialize_element(&r.actor)?;
        array.serialize_element(&r.issuer)?;
        array.serialize_element(&r.stack)?;
        array.serialize_element(&r.tags)?;
        array.serialize_element(&r.component)?;
        array.serialize_element(&r.owner)?;
        array.serialize_element(&r.rule)?;
        array.serialize_element(&r.provider)?;
        array.serialize_element(&r.role)?;
        array.serialize_element(&r.duration_seconds)?;
        array.serialize_element(&r.expires_at)?;
        array.serialize_element(&r.credential_id)?;
        array.serialize_element(&r.client_addr)?;
        array.serialize_element(&r.detail)?;
        array.serialize_element(&r.prev_hash)?;
        array.end()
    }
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut text = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        text.push(DIGITS[usize::from(byte >> 4)].into());
        text.push(DIGITS[usize::from(byte & 0x0f)].into());
    }
    text
}

/// Where a chain starts: the genesis, or the seal left by retention pruning.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainStart {
    /// The seq the first remaining record must have.
    pub first_seq: i64,
    /// The hash that record's `prev_hash` must equal.
    pub prev_hash: String,
}

impl ChainStart {
    pub fn genesis() -> Self {
        ChainStart {
            first_seq: 1,
            prev_hash: GENESIS_HASH.into(),
        }
    }
}

/// The first broken link, named so an investigator knows where to look.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChainBreak {
    /// Records are missing between two that remain.
    Gap {
        expected_seq: i64,
        found_seq: i64,
        record_id: String,
    },
    /// A record's contents no longer match its own hash.
    Edited { seq: i64, record_id: String },
    /// A record's hash is intact but it does not follow the record before it.
    Unlinked { seq: i64, record_id: String },
    /// A checkpoint names a record that is gone or differs.
    CheckpointMismatch { seq: i64, detail: String },
    /// The chain does not start at the genesis, and no chained `audit_pruned`
    /// record names where it starts: records were deleted (or the start row
    /// moved) outside `stackpass audit prune`.
    UnprovenStart { start_seq: i64 },
}

impl fmt::Display for ChainBreak {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChainBreak::Gap { expected_seq, found_seq, record_id } => write!(
                f,
                "records {expected_seq}..{} are missing before record {found_seq} ({record_id}): deleted",
                found_seq - 1
            ),
            ChainBreak::Edited { seq, record_id } => write!(
                f,
                "record {seq} ({record_id}) does not match its hash: edited, or moved to another position"
            ),
            ChainBreak::Unlinked { seq, record_id } => write!(
                f,
                "record {seq} ({record_id}) does not follow the record before it: inserted, or records were reordered"
            ),
            ChainBreak::CheckpointMismatch { seq, detail } => write!(f, "checkpoint at record {seq}: {detail}"),
            ChainBreak::UnprovenStart { start_seq } => write!(
                f,
                "the chain starts at record {start_seq}, but no audit_pruned record in it names that start: \
                 records before it were deleted, or the start in audit_chain was moved, outside `stackpass audit prune`"
            ),
        }
    }
}

/// A checkpoint: the head of the chain at some moment, kept somewhere the
/// database's administrators cannot rewrite.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    pub seq: i64,
    pub hash: String,
}

impl Checkpoint {
    const PREFIX: &'static str = "stackpass-checkpoint-v1";

    pub fn parse(text: &str) -> Option<Checkpoint> {
        let mut parts = text.trim().split(':');
        if parts.next()? != Self::PREFIX {
            return None;
        }
        let seq = parts.next()?.parse().ok()?;
        let hash = parts.next()?.to_owned();
        let valid_hash = hash.len() == 64
            && hash
                .chars()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase());
        (parts.next().is_none() && valid_hash && seq >= 0).then_some(Checkpoint { seq, hash })
    }
}

impl fmt::Display for Checkpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", Self::PREFIX, self.seq, self.hash)
    }
}

/// Where a prune left the chain's start, as its `audit_pruned` record says:
/// `new_start_seq`/`new_start_prev_hash`, or (records written before those
/// keys existed) `pruned_through_seq + 1`/`pruned_through_hash`.
fn pruned_to(record: &StoredRecord) -> Option<ChainStart> {
    if record.event != "audit_pruned" {
        return None;
    }
    let detail: serde_json::Value = serde_json::from_str(record.detail.as_deref()?).ok()?;
    let text = |key: &str| detail.get(key)?.as_str().map(str::to_owned);
    match (
        detail.get("new_start_seq").and_then(|v| v.as_i64()),
        text("new_start_prev_hash"),
    ) {
        (Some(first_seq), Some(prev_hash)) => Some(ChainStart {
            first_seq,
            prev_hash,
        }),
        _ => Some(ChainStart {
            first_seq: detail.get("pruned_through_seq")?.as_i64()? + 1,
            prev_hash: text("pruned_through_hash")?,
        }),
    }
}

/// Walks records in `seq` order, one at a time, keeping only the previous link, so
/// verifying a large log needs constant memory.
///
/// A chain that does not start at the genesis must prove its start: a record
/// in it (an `audit_pruned` record, sealed into the chain by the prune that
/// moved the start) names exactly that start. Deleting a prefix and moving the
/// start row by hand, without that record, is a break.
pub struct ChainVerifier {
    start: ChainStart,
    expected_seq: i64,
    prev_hash: String,
    checkpoint: Option<Checkpoint>,
    checkpoint_seen: bool,
    /// The seq of the `audit_pruned` record that names the start, if seen.
    start_proven_by: Option<i64>,
    count: u64,
}

/// What an intact chain looked like.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainSummary {
    pub records: u64,
    pub first_seq: i64,
    pub head: Checkpoint,
    /// The `audit_pruned` record that proves where the chain starts, if it
    /// does not start at the genesis.
    pub start_proven_by: Option<i64>,
}

impl ChainVerifier {
    pub fn new(start: ChainStart, checkpoint: Option<Checkpoint>) -> Self {
        ChainVerifier {
            expected_seq: start.first_seq,
            prev_hash: start.prev_hash.clone(),
            start,
            checkpoint,
            checkpoint_seen: false,
            start_proven_by: None,
            count: 0,
        }
    }

    pub fn check(&mut self, record: &StoredRecord) -> Result<(), ChainBreak> {
        if record.seq != self.expected_seq {
            return Err(ChainBreak::Gap {
                expected_seq: self.expected_seq,
                found_seq: record.seq,
                record_id: record.record_id.clone(),
            });
        }
        if record.compute_hash() != record.hash {
            return Err(ChainBreak::Edited {
                seq: record.seq,
                record_id: record.record_id.clone(),
            });
        }
        if record.prev_hash != self.prev_hash {
            return Err(ChainBreak::Unlinked {
                seq: record.seq,
                record_id: record.record_id.clone(),
            });
        }
        if let Some(checkpoint) = &self.checkpoint {
            if checkpoint.seq == record.seq {
                if checkpoint.hash != record.hash {
                    return Err(ChainBreak::CheckpointMismatch {
                        seq: record.seq,
                        detail: "the record's hash differs from the checkpoint: history before it was rewritten".into(),
                    });
                }
                self.checkpoint_seen = true;
            }
        }
        if pruned_to(record).as_ref() == Some(&self.start) {
            self.start_proven_by = Some(record.seq);
        }
        self.expected_seq += 1;
        self.prev_hash = record.hash.clone();
        self.count += 1;
        Ok(())
    }

    /// Ends the walk: a start that no prune record names means records were
    /// deleted by hand; a checkpoint that was never reached means the records
    /// it vouched for are gone, unless a recorded prune (sealed after the
    /// checkpoint) removed them.
    pub fn finish(self) -> Result<ChainSummary, ChainBreak> {
        let start_seq = self.start.first_seq;
        if self.start != ChainStart::genesis() && self.start_proven_by.is_none() {
            return Err(ChainBreak::UnprovenStart { start_seq });
        }
        if let Some(checkpoint) = &self.checkpoint {
            let pruned_past = checkpoint.seq < start_seq
                && self
                    .start_proven_by
                    .is_some_and(|sealed| sealed > checkpoint.seq);
            if !self.checkpoint_seen && !pruned_past {
                return Err(ChainBreak::CheckpointMismatch {
                    seq: checkpoint.seq,
                    detail: if checkpoint.seq < start_seq {
                        format!("the chain starts at record {start_seq}, after the checkpoint, and no prune recorded after the checkpoint explains it")
                    } else {
                        format!(
                            "the chain ends at record {}, before the checkpoint: records were deleted from the end",
                            self.expected_seq - 1
                        )
                    },
                });
            }
        }
        Ok(ChainSummary {
            records: self.count,
            first_seq: start_seq,
            head: Checkpoint {
                seq: self.expected_seq - 1,
                hash: self.prev_hash,
            },
            start_proven_by: self.start_proven_by,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(n: usize) -> Vec<StoredRecord> {
        let mut prev = GENESIS_HASH.to_owned();
        (1..=n as i64)
            .map(|seq| {
                let mut record = StoredRecord {
                    record_id: format!("r{seq}"),
                    recorded_at: format!("2026-11-23T08:00:{seq:02}Z"),
                    event: "decision".into(),
                    outcome: "allowed".into(),
                    request_id: format!("q{seq}"),
                    requester: Some("user:default/jane".into()),
                    duration_seconds: Some(900),
                    ..Default::default()
                };
                record.seal(seq, &prev);
                prev = record.hash.clone();
                record
            })
            .collect()
    }

    fn verify(
        records: &[StoredRecord],
        checkpoint: Option<Checkpoint>,
    ) -> Result<ChainSummary, ChainBreak> {
        let mut verifier = ChainVerifier::new(ChainStart::genesis(), checkpoint);
        for record in records {
            verifier.check(record)?;
        }
        verifier.finish()
    }

    #[test]
    fn an_intact_chain_verifies_and_reports_its_head() {
        let records = chain(5);
        let summary = verify(&records, None).unwrap();
        assert_eq!(summary.records, 5);
        assert_eq!(
            summary.head,
            Checkpoint {
                seq: 5,
                hash: records[4].hash.clone()
            }
        );
    }

    const GOLDEN_ENCODING: &str = r#"["stackpass-audit-v1",42,"0193a5b2-7c1e-7d3f-8a2b-1c2d3e4f5a6b","2026-11-29T08:00:01.123456Z","issued","issued","req \"quoted\" \\ back","0193a5b2-0000-7000-8000-000000000001","user:default/jané","user","agent:ci\n\t\u0001","https://backstage.example/api/auth","acme/payments/prod","{\"owner\":\"group:default/payments\",\"env\":\"prod\"}","payments-api","group:default/payments","owners-deploy","aws","arn:aws:iam::123456789012:role/deploy",-900,"2026-11-29T08:15:01Z","ASIAEXAMPLE","192.0.2.7","{\"note\":\"über \\\"x\\\"\"}","abababababababababababababababababababababababababababababababab"]"#;
    const GOLDEN_HASH: &str = "6340bddeec1a723300dd60973a0de3e61cf3532eaa96c2c5d47774ea6c12f518";

    /// Logs written by earlier versions must still verify: the encoding's
    /// exact bytes and the hash are pinned for a record with every field set
    /// and text that needs escaping.
    #[test]
    fn the_encoding_and_hash_of_a_full_record_are_stable() {
        let record = StoredRecord {
            seq: 42,
            record_id: "0193a5b2-7c1e-7d3f-8a2b-1c2d3e4f5a6b".into(),
            recorded_at: "2026-11-29T08:00:01.123456Z".into(),
            event: "issued".into(),
            outcome: "issued".into(),
            request_id: "req \"quoted\" \\ back".into(),
            issuance_id: Some("0193a5b2-0000-7000-8000-000000000001".into()),
            requester: Some("user:default/jané".into()),
            requester_kind: Some("user".into()),
            actor: Some("agent:ci\n\t\u{1}".into()),
            issuer: Some("https://backstage.example/api/auth".into()),
            stack: Some("acme/payments/prod".into()),
            tags: Some(r#"{"owner":"group:default/payments","env":"prod"}"#.into()),
            component: Some("payments-api".into()),
            owner: Some("group:default/payments".into()),
            rule: Some("owners-deploy".into()),
            provider: Some("aws".into()),
            role: Some("arn:aws:iam::123456789012:role/deploy".into()),
            duration_seconds: Some(-900),
            expires_at: Some("2026-11-29T08:15:01Z".into()),
            credential_id: Some("ASIAEXAMPLE".into()),
            client_addr: Some("192.0.2.7".into()),
            detail: Some(r#"{"note":"über \"x\""}"#.into()),
            prev_hash: "ab".repeat(32),
            hash: String::new(),
        };
        assert_eq!(record.canonical_encoding(), GOLDEN_ENCODING);
        assert_eq!(record.compute_hash(), GOLDEN_HASH);
        let sparse = StoredRecord {
            record_id: "r".into(),
            ..Default::default()
        };
        assert_eq!(
            sparse.canonical_encoding(),
            r#"["stackpass-audit-v1",0,"r","","","","",null,null,null,null,null,null,null,null,null,null,null,null,null,null,null,null,null,""]"#
        );
    }

    #[test]
    fn the_encoding_distinguishes_null_from_empty_and_covers_every_field() {
        let mut a = chain(1).remove(0);
        let base = a.compute_hash();
        a.actor = Some(String::new());
        assert_ne!(a.compute_hash(), base, "empty string differs from null");
        let mut b = chain(1).remove(0);
        b.duration_seconds = Some(901);
        assert_ne!(b.compute_hash(), base);
        let mut c = chain(1).remove(0);
        c.prev_hash = "1".repeat(64);
        assert_ne!(c.compute_hash(), base);
    }

    #[test]
    fn an_edited_field_is_caught_at_its_record() {
        let mut records = chain(5);
        records[2].outcome = "denied".into();
        assert_eq!(
            verify(&records, None),
            Err(ChainBreak::Edited {
                seq: 3,
                record_id: "r3".into()
            })
        );
    }

    #[test]
    fn an_edit_with_a_recomputed_hash_breaks_the_next_link() {
        let mut records = chain(5);
        records[2].requester = Some("user:default/mallory".into());
        records[2].hash = records[2].compute_hash();
        assert_eq!(
            verify(&records, None),
            Err(ChainBreak::Unlinked {
                seq: 4,
                record_id: "r4".into()
            })
        );
    }

    #[test]
    fn a_deleted_record_is_a_gap() {
        let mut records = chain(5);
        records.remove(1);
        assert_eq!(
            verify(&records, None),
            Err(ChainBreak::Gap {
                expected_seq: 2,
                found_seq: 3,
                record_id: "r3".into()
            })
        );
    }

    #[test]
    fn swapped_records_are_caught() {
        let mut records = chain(5);
        let (second, third) = (records[1].clone(), records[2].clone());
        records[1] = StoredRecord { seq: 2, ..third };
        records[2] = StoredRecord { seq: 3, ..second };
        assert_eq!(
            verify(&records, None),
            Err(ChainBreak::Edited {
                seq: 2,
                record_id: "r3".into()
            })
        );
    }

    #[test]
    fn an_inserted_record_is_caught() {
        let mut records = chain(5);
        let mut forged = records[1].clone();
        forged.record_id = "forged".into();
        forged.seal(3, &records[1].hash);
        // Renumber everything after it to make room, as an attacker would have to.
        for record in records.iter_mut().skip(2) {
            record.seq += 1;
        }
        records.insert(2, forged);
        assert_eq!(
            verify(&records, None),
            Err(ChainBreak::Edited {
                seq: 4,
                record_id: "r3".into()
            })
        );
    }

    #[test]
    fn a_checkpoint_catches_a_truncated_or_rewritten_tail() {
        let records = chain(5);
        let checkpoint = Checkpoint {
            seq: 4,
            hash: records[3].hash.clone(),
        };
        assert!(verify(&records, Some(checkpoint.clone())).is_ok());
        assert!(matches!(
            verify(&records[..3], Some(checkpoint.clone())),
            Err(ChainBreak::CheckpointMismatch { seq: 4, .. })
        ));

        // Rewriting history consistently (every hash recomputed) fools the chain,
        // but not the checkpoint kept elsewhere.
        let mut rewritten = chain(5);
        rewritten[0].outcome = "denied".into();
        let mut prev = GENESIS_HASH.to_owned();
        for record in rewritten.iter_mut() {
            record.seal(record.seq, &prev);
            prev = record.hash.clone();
        }
        assert!(verify(&rewritten, None).is_ok());
        assert!(matches!(
            verify(&rewritten, Some(checkpoint)),
            Err(ChainBreak::CheckpointMismatch { seq: 4, .. })
        ));
    }

    #[test]
    fn checkpoints_round_trip_and_reject_garbage() {
        let checkpoint = Checkpoint {
            seq: 42,
            hash: "ab".repeat(32),
        };
        assert_eq!(Checkpoint::parse(&checkpoint.to_string()), Some(checkpoint));
        for bad in [
            "",
            "stackpass-checkpoint-v1:x:ab",
            "stackpass-checkpoint-v1:1:abc",
            "other:1:".to_owned().as_str(),
        ] {
            assert_eq!(Checkpoint::parse(bad), None, "{bad}");
        }
    }

    /// Records 7.. of a 10-record chain after records 1..6 went, plus (when
    /// `detail` is given) the `audit_pruned` record a prune appends.
    fn pruned_chain(
        detail: Option<serde_json::Value>,
    ) -> (ChainStart, Vec<StoredRecord>, Checkpoint) {
        let records = chain(10);
        let checkpoint = Checkpoint {
            seq: 4,
            hash: records[3].hash.clone(),
        };
        let start = ChainStart {
            first_seq: 7,
            prev_hash: records[5].hash.clone(),
        };
        let mut kept = records[6..].to_vec();
        if let Some(detail) = detail {
            let mut pruned = StoredRecord {
                record_id: "prune".into(),
                recorded_at: "2026-11-23T09:00:00Z".into(),
                event: "audit_pruned".into(),
                outcome: "pruned".into(),
                request_id: "cli-prune".into(),
                detail: Some(detail.to_string()),
                ..Default::default()
            };
            pruned.seal(11, &kept.last().unwrap().hash);
            kept.push(pruned);
        }
        (start, kept, checkpoint)
    }

    fn verify_from(
        start: ChainStart,
        records: &[StoredRecord],
        checkpoint: Option<Checkpoint>,
    ) -> Result<ChainSummary, ChainBreak> {
        let mut verifier = ChainVerifier::new(start, checkpoint);
        for record in records {
            verifier.check(record)?;
        }
        verifier.finish()
    }

    #[test]
    fn a_recorded_prune_proves_the_start_and_a_checkpoint_before_it() {
        let hash6 = chain(10)[5].hash.clone();
        let (start, kept, checkpoint) = pruned_chain(Some(serde_json::json!({
            "records_pruned": 6, "new_start_seq": 7, "new_start_prev_hash": hash6,
        })));
        let summary = verify_from(start.clone(), &kept, Some(checkpoint)).unwrap();
        assert_eq!(summary.start_proven_by, Some(11));
        assert_eq!(summary.first_seq, 7);
        // Prune records written before `new_start_*` existed say the same thing.
        let (start, kept, checkpoint) = pruned_chain(Some(serde_json::json!({
            "records_pruned": 6, "pruned_through_seq": 6, "pruned_through_hash": hash6,
        })));
        assert!(verify_from(start, &kept, Some(checkpoint)).is_ok());
    }

    #[test]
    fn a_fake_prune_without_its_record_is_caught_with_or_without_a_checkpoint() {
        let (start, kept, checkpoint) = pruned_chain(None);
        assert_eq!(
            verify_from(start.clone(), &kept, None),
            Err(ChainBreak::UnprovenStart { start_seq: 7 })
        );
        assert_eq!(
            verify_from(start, &kept, Some(checkpoint)),
            Err(ChainBreak::UnprovenStart { start_seq: 7 })
        );
    }

    #[test]
    fn a_prune_record_for_another_start_proves_nothing() {
        let records = chain(10);
        // A real prune through record 3, then records 4..6 deleted by hand and
        // the start row moved on to 7.
        let (start, kept, checkpoint) = pruned_chain(Some(serde_json::json!({
            "records_pruned": 3, "new_start_seq": 4, "new_start_prev_hash": records[2].hash,
        })));
        assert_eq!(
            verify_from(start, &kept, Some(checkpoint)),
            Err(ChainBreak::UnprovenStart { start_seq: 7 })
        );
    }
}
