//! The truncation and temperature samplers, each a small step over `Candidates`, applied in the
//! order of the request's `samplers` list. Semantics follow llama.cpp's samplers of the same names.

use super::candidates::{Candidate, Candidates};
use crate::{Error, Result};

/// One configured step of the chain.
#[derive(Clone, Debug, PartialEq)]
pub enum ChainStep {
    TopK(i32),
    TailFree {
        z: f32,
        min_keep: usize,
    },
    Typical {
        p: f32,
        min_keep: usize,
    },
    TopP {
        p: f32,
        min_keep: usize,
    },
    MinP {
        p: f32,
        min_keep: usize,
    },
    Temperature {
        temp: f32,
        range: f32,
        exponent: f32,
    },
}

/// Sampler names as accepted in `samplers` (canonical names, llama.cpp's aliases, and the
/// seed-era `tfs_z`/`typical_p`). `penalties` is accepted and means nothing here: penalties are
/// always applied first, before the grammar and the chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SamplerKind {
    TopK,
    TfsZ,
    TypicalP,
    TopP,
    MinP,
    Temperature,
    Penalties,
}

impl SamplerKind {
    pub fn from_name(name: &str) -> Result<Self> {
        let n = name.to_ascii_lowercase();
        Ok(match n.as_str() {
            "top_k" | "top-k" | "topk" => SamplerKind::TopK,
            "tfs_z" | "tfs-z" | "tfsz" | "tfs" | "tail_free" => SamplerKind::TfsZ,
            "typical_p" | "typical-p" | "typicalp" | "typ_p" | "typ-p" | "typp" | "typ"
            | "typical" => SamplerKind::TypicalP,
            "top_p" | "top-p" | "topp" | "nucleus" => SamplerKind::TopP,
            "min_p" | "min-p" | "minp" => SamplerKind::MinP,
            "temperature" | "temp" => SamplerKind::Temperature,
            "penalties" => SamplerKind::Penalties,
            _ => {
                return Err(Error::invalid(format!(
                    "Unknown sampler name in \"samplers\": {name:?}"
                )))
            }
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            SamplerKind::TopK => "top_k",
            SamplerKind::TfsZ => "tfs_z",
            SamplerKind::TypicalP => "typical_p",
            SamplerKind::TopP => "top_p",
            SamplerKind::MinP => "min_p",
            SamplerKind::Temperature => "temperature",
            SamplerKind::Penalties => "penalties",
        }
    }

    pub fn default_order() -> Vec<SamplerKind> {
        vec![
            SamplerKind::TopK,
            SamplerKind::TfsZ,
            SamplerKind::TypicalP,
            SamplerKind::TopP,
            SamplerKind::MinP,
            SamplerKind::Temperature,
        ]
    }
}

impl ChainStep {
    pub fn apply(&self, c: &mut Candidates, scratch: &mut Vec<Candidate>) {
        match *self {
            ChainStep::TopK(k) => top_k(c, k),
            ChainStep::TailFree { z, min_keep } => tail_free(c, z, min_keep),
            ChainStep::Typical { p, min_keep } => typical(c, p, min_keep, scratch),
            ChainStep::TopP { p, min_keep } => top_p(c, p, min_keep),
            ChainStep::MinP { p, min_keep } => min_p(c, p, min_keep),
            ChainStep::Temperature {
                temp,
                range,
                exponent,
            } => temperature_ext(c, temp, range, exponent),
        }
    }
}

pub fn top_k(c: &mut Candidates, k: i32) {
    if k <= 0 || c.is_empty() {
        return;
    }
    let k = (k as usize).min(c.len());
    c.partial_sort(k);
    c.data.truncate(k);
    c.sorted = true;
}

/// Tail free sampling (seed-era llama.cpp): cut where the normalized absolute second derivative
/// of the sorted probabilities accumulates past z.
pub fn tail_free(c: &mut Candidates, z: f32, min_keep: usize) {
    if z >= 1.0 || c.len() <= 2 {
        return;
    }
    c.softmax(true);
    let n = c.len();
    let d1: Vec<f32> = (0..n - 1).map(|i| c.data[i].p - c.data[i + 1].p).collect();
    let mut d2: Vec<f32> = (0..n - 2).map(|i| (d1[i] - d1[i + 1]).abs()).collect();
    let sum: f32 = d2.iter().sum();
    if sum > 1e-6 {
        for v in d2.iter_mut() {
            *v /= sum;
        }
    } else {
        let u = 1.0 / d2.len() as f32;
        for v in d2.iter_mut() {
            *v = u;
        }
    }
    let mut cum = 0.0f32;
    let mut last = n;
    for (i, v) in d2.iter().enumerate() {
        cum += v;
        if cum > z && i >= min_keep {
            last = i;
            break;
        }
    }
    c.data.truncate(last.max(1));
}

pub fn typical(c: &mut Candidates, p: f32, min_keep: usize, scratch: &mut Vec<Candidate>) {
    if p >= 1.0 || c.is_empty() {
        return;
    }
    c.softmax(true);
    let entropy: f32 = c
        .data
        .iter()
        .filter(|x| x.p > 0.0)
        .map(|x| -x.p * x.p.ln())
        .sum();
    let mut idx: Vec<(f32, usize)> = c
        .data
        .iter()
        .enumerate()
        .map(|(i, x)| ((-x.p.ln() - entropy).abs(), i))
        .collect();
    idx.sort_by(|a, b| {
        a.0.partial_cmp(&b.0)
            .unwrap_or(std::cmp::Ordering::Equal)
            .then(a.1.cmp(&b.1))
    });
    let mut cum = 0.0f32;
    let mut last = idx.len();
    for (i, &(_, j)) in idx.iter().enumerate() {
        cum += c.data[j].p;
        if cum > p && (min_keep == 0 || i + 1 >= min_keep) {
            last = i + 1;
            break;
        }
    }
    scratch.clear();
    scratch.extend(idx[..last].iter().map(|&(_, j)| c.data[j]));
    c.data.clear();
    c.data.extend_from_slice(scratch);
    c.sorted = false;
}

pub fn top_p(c: &mut Candidates, p: f32, min_keep: usize) {
    if p >= 1.0 || c.is_empty() {
        return;
    }
    c.softmax(true);
    let mut cum = 0.0f32;
    let mut last = c.len();
    for (i, x) in c.data.iter().enumerate() {
        cum += x.p;
        if cum >= p && i + 1 >= min_keep {
            last = i + 1;
            break;
        }
    }
    c.data.truncate(last);
}

pub fn min_p(c: &mut Candidates, p: f32, min_keep: usize) {
    if p <= 0.0 || c.is_empty() {
        return;
    }
    c.sort();
    let min_logit = c.data[0].logit + p.ln();
    let mut i = 1;
    while i < c.len() {
        if c.data[i].logit < min_logit && i >= min_keep {
            break;
        }
        i += 1;
    }
    c.data.truncate(i);
}

/// Temperature, with dynamic temperature when `range > 0` (entropy-scaled, llama.cpp's temp_ext).
/// `temp <= 0` keeps only the best token.
pub fn temperature_ext(c: &mut Candidates, temp: f32, range: f32, exponent: f32) {
    if c.is_empty() {
        return;
    }
    if range > 0.0 {
        if c.len() <= 1 {
            return;
        }
        let min_t = (temp - range).max(0.0);
        let max_t = temp + range;
        let max_entropy = (c.len() as f32).ln();
        c.softmax(true);
        let entropy: f32 = c
            .data
            .iter()
            .filter(|x| x.p > 0.0)
            .map(|x| -x.p * x.p.ln())
            .sum();
        let norm = entropy / max_entropy;
        let dyn_t = min_t + (max_t - min_t) * norm.powf(exponent);
        temperature(c, dyn_t);
        c.softmax(false);
    } else {
        temperature(c, temp);
    }
}

pub fn temperature(c: &mut Candidates, temp: f32) {
    if temp <= 0.0 {
        if let Some(best) = c.argmax() {
            let b = c.data[best];
            c.data.clear();
            c.data.push(b);
            c.sorted = true;
        }
        return;
    }
    // A tiny temperature can overflow the best logit to +inf (or, when every logit is negative,
    // all of them to -inf), and inf - inf makes the softmax NaN, then uniform: sampling must tend
    // to greedy as temp -> 0. Scaling the differences from the best logit instead keeps the best
    // at 0 and sends the rest towards -inf, the limit. Only taken when the plain division would
    // overflow, so ordinary temperatures keep llama.cpp's exact arithmetic.
    let max_l = c.data.iter().fold(f32::NEG_INFINITY, |m, x| m.max(x.logit));
    if max_l.is_finite() && !(max_l / temp).is_finite() {
        for x in c.data.iter_mut() {
            x.logit = if x.logit == max_l {
                0.0
            } else {
                (x.logit - max_l) / temp
            };
        }
        return;
    }
    for x in c.data.iter_mut() {
        x.logit /= temp;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cands(logits: &[f32]) -> Candidates {
        let mut c = Candidates::default();
        c.fill(logits);
        c
    }

    #[test]
    fn top_k_keeps_best() {
        let mut c = cands(&[1.0, 4.0, 3.0, 2.0]);
        top_k(&mut c, 2);
        assert_eq!(c.data.iter().map(|x| x.id).collect::<Vec<_>>(), vec![1, 2]);
    }

    #[test]
    fn top_p_cuts_at_mass() {
        let p = [0.5f32, 0.3, 0.15, 0.05];
        let mut c = cands(&p.map(|x| x.ln()));
        top_p(&mut c, 0.79, 0);
        assert_eq!(c.len(), 2);
        let mut c = cands(&p.map(|x| x.ln()));
        top_p(&mut c, 0.81, 0);
        assert_eq!(c.len(), 3);
    }

    #[test]
    fn min_p_relative() {
        let p = [0.5f32, 0.3, 0.15, 0.05];
        let mut c = cands(&p.map(|x| x.ln()));
        min_p(&mut c, 0.2, 0);
        assert_eq!(c.len(), 3);
        let mut c = cands(&p.map(|x| x.ln()));
        min_p(&mut c, 0.9, 3);
        assert_eq!(c.len(), 3);
    }

    #[test]
    fn tiny_temperatures_tend_to_greedy() {
        for temp in [1e-39f32, 1e-30, f32::MIN_POSITIVE, 1e-45] {
            let mut c = cands(&[1.0, 4.0, 3.0, 4.0 - 1e-6, -2.0]);
            temperature(&mut c, temp);
            c.softmax(true);
            assert!(
                c.data.iter().all(|x| x.p.is_finite()),
                "{temp}: {:?}",
                c.data
            );
            assert_eq!(c.data[0].id, 1, "{temp}");
            assert!(c.data[0].p > 0.99, "{temp}: {:?}", c.data);
        }
        // Ties at the top share the mass; nothing else gets any.
        let mut c = cands(&[5.0, 1.0, 5.0]);
        temperature(&mut c, 1e-39);
        c.softmax(true);
        let p: Vec<f32> = c.data.iter().map(|x| x.p).collect();
        assert_eq!(p, vec![0.5, 0.5, 0.0]);
    }

    #[test]
    fn names() {
        assert_eq!(SamplerKind::from_name("Top-K").unwrap(), SamplerKind::TopK);
        assert_eq!(
            SamplerKind::from_name("typ_p").unwrap(),
            SamplerKind::TypicalP
        );
        assert!(SamplerKind::from_name("bogus").is_err());
    }
}
