//! Mirostat 1 and 2 (Basu et al.): adaptive truncation steering the observed surprise toward tau.
//! Each replaces the truncation chain and picks the token itself (after plain temperature).

use super::candidates::Candidates;
use super::chain::top_k;
use super::rng::Rng;

#[derive(Clone, Debug)]
pub struct Mirostat {
    pub version: u8,
    tau: f32,
    eta: f32,
    mu: f32,
    n_vocab: usize,
    m: usize,
}

impl Mirostat {
    pub fn new(version: u8, tau: f32, eta: f32, n_vocab: usize) -> Self {
        Mirostat {
            version,
            tau,
            eta,
            mu: 2.0 * tau,
            n_vocab,
            m: 100,
        }
    }

    pub fn mu(&self) -> f32 {
        self.mu
    }

    /// Truncate `c`, sample from it and update mu; returns the index of the chosen candidate.
    pub fn sample(&mut self, c: &mut Candidates, rng: &mut Rng) -> usize {
        c.softmax(true);
        if self.version == 1 {
            let n = c.len();
            let mut sum_ti_bi = 0.0f32;
            let mut sum_ti_sq = 0.0f32;
            let mut i = 0;
            while i + 1 < self.m && i + 1 < n {
                let t_i = ((i + 2) as f32 / (i + 1) as f32).ln();
                let b_i = (c.data[i].p / c.data[i + 1].p).ln();
                sum_ti_bi += t_i * b_i;
                sum_ti_sq += t_i * t_i;
                i += 1;
            }
            let s_hat = sum_ti_bi / sum_ti_sq;
            let eps_hat = s_hat - 1.0;
            let k = ((eps_hat * 2f32.powf(self.mu)) / (1.0 - (self.n_vocab as f32).powf(-eps_hat)))
                .powf(1.0 / s_hat);
            let k = if k.is_finite() && k >= 1.0 {
                k.min(i32::MAX as f32) as i32
            } else {
                1
            };
            top_k(c, k.max(1));
        } else {
            let mu = self.mu;
            let keep = c
                .data
                .iter()
                .position(|x| -x.p.log2() > mu)
                .unwrap_or(c.len())
                .max(1);
            c.data.truncate(keep);
        }
        c.softmax(true);
        let idx = super::dist_pick(c, rng);
        let observed = -c.data[idx].p.log2();
        self.mu -= self.eta * (observed - self.tau);
        idx
    }
}
