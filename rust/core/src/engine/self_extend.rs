//! Self-extend (`--grp-attn-n`, `--grp-attn-w`): a sequence longer than the positions a model
//! was trained on keeps attending with positions it knows. Whenever the next position reaches
//! the end of the current window, the cells' RoPE positions are regrouped: the window's
//! positions are divided by the group factor and the ones after it moved down to follow them,
//! exactly as llama.cpp's completion tool does with its seq_add / seq_div / seq_add loop. The
//! cells stay where they are; only their positions (and so their keys' rotations) change.

use crate::error::{Error, Result};

/// The two settings: group factor `n` (1: off) and window `w` (a multiple of `n`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SelfExtend {
    pub n: usize,
    pub w: usize,
}

impl SelfExtend {
    /// None when `n` is 1 (off); an error for settings llama.cpp refuses too.
    pub fn new(n: i64, w: i64) -> Result<Option<Self>> {
        if n == 1 {
            return Ok(None);
        }
        if n < 1 {
            return Err(Error::invalid(format!(
                "grp_attn_n (--grp-attn-n) {n}: the group factor must be at least 1"
            )));
        }
        if w < n || w % n != 0 {
            return Err(Error::invalid(format!(
                "grp_attn_w (--grp-attn-w) {w}: the group width must be a positive multiple of grp_attn_n ({n})"
            )));
        }
        Ok(Some(Self {
            n: n as usize,
            w: w as usize,
        }))
    }
}

/// The RoPE positions of one sequence's cells once they differ from the cells' indices.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grouping {
    /// Position of every cell, in cell order (never decreasing).
    pub pos: Vec<usize>,
    /// The position the next token gets (llama.cpp's `n_past`).
    pub next: usize,
    /// Positions below this are grouped already (llama.cpp's `ga_i`).
    pub done: usize,
}

impl Grouping {
    /// `n` cells at positions 0..n, nothing grouped yet.
    pub fn new(n: usize) -> Self {
        Self {
            pos: (0..n).collect(),
            next: n,
            done: 0,
        }
    }

    /// Cells appended at the next positions.
    pub fn push(&mut self, n: usize) {
        self.pos.extend(self.next..self.next + n);
        self.next += n;
    }

    /// Regroup while the next position is past the current window. Returns the first cell whose
    /// position changed and the change of each cell from it on (empty: nothing to do).
    pub fn regroup(&mut self, se: SelfExtend) -> (usize, Vec<i64>) {
        let old = self.pos.clone();
        let (n, w) = (se.n, se.w);
        let g = w / n;
        while self.next >= self.done + w {
            let ib = n * self.done / w;
            let bd = g * (n - 1);
            let up = ib * bd;
            let ga = self.done;
            let next = self.next;
            // Every position in [ga, next) moves up by ib·bd; the window that starts there is
            // divided by n; what follows it moves down to continue right after the window.
            for p in self.pos.iter_mut() {
                if (ga..next).contains(p) {
                    *p += up;
                }
            }
            for p in self.pos.iter_mut() {
                if (ga + up..ga + up + w).contains(p) {
                    *p /= n;
                }
            }
            for p in self.pos.iter_mut() {
                if (ga + up + w..next + up).contains(p) {
                    // dd = g - up - w, negative: lands at or after ga + g.
                    *p = *p + g - up - w;
                }
            }
            self.next -= bd;
            self.done += g;
        }
        let Some(first) = old.iter().zip(&self.pos).position(|(a, b)| a != b) else {
            return (self.pos.len(), Vec::new());
        };
        let deltas = old[first..]
            .iter()
            .zip(&self.pos[first..])
            .map(|(&a, &b)| b as i64 - a as i64)
            .collect();
        (first, deltas)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// llama.cpp's three calls over a list of positions, as its cache applies them: add to the
    /// cells in [p0, p1), divide the cells in [p0, p1).
    fn reference(pos: &mut Vec<i64>, n_past: &mut i64, ga_i: &mut i64, n: i64, w: i64) {
        let add = |pos: &mut Vec<i64>, p0: i64, p1: i64, d: i64| {
            pos.iter_mut()
                .filter(|p| **p >= p0 && **p < p1)
                .for_each(|p| *p += d)
        };
        while *n_past >= *ga_i + w {
            let ib = (n * *ga_i) / w;
            let bd = (w / n) * (n - 1);
            let dd = (w / n) - ib * bd - w;
            add(pos, *ga_i, *n_past, ib * bd);
            pos.iter_mut()
                .filter(|p| **p >= *ga_i + ib * bd && **p < *ga_i + ib * bd + w)
                .for_each(|p| *p /= n);
            add(pos, *ga_i + ib * bd + w, *n_past + ib * bd, dd);
            *n_past -= bd;
            *ga_i += w / n;
        }
    }

    #[test]
    fn regrouping_follows_llama_cpp_through_any_chunking() {
        for (n, w) in [(2usize, 4usize), (2, 16), (4, 16), (3, 9), (8, 64)] {
            let se = SelfExtend { n, w };
            for chunk in [1usize, 3, 7, 40] {
                let mut g = Grouping::new(0);
                let (mut pos, mut n_past, mut ga_i) = (Vec::<i64>::new(), 0i64, 0i64);
                for _ in 0..30 {
                    let before = g.pos.clone();
                    let (first, deltas) = g.regroup(se);
                    reference(&mut pos, &mut n_past, &mut ga_i, n as i64, w as i64);
                    let got: Vec<i64> = g.pos.iter().map(|&p| p as i64).collect();
                    assert_eq!(got, pos, "n {n} w {w} chunk {chunk}");
                    assert_eq!(g.next as i64, n_past);
                    assert_eq!(g.done as i64, ga_i);
                    // The deltas say how every cell moved.
                    for (i, d) in deltas.iter().enumerate() {
                        assert_eq!(before[first + i] as i64 + d, got[first + i]);
                    }
                    assert!(before[..first] == g.pos[..first]);
                    // Positions never decrease along the cells and stay below the next one.
                    assert!(g.pos.windows(2).all(|p| p[0] <= p[1]));
                    assert!(g.pos.iter().all(|&p| p < g.next));
                    g.push(chunk);
                    pos.extend(n_past..n_past + chunk as i64);
                    n_past += chunk as i64;
                }
                // The positions stay within about one window past the grouped ones.
                assert!(g.next < g.done + w + chunk);
            }
        }
    }

    #[test]
    fn a_small_example_by_hand() {
        let se = SelfExtend { n: 2, w: 4 };
        let mut g = Grouping::new(6);
        let (first, d) = g.regroup(se);
        assert_eq!(g.pos, [0, 0, 1, 1, 2, 3]);
        assert_eq!((g.next, g.done), (4, 2));
        assert_eq!((first, d), (1, vec![-1, -1, -2, -2, -2]));
        g.push(2);
        g.regroup(se);
        assert_eq!(g.pos, [0, 0, 1, 1, 2, 2, 3, 3]);
        assert_eq!((g.next, g.done), (4, 4));
    }

    #[test]
    fn settings_are_checked() {
        assert_eq!(SelfExtend::new(1, 512).unwrap(), None);
        assert_eq!(
            SelfExtend::new(4, 512).unwrap(),
            Some(SelfExtend { n: 4, w: 512 })
        );
        assert!(SelfExtend::new(0, 512).is_err());
        assert!(SelfExtend::new(-2, 512).is_err());
        assert!(SelfExtend::new(3, 512).is_err());
        assert!(SelfExtend::new(4, 2).is_err());
        assert!(SelfExtend::new(4, 0).is_err());
    }
}
