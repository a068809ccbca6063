//! WordPiece ("bert"), as llama.cpp runs it: normalize (NFD and accent stripping, lowercase),
//! split on white space and around punctuation, ASCII symbols and CJK ideographs, then cover each
//! word, prefixed with U+2581, by greedy longest vocabulary matches; a word that cannot be
//! covered becomes the unknown token.

use unicode_normalization::UnicodeNormalization;

use super::pretok::{flag_table, F_CONTROL, F_MARK, F_PUNCT, F_SPACE, F_SYMBOL};
use super::Vocab;

#[derive(Debug, Clone, Copy)]
pub struct Normalizer {
    pub lowercase: bool,
    pub strip_accents: bool,
}

fn is_chinese(c: u32) -> bool {
    matches!(c,
        0x4E00..=0x9FFF | 0x3400..=0x4DBF | 0x20000..=0x2A6DF | 0x2A700..=0x2B73F
        | 0x2B740..=0x2B81F | 0x2B920..=0x2CEAF | 0xF900..=0xFAFF | 0x2F800..=0x2FA1F)
}

fn lower(c: char) -> char {
    let mut it = c.to_lowercase();
    match (it.next(), it.next()) {
        (Some(l), None) => l,
        // only U+0130 has a multi-character full mapping; its simple mapping is 'i'
        (Some(l), Some(_)) => l,
        _ => c,
    }
}

/// Words of `text` after normalization.
pub fn preprocess(text: &str, norm: Normalizer) -> Vec<String> {
    let table = flag_table();
    let chars: Vec<char> = if norm.strip_accents {
        text.nfd().collect()
    } else {
        text.chars().collect()
    };
    let mut words: Vec<String> = vec![String::new()];
    for c in chars {
        let f = table[c as usize];
        if f & F_SPACE != 0 {
            if !words.last().is_some_and(|w| w.is_empty()) {
                words.push(String::new());
            }
            continue;
        }
        if c == '\0' || c == '\u{FFFD}' || f & F_CONTROL != 0 {
            continue;
        }
        if norm.strip_accents && f & F_MARK != 0 {
            continue;
        }
        let c2 = if norm.lowercase { lower(c) } else { c };
        if f & F_PUNCT != 0 || ((c as u32) < 0x7F && f & F_SYMBOL != 0) || is_chinese(c as u32) {
            if !words.last().is_some_and(|w| w.is_empty()) {
                words.push(String::new());
            }
            if let Some(w) = words.last_mut() {
                w.push(c2);
            }
            words.push(String::new());
        } else if let Some(w) = words.last_mut() {
            w.push(c2);
        }
    }
    if words.last().is_some_and(|w| w.is_empty()) {
        words.pop();
    }
    words
}

/// Tokenize one raw-text fragment, appending ids to `out`.
pub fn tokenize(
    v: &Vocab,
    text: &str,
    norm: Normalizer,
    max_token_len: usize,
    unk: Option<u32>,
    out: &mut Vec<u32>,
) {
    let mut word1 = Vec::new();
    for word in preprocess(text, norm) {
        if word.is_empty() {
            continue;
        }
        word1.clear();
        word1.extend_from_slice("\u{2581}".as_bytes());
        word1.extend_from_slice(word.as_bytes());
        let n = word1.len();
        let before = out.len();
        let mut i = 0;
        while i < n {
            let mut matched = false;
            let mut j = n.min(i + max_token_len + 1);
            while j > i {
                if let Some(id) = v.lookup(&word1[i..j]) {
                    out.push(id);
                    matched = true;
                    i = j - 1;
                    break;
                }
                j -= 1;
            }
            if !matched {
                out.truncate(before);
                break;
            }
            i += 1;
        }
        if out.len() == before {
            out.extend(unk);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preprocess_splits_and_normalizes() {
        let n = Normalizer {
            lowercase: true,
            strip_accents: true,
        };
        assert_eq!(
            preprocess("Héllo, World!  中文 a$b", n),
            vec!["hello", ",", "world", "!", "中", "文", "a", "$", "b"]
        );
        let keep = Normalizer {
            lowercase: false,
            strip_accents: false,
        };
        assert_eq!(preprocess("Héllo", keep), vec!["Héllo"]);
    }
}
