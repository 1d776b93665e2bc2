//! The subject Google maps to `google.subject`: at most 127 bytes, whatever
//! the stack is called. Short stack references are kept readable
//! (`stack:pulumi:acme/payments/dev`); longer ones keep a readable prefix and
//! end in a hash of the whole reference, so two long names never collide. The
//! full reference is always in the `stackpass.stack` claim for attribute
//! mappings and conditions.

use sha2::{Digest, Sha256};

/// Google refuses a mapped `google.subject` longer than this.
pub const MAX_SUBJECT_BYTES: usize = 127;

pub fn subject_for(stack: &str) -> String {
    let full = format!("stack:{stack}");
    if full.len() <= MAX_SUBJECT_BYTES {
        return full;
    }
    let digest = Sha256::digest(stack.as_bytes());
    let hash: String = digest[..12].iter().map(|b| format!("{b:02x}")).collect();
    // `~` never appears in a stack reference, so a shortened subject cannot
    // equal a full one.
    let suffix = format!("~{hash}");
    let mut cut = MAX_SUBJECT_BYTES - suffix.len();
    while !full.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}{suffix}", &full[..cut])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_references_are_kept_whole() {
        assert_eq!(
            subject_for("pulumi:acme/payments/dev"),
            "stack:pulumi:acme/payments/dev"
        );
    }

    #[test]
    fn long_references_fit_and_stay_distinct() {
        let a = format!("pulumi:acme/{}/dev", "p".repeat(200));
        let b = format!("pulumi:acme/{}/prod", "p".repeat(200));
        let (sa, sb) = (subject_for(&a), subject_for(&b));
        assert_eq!(sa.len(), MAX_SUBJECT_BYTES);
        assert!(sa.starts_with("stack:pulumi:acme/ppp"));
        assert_ne!(sa, sb);
        assert_eq!(
            sa,
            subject_for(&a),
            "the same stack always maps the same way"
        );
    }

    #[test]
    fn multibyte_names_are_cut_on_a_character_boundary() {
        let stack = format!("terraform:acme/{}", "é".repeat(100));
        let subject = subject_for(&stack);
        assert!(subject.len() <= MAX_SUBJECT_BYTES);
    }
}
