/// Turns a stream of token bytes into text without ever splitting a UTF-8 character: bytes of an
/// incomplete character are held until the rest arrives; invalid bytes become U+FFFD.
#[derive(Default)]
pub struct Utf8Decoder {
    pending: Vec<u8>,
}

impl Utf8Decoder {
    pub fn push(&mut self, bytes: &[u8]) -> String {
        self.pending.extend_from_slice(bytes);
        let mut out = String::new();
        loop {
            match std::str::from_utf8(&self.pending) {
                Ok(s) => {
                    out.push_str(s);
                    self.pending.clear();
                    return out;
                }
                Err(e) => {
                    let good = e.valid_up_to();
                    // SAFETY-free: the prefix was just validated.
                    out.push_str(std::str::from_utf8(&self.pending[..good]).unwrap_or_default());
                    match e.error_len() {
                        // Incomplete character at the end: keep it for the next push.
                        None => {
                            self.pending.drain(..good);
                            return out;
                        }
                        Some(n) => {
                            out.push('\u{FFFD}');
                            self.pending.drain(..good + n);
                        }
                    }
                }
            }
        }
    }

    /// Whatever is still held, with an incomplete character replaced.
    pub fn finish(&mut self) -> String {
        let s = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_split_characters() {
        let s = "aé漢🙂";
        let b = s.as_bytes();
        let mut d = Utf8Decoder::default();
        let mut out = String::new();
        for byte in b {
            out += &d.push(std::slice::from_ref(byte));
        }
        out += &d.finish();
        assert_eq!(out, s);
        let mut d = Utf8Decoder::default();
        assert_eq!(d.push(&[0xe6, 0xbc]), "");
        assert_eq!(d.push(&[0xa2, b'x']), "漢x");
        assert_eq!(d.push(&[0xff, b'y']), "\u{FFFD}y");
        assert_eq!(d.push(&[0xf0]), "");
        assert_eq!(d.finish(), "\u{FFFD}");
    }
}
