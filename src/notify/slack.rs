//! Making text that people typed (a break-glass reason, an approver's note) and
//! names from the catalog safe to show in a Slack-compatible message.
//!
//! Slack reads `<…>` in a message's `text` as markup: `<!channel>` and
//! `<!here>` ping everyone, `<@U123>` pings a person and `<https://x|INC-7>`
//! shows one thing while linking to another. Its documented escaping is to
//! replace `&`, `<` and `>` with `&amp;`, `&lt;` and `&gt;`, after which none
//! of that is markup. Receivers that follow Mattermost's conventions also ping
//! on bare `@channel`, `@here` and `@all`; those get a word joiner after the
//! `@` so they read the same but mention nobody. Bidirectional overrides and
//! isolates make text display in a different order from what was written
//! (`deploy\u{202E}txt.exe`), so they and other invisible or control
//! characters are removed, both from the text and from the structured facts.

/// Characters that change how text around them is displayed, or are not
/// displayed at all: bidirectional marks, embeddings, overrides and isolates,
/// the Arabic letter mark, zero-width space, word joiner and byte-order mark.
fn is_invisible(c: char) -> bool {
    matches!(c,
        '\u{200E}' | '\u{200F}'            // left-to-right / right-to-left mark
        | '\u{202A}'..='\u{202E}'          // embeddings, pops and overrides
        | '\u{2066}'..='\u{2069}'          // isolates
        | '\u{061C}'                       // Arabic letter mark
        | '\u{200B}' | '\u{2060}' | '\u{FEFF}' // zero-width space, word joiner, BOM
    )
}

/// `text` without control characters (line breaks and tabs become a space) and
/// without the invisible characters above: what the structured facts carry.
pub fn strip_controls(text: &str) -> String {
    text.chars()
        .filter(|c| !is_invisible(*c))
        .filter_map(|c| match c {
            '\n' | '\r' | '\t' => Some(' '),
            c if c.is_control() => None,
            c => Some(c),
        })
        .collect()
}

/// Mentions that some Slack-compatible receivers act on without brackets.
const BARE_MENTIONS: [&str; 4] = ["channel", "here", "everyone", "all"];

/// `text` as inert message text: controls stripped, cut to `max_chars`
/// characters (with `…`), then escaped as Slack requires and bare mentions
/// defused. The cut comes before escaping so an escape is never cut in half.
pub fn inert(text: &str, max_chars: usize) -> String {
    let clean = strip_controls(text);
    let clean = clean.trim();
    let mut cut: String = clean.chars().take(max_chars).collect();
    if clean.chars().count() > max_chars {
        cut.push('…');
    }
    let mut out = String::with_capacity(cut.len() + 16);
    let mut rest = cut.as_str();
    while let Some(c) = rest.chars().next() {
        rest = &rest[c.len_utf8()..];
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '@' => {
                out.push('@');
                let word: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_alphabetic())
                    .collect();
                if BARE_MENTIONS.iter().any(|m| m.eq_ignore_ascii_case(&word)) {
                    out.push('\u{2060}');
                }
            }
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slack_markup_is_escaped_so_nothing_pings_or_links() {
        let text = inert(
            "prod down <!channel> <!here> ask <@U024BE7LH> see <https://evil.example|INC-7> & more",
            500,
        );
        assert_eq!(
            text,
            "prod down &lt;!channel&gt; &lt;!here&gt; ask &lt;@U024BE7LH&gt; see &lt;https://evil.example|INC-7&gt; &amp; more"
        );
        assert!(!text.contains('<') && !text.contains('>'));
    }

    #[test]
    fn bare_mentions_are_defused_but_addresses_are_kept() {
        assert_eq!(
            inert("@channel @Here @everyone @all jane@example.com @alice", 500),
            "@\u{2060}channel @\u{2060}Here @\u{2060}everyone @\u{2060}all jane@example.com @alice"
        );
        // A longer word is not the mention.
        assert_eq!(inert("@channels", 500), "@channels");
    }

    #[test]
    fn bidi_controls_and_invisible_characters_are_removed() {
        let spoofed = "fix \u{202E}gpj.exe\u{202C} \u{2066}x\u{2069}\u{200E}\u{200F}\u{061C}a\u{200B}b\u{FEFF}\u{2060}";
        assert_eq!(strip_controls(spoofed), "fix gpj.exe xab");
        assert_eq!(inert(spoofed, 500), "fix gpj.exe xab");
        // Mentions cannot be hidden with invisible characters either.
        assert_eq!(inert("<\u{200B}!channel>", 500), "&lt;!channel&gt;");
    }

    #[test]
    fn control_characters_are_dropped_and_line_breaks_become_spaces() {
        assert_eq!(
            strip_controls("a\nb\r\tc\u{0}d\u{1b}[31m\u{7f}"),
            "a b  cd[31m"
        );
        // Letters of other scripts and emoji stay.
        assert_eq!(strip_controls("Ünïcødé 🚨 ملاحظة"), "Ünïcødé 🚨 ملاحظة");
    }

    #[test]
    fn length_is_bounded_before_escaping() {
        assert_eq!(inert("abcdef", 3), "abc…");
        assert_eq!(inert("<<<<", 2), "&lt;&lt;…");
        assert_eq!(inert("  padded  ", 10), "padded");
        let long = "é".repeat(10_000);
        assert_eq!(inert(&long, 300).chars().count(), 301);
    }
}
