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
}
