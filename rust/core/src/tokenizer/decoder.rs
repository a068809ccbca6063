//! Incremental detokenizing: token pieces go in, only complete UTF-8 text comes out.
//!
//! Bytes that cannot start or continue a character are replaced by U+FFFD exactly where
//! `String::from_utf8_lossy` would replace them, so the concatenation of everything emitted
//! (plus `flush`) equals the lossy decoding of all the bytes at once.

use super::Tokenizer;
use crate::Result;

#[derive(Debug, Default, Clone)]
pub struct IncrementalDecoder {
    pending: Vec<u8>,
    special: bool,
}

impl IncrementalDecoder {
    /// `special`: render control tokens' text (as `token_to_piece(id, true)`).
    pub fn new(special: bool) -> Self {
        IncrementalDecoder {
            pending: Vec::new(),
            special,
        }
    }

    /// Add one token; returns the text completed by it (possibly empty).
    pub fn push(&mut self, tok: &Tokenizer, id: u32) -> Result<String> {
        let piece = tok.piece_checked(id, self.special)?;
        Ok(self.push_bytes(piece))
    }

    /// Add raw bytes; returns the text they complete.
    pub fn push_bytes(&mut self, bytes: &[u8]) -> String {
        self.pending.extend_from_slice(bytes);
        let mut out = String::new();
        let mut rest: &[u8] = &self.pending;
        loop {
            match std::str::from_utf8(rest) {
                Ok(s) => {
                    out.push_str(s);
                    rest = &[];
                    break;
                }
                Err(e) => {
                    let (good, bad) = rest.split_at(e.valid_up_to());
                    // SAFETY-free: `good` was just validated.
                    out.push_str(std::str::from_utf8(good).unwrap_or_default());
                    match e.error_len() {
                        Some(n) => {
                            out.push('\u{FFFD}');
                            rest = &bad[n..];
                        }
                        None => {
                            rest = bad;
                            break;
                        }
                    }
                }
            }
        }
        let keep = rest.len();
        let drop = self.pending.len() - keep;
        self.pending.drain(..drop);
        out
    }

    /// Whatever is left (an unfinished character becomes U+FFFD).
    pub fn flush(&mut self) -> String {
        let s = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        s
    }

    /// Bytes held back waiting for the rest of a character.
    pub fn pending(&self) -> &[u8] {
        &self.pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_only_on_character_boundaries() {
        let text = "aé€😀b\u{1F389}";
        let bytes = text.as_bytes();
        for step in 1..5 {
            let mut d = IncrementalDecoder::new(true);
            let mut out = String::new();
            for c in bytes.chunks(step) {
                let s = d.push_bytes(c);
                out.push_str(&s);
            }
            out.push_str(&d.flush());
            assert_eq!(out, text);
        }
    }

    #[test]
    fn invalid_bytes_match_lossy_decoding() {
        let bytes = b"a\xff\xe2\x82b\xf0\x9f\x98\x80\xc3";
        let mut d = IncrementalDecoder::new(true);
        let mut out = String::new();
        for b in bytes {
            out.push_str(&d.push_bytes(&[*b]));
        }
        out.push_str(&d.flush());
        assert_eq!(out, String::from_utf8_lossy(bytes));
    }
}
