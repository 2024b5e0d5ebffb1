//! AMQP topic routing: routing keys are dot-separated words; in a binding pattern `*` is
//! exactly one word and `#` is zero or more words (`#` alone matches every key).
//!
//! Empty words are refused in both keys and patterns (`a..b`, `a.`, an empty key), so `*`
//! can never match an empty word.

use crate::{Error, Result};

/// The longest routing key AMQP 0-9-1 allows (a short string).
pub const MAX_ROUTING_KEY: usize = 255;

/// Checks a routing key given to `publish`: 1 to 255 bytes, no empty word, no `*` or `#`.
pub fn validate_key(key: &str) -> Result<()> {
    check_words(key)?;
    if key.split('.').any(|w| w.contains('*') || w.contains('#')) {
        return Err(Error::InvalidRoutingKey {
            key: key.to_owned(),
            reason: "a routing key cannot contain '*' or '#' (those are for bindings)",
        });
    }
    Ok(())
}

/// Checks a binding pattern: 1 to 255 bytes, no empty word, `*` and `#` only as whole words.
pub fn validate_pattern(pattern: &str) -> Result<()> {
    check_words(pattern)?;
    for w in pattern.split('.') {
        if w != "*" && w != "#" && (w.contains('*') || w.contains('#')) {
            return Err(Error::InvalidRoutingKey {
                key: pattern.to_owned(),
                reason: "'*' and '#' must be whole words (\"a.*\", not \"a*\")",
            });
        }
    }
    Ok(())
}

fn check_words(key: &str) -> Result<()> {
    let invalid = |reason| Err(Error::InvalidRoutingKey { key: key.to_owned(), reason });
    if key.is_empty() {
        return invalid("it is empty");
    }
    if key.len() > MAX_ROUTING_KEY {
        return invalid("it is longer than 255 bytes");
    }
    if key.split('.').any(str::is_empty) {
        return invalid("it has an empty word (leading, trailing or doubled '.')");
    }
    if key.chars().any(char::is_control) {
        return invalid("it contains a control character");
    }
    Ok(())
}

/// Whether `key` matches the binding `pattern` under AMQP topic semantics. Both are assumed
/// valid (see [`validate_key`], [`validate_pattern`]).
pub fn matches(pattern: &str, key: &str) -> bool {
    let pat: Vec<&str> = pattern.split('.').collect();
    let words: Vec<&str> = key.split('.').collect();
    // reachable[j]: the pattern prefix processed so far can consume exactly words[..j].
    let mut reachable = vec![false; words.len() + 1];
    reachable[0] = true;
    for p in pat {
        let mut next = vec![false; words.len() + 1];
        match p {
            "#" => {
                let mut any = false;
                for j in 0..=words.len() {
                    any |= reachable[j];
                    next[j] = any;
                }
            }
            "*" => {
                next[1..].copy_from_slice(&reachable[..words.len()]);
            }
            literal => {
                for j in 0..words.len() {
                    next[j + 1] = reachable[j] && words[j] == literal;
                }
            }
        }
        reachable = next;
    }
    reachable[words.len()]
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn daemon_s5_topic_table() {
        let cases = [
            ("#", "a", true),
            ("#", "a.b.c", true),
            ("a.#", "a", true),
            ("a.#", "a.b.c", true),
            ("a.#", "b", false),
            ("#.a", "a", true),
            ("#.a", "x.y.a", true),
            ("a.*", "a", false),
            ("a.*", "a.b", true),
            ("a.*", "a.b.c", false),
            ("*", "a", true),
            ("*", "a.b", false),
            ("a.#.b", "a.b", true),
            ("a.#.b", "a.x.y.b", true),
            ("a.*.b", "a.b", false),
            ("#.#", "a", true),
            ("mail.send", "mail.send", true),
            ("mail.send", "mail.sendx", false),
        ];
        for (p, k, want) in cases {
            assert_eq!(matches(p, k), want, "{p} vs {k}");
        }
    }

    #[test]
    fn daemon_s5_empty_words_refused() {
        for k in ["", "a.", ".a", "a..b", "."] {
            assert!(validate_key(k).is_err(), "{k:?}");
            assert!(validate_pattern(k).is_err(), "{k:?}");
        }
        assert!(validate_key("a.*").is_err());
        assert!(validate_pattern("a*").is_err());
        assert!(validate_pattern("a.#.*").is_ok());
        assert!(validate_key(&"a".repeat(256)).is_err());
    }

    fn word() -> impl Strategy<Value = String> {
        prop_oneof![Just("a".to_owned()), Just("b".to_owned()), "[a-z]{1,3}"]
    }

    proptest! {
        #[test]
        fn daemon_s5_hash_alone_matches_everything(words in proptest::collection::vec(word(), 1..6)) {
            prop_assert!(matches("#", &words.join(".")));
        }

        #[test]
        fn daemon_s5_prefix_hash_matches_the_prefix_itself(words in proptest::collection::vec(word(), 1..5)) {
            let key = words.join(".");
            let pattern = format!("{key}.#");
            prop_assert!(matches(&pattern, &key));
        }

        #[test]
        fn daemon_s5_star_is_exactly_one_nonempty_word(words in proptest::collection::vec(word(), 1..6), at in 0usize..6) {
            let at = at % words.len();
            let mut pat = words.clone();
            pat[at] = "*".to_owned();
            let pattern = pat.join(".");
            prop_assert!(matches(&pattern, &words.join(".")));
            // Removing the word the star stood for never matches (no empty word).
            let mut shorter = words.clone();
            shorter.remove(at);
            if !shorter.is_empty() {
                prop_assert!(!matches(&pattern, &shorter.join(".")));
            }
        }

        #[test]
        fn daemon_s5_literal_matches_only_itself(a in proptest::collection::vec(word(), 1..4), b in proptest::collection::vec(word(), 1..4)) {
            prop_assert_eq!(matches(&a.join("."), &b.join(".")), a == b);
        }
    }
}
