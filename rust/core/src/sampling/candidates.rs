//! The candidate list the samplers narrow down: (token, logit, probability) triples plus a
//! `sorted` flag (descending by logit) so samplers that need order only sort once.

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Candidate {
    pub id: u32,
    pub logit: f32,
    pub p: f32,
}

#[derive(Default, Debug)]
pub struct Candidates {
    pub data: Vec<Candidate>,
    pub sorted: bool,
}

fn by_logit_desc(a: &Candidate, b: &Candidate) -> std::cmp::Ordering {
    // NaN logits sort last; ties keep the lower id first so results do not depend on the
    // unstable sort's choices.
    b.logit
        .partial_cmp(&a.logit)
        .unwrap_or_else(|| a.logit.is_nan().cmp(&b.logit.is_nan()))
        .then(a.id.cmp(&b.id))
}

impl Candidates {
    /// Refill from a logit vector, skipping tokens whose logit is -inf (banned).
    pub fn fill(&mut self, logits: &[f32]) {
        self.data.clear();
        self.data.extend(
            logits
                .iter()
                .enumerate()
                .filter(|(_, &l)| l != f32::NEG_INFINITY)
                .map(|(i, &l)| Candidate {
                    id: i as u32,
                    logit: if l.is_nan() { f32::NEG_INFINITY } else { l },
                    p: 0.0,
                }),
        );
        self.sorted = false;
    }

    /// Fill with only the `k` best tokens, sorted (what `fill` then top_k would leave), without
    /// materializing the whole vocabulary: a running threshold rejects most tokens with one
    /// comparison.
    pub fn fill_top_k(&mut self, logits: &[f32], k: usize) {
        self.data.clear();
        self.sorted = false;
        if k == 0 {
            return;
        }
        let cap = 4 * k.max(16);
        let mut thresh = f32::NEG_INFINITY;
        let mut full = false;
        for (i, &l) in logits.iter().enumerate() {
            if l == f32::NEG_INFINITY {
                continue;
            }
            let l = if l.is_nan() { f32::NEG_INFINITY } else { l };
            if full && l < thresh {
                continue;
            }
            self.data.push(Candidate {
                id: i as u32,
                logit: l,
                p: 0.0,
            });
            if self.data.len() >= cap {
                self.data.select_nth_unstable_by(k - 1, by_logit_desc);
                self.data.truncate(k);
                thresh = self.data[k - 1].logit;
                full = true;
            }
        }
        self.partial_sort(k);
        self.data.truncate(k);
        self.sorted = true;
    }

    /// Fill with the single best token (what `fill` then greedy would pick: the highest logit,
    /// the lowest id among ties, NaN counted as -inf).
    pub fn fill_argmax(&mut self, logits: &[f32]) {
        self.data.clear();
        self.sorted = true;
        let mut best = usize::MAX;
        let mut best_l = f32::NEG_INFINITY;
        let mut first_nan = usize::MAX;
        for (i, &l) in logits.iter().enumerate() {
            if l > best_l {
                best_l = l;
                best = i;
            } else if first_nan == usize::MAX && l.is_nan() {
                first_nan = i;
            }
        }
        if best == usize::MAX {
            best = first_nan;
            best_l = f32::NEG_INFINITY;
        }
        if best != usize::MAX {
            self.data.push(Candidate {
                id: best as u32,
                logit: best_l,
                p: 0.0,
            });
        }
    }

    pub fn len(&self) -> usize {
        self.data.len()
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// Sort so that the first `k` entries are the `k` largest logits, in order.
    pub fn partial_sort(&mut self, k: usize) {
        if self.sorted {
            return;
        }
        let k = k.min(self.data.len());
        if k == 0 {
            return;
        }
        if k < self.data.len() {
            self.data.select_nth_unstable_by(k - 1, by_logit_desc);
            self.data[..k].sort_unstable_by(by_logit_desc);
        } else {
            self.data.sort_unstable_by(by_logit_desc);
            self.sorted = true;
        }
    }

    pub fn sort(&mut self) {
        let n = self.data.len();
        self.partial_sort(n);
        self.sorted = true;
    }

    /// Softmax of the logits into `p` (sum in f64 like the reference's dist sampler).
    pub fn softmax(&mut self, do_sort: bool) {
        if self.data.is_empty() {
            return;
        }
        if do_sort {
            self.sort();
        }
        let max_l = if self.sorted {
            self.data[0].logit
        } else {
            self.data
                .iter()
                .fold(f32::NEG_INFINITY, |m, c| m.max(c.logit))
        };
        let mut sum = 0.0f64;
        for c in self.data.iter_mut() {
            let p = (c.logit - max_l).exp();
            c.p = p;
            sum += p as f64;
        }
        if sum > 0.0 && sum.is_finite() {
            for c in self.data.iter_mut() {
                c.p = (c.p as f64 / sum) as f32;
            }
        } else {
            // All logits -inf or overflow: fall back to uniform so sampling stays defined.
            let u = 1.0 / self.data.len() as f32;
            for c in self.data.iter_mut() {
                c.p = u;
            }
        }
    }

    pub fn argmax(&self) -> Option<usize> {
        let mut best: Option<usize> = None;
        for (i, c) in self.data.iter().enumerate() {
            match best {
                None => best = Some(i),
                Some(b) if by_logit_desc(c, &self.data[b]) == std::cmp::Ordering::Less => {
                    best = Some(i)
                }
                _ => {}
            }
        }
        best
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_sort_and_softmax() {
        let mut c = Candidates::default();
        c.fill(&[0.0, 3.0, f32::NEG_INFINITY, 1.0, 2.0]);
        assert_eq!(c.len(), 4);
        c.partial_sort(2);
        assert_eq!(c.data[0].id, 1);
        assert_eq!(c.data[1].id, 4);
        c.softmax(true);
        let s: f32 = c.data.iter().map(|x| x.p).sum();
        assert!((s - 1.0).abs() < 1e-5);
        assert_eq!(c.argmax().map(|i| c.data[i].id), Some(1));
    }

    #[test]
    fn fast_fills_equal_full_fill() {
        let mut x: u64 = 12345;
        for round in 0..200 {
            let n = 1 + (round * 37) % 3000;
            let logits: Vec<f32> = (0..n)
                .map(|_| {
                    x = x
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    match x >> 60 {
                        0 => f32::NEG_INFINITY,
                        1 => f32::NAN,
                        2 => 1.0, // ties
                        _ => ((x >> 33) % 1000) as f32 / 100.0,
                    }
                })
                .collect();
            for k in [1usize, 2, 5, 40, 100, 5000] {
                let mut full = Candidates::default();
                full.fill(&logits);
                crate::sampling::chain::top_k(&mut full, k as i32);
                let mut fast = Candidates::default();
                fast.fill_top_k(&logits, k);
                let a: Vec<u32> = full.data.iter().map(|c| c.id).collect();
                let b: Vec<u32> = fast.data.iter().map(|c| c.id).collect();
                assert_eq!(a, b, "n={n} k={k}");
            }
            let mut full = Candidates::default();
            full.fill(&logits);
            let want = full.argmax().map(|i| full.data[i].id);
            let mut fast = Candidates::default();
            fast.fill_argmax(&logits);
            assert_eq!(fast.data.first().map(|c| c.id), want);
        }
    }
}
