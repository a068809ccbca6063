/// Stop strings over streamed text. Holds back any tail that could still grow into a stop
/// string, so a client never sees text that a stop later removes (llama.cpp's server does the same).
pub struct StopMatcher {
    stops: Vec<String>,
    content: String,
    /// Bytes of `content` already handed out.
    sent: usize,
}

impl StopMatcher {
    pub fn new(stops: &[String]) -> Self {
        Self {
            stops: stops.iter().filter(|s| !s.is_empty()).cloned().collect(),
            content: String::new(),
            sent: 0,
        }
    }

    /// The whole content so far (after a stop: up to, not including, the stop string).
    pub fn content(&self) -> &str {
        &self.content
    }

    /// Add text; returns the text safe to emit now and the stop string if one completed.
    pub fn push(&mut self, text: &str) -> (String, Option<String>) {
        let search_from = self.content.len().saturating_sub(self.max_stop_len());
        self.content.push_str(text);
        // Earliest complete stop string.
        let mut hit: Option<(usize, &String)> = None;
        for s in &self.stops {
            let from = floor_char(&self.content, search_from);
            if let Some(i) = self.content[from..].find(s.as_str()) {
                let at = from + i;
                if hit.is_none_or(|(h, _)| at < h) {
                    hit = Some((at, s));
                }
            }
        }
        if let Some((at, s)) = hit {
            let word = s.clone();
            self.content.truncate(at);
            let out = self.content[self.sent.min(at)..].to_string();
            self.sent = self.content.len();
            return (out, Some(word));
        }
        // Hold back the longest suffix that is a prefix of some stop string.
        let mut hold = 0;
        for s in &self.stops {
            for k in (1..s.len()).rev() {
                if k <= self.content.len()
                    && s.is_char_boundary(k)
                    && self.content.ends_with(&s[..k])
                {
                    hold = hold.max(k);
                    break;
                }
            }
        }
        let upto = self.content.len() - hold;
        let out = if upto > self.sent {
            self.content[self.sent..upto].to_string()
        } else {
            String::new()
        };
        self.sent = self.sent.max(upto);
        (out, None)
    }

    /// End of generation: append `text` and release everything held back.
    pub fn finish(&mut self, text: &str) -> String {
        self.content.push_str(text);
        let out = self.content[self.sent..].to_string();
        self.sent = self.content.len();
        out
    }

    fn max_stop_len(&self) -> usize {
        self.stops.iter().map(|s| s.len()).max().unwrap_or(0)
    }
}

fn floor_char(s: &str, mut i: usize) -> usize {
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stops_and_holds_back() {
        let mut m = StopMatcher::new(&["</end>".to_string(), "STOP".to_string()]);
        assert_eq!(m.push("hello <"), ("hello ".to_string(), None));
        assert_eq!(m.push("/en"), (String::new(), None));
        assert_eq!(
            m.push("d> more"),
            (String::new(), Some("</end>".to_string()))
        );
        assert_eq!(m.content(), "hello ");
        let mut m = StopMatcher::new(&["STOP".to_string()]);
        assert_eq!(m.push("ST").0, "");
        assert_eq!(m.push("ART").0, "START");
        assert_eq!(m.finish(""), "");
        assert_eq!(m.content(), "START");
        let mut m = StopMatcher::new(&[]);
        assert_eq!(m.push("abc").0, "abc");
    }
}
