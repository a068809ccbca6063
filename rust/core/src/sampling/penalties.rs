//! Repetition penalties over a sliding window of the last `last_n` tokens (prompt included):
//! repeat (divide positive logits, multiply negative ones), frequency (per occurrence) and
//! presence (once). Touches only the tokens in the window, never the whole vocabulary.

use std::collections::{HashMap, VecDeque};

#[derive(Clone, Debug)]
pub struct Penalties {
    /// Window length; 0 disables, negative means "the whole history" (bounded by the context).
    last_n: i32,
    repeat: f32,
    freq: f32,
    present: f32,
    window: VecDeque<u32>,
    counts: HashMap<u32, u32>,
}

impl Penalties {
    pub fn new(last_n: i32, repeat: f32, freq: f32, present: f32) -> Self {
        Penalties {
            last_n,
            repeat,
            freq,
            present,
            window: VecDeque::new(),
            counts: HashMap::new(),
        }
    }

    pub fn is_disabled(&self) -> bool {
        self.last_n == 0 || (self.repeat == 1.0 && self.freq == 0.0 && self.present == 0.0)
    }

    pub fn reset(&mut self) {
        self.window.clear();
        self.counts.clear();
    }

    pub fn accept(&mut self, token: u32) {
        if self.last_n == 0 {
            return;
        }
        if self.last_n > 0 && self.window.len() >= self.last_n as usize {
            if let Some(old) = self.window.pop_front() {
                if let Some(n) = self.counts.get_mut(&old) {
                    *n -= 1;
                    if *n == 0 {
                        self.counts.remove(&old);
                    }
                }
            }
        }
        self.window.push_back(token);
        *self.counts.entry(token).or_insert(0) += 1;
    }

    /// Penalize `logits` in place. `keep` (the newline token when penalize_nl is false) is left
    /// untouched.
    pub fn apply(&self, logits: &mut [f32], keep: Option<u32>) {
        if self.is_disabled() {
            return;
        }
        for (&tok, &count) in &self.counts {
            if Some(tok) == keep {
                continue;
            }
            let Some(l) = logits.get_mut(tok as usize) else {
                continue;
            };
            if *l <= 0.0 {
                *l *= self.repeat;
            } else {
                *l /= self.repeat;
            }
            *l -= count as f32 * self.freq + self.present;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_and_formula() {
        let mut p = Penalties::new(2, 2.0, 0.5, 0.25);
        for t in [0, 1, 1] {
            p.accept(t);
        }
        // window = [1, 1]: token 0 slid out
        let mut l = vec![4.0, 4.0, -1.0];
        p.apply(&mut l, None);
        assert_eq!(l[0], 4.0);
        assert_eq!(l[1], 4.0 / 2.0 - 2.0 * 0.5 - 0.25);
        p.accept(2);
        let mut l = vec![4.0, 4.0, -1.0];
        p.apply(&mut l, Some(1));
        assert_eq!(l[1], 4.0);
        assert_eq!(l[2], -2.0 - 0.5 - 0.25);
    }
}
