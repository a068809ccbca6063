//! Float weight matrices (F32, F16, BF16) summed in llama.cpp's orders.
//!
//! llama.cpp multiplies these matrices two ways, and which one decides the bits:
//! - one token, or a shape the tiles below do not take: `ggml_vec_dot_{f32,f16,bf16}`, a few
//!   vector accumulators striding over the row, folded together and then across lanes;
//! - several tokens, when the columns are a multiple of the vector width and the rows of four:
//!   llamafile's tinyBLAS, one vector accumulator per output stepping over the row by fused
//!   multiply-adds (by `vdpbf16ps` for BF16 where the CPU has it), then summed across lanes.
//!
//! Activations are first rounded to the weights' format (F16, BF16; F32 stays as it is), as
//! ggml converts them to the weight type's `vec_dot_type`. Each output is computed by one
//! thread, so the order depends on the SIMD level (the build llama.cpp would be) and on whether
//! tinyBLAS takes the shape, never on the thread count. `Scalar` is ggml built without SIMD: a
//! double-precision sum of the products, for any batch.
//!
//! The x86 kernels are in `x86f.rs`; `reference` (tests) restates each order lane by lane.

use super::f16::f16_to_f32;
use super::GgmlType;
use crate::cpu::SimdLevel;

/// The float matmul orders of one llama.cpp build.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FloatOrder {
    /// No SIMD: `Σ (double) x·y`.
    Scalar,
    /// AVX2 + FMA + F16C: eight lanes.
    Avx2,
    /// AVX-512F: sixteen lanes; `bf16_dot` when the CPU has AVX512_BF16 (tinyBLAS and the BF16
    /// dot then use `vdpbf16ps`, thirty-two values per step).
    Avx512 { bf16_dot: bool },
}

impl FloatOrder {
    /// The order of the build that matches `level` on this CPU (NEON is not transcribed yet and
    /// takes the scalar order).
    pub fn of(level: SimdLevel) -> Self {
        match level {
            SimdLevel::Avx2 { .. } => FloatOrder::Avx2,
            SimdLevel::Avx512 => FloatOrder::Avx512 {
                bf16_dot: has_bf16_dot(),
            },
            SimdLevel::Scalar | SimdLevel::Neon => FloatOrder::Scalar,
        }
    }

    /// tinyBLAS's step in values for `ty` (its KN), where this build has tinyBLAS.
    pub fn tile_step(self, ty: GgmlType) -> Option<usize> {
        match self {
            FloatOrder::Scalar => None,
            FloatOrder::Avx2 => Some(8),
            FloatOrder::Avx512 { bf16_dot: true } if ty == GgmlType::BF16 => Some(32),
            FloatOrder::Avx512 { .. } => Some(16),
        }
    }

    /// Whether llama.cpp takes an `rows`×`cols` matrix times `n` tokens through tinyBLAS.
    pub fn tiled(self, ty: GgmlType, rows: usize, cols: usize, n: usize) -> bool {
        n >= 2
            && rows.is_multiple_of(4)
            && self.tile_step(ty).is_some_and(|kn| cols.is_multiple_of(kn))
    }
}

/// Whether the CPU has AVX512_BF16 (`vdpbf16ps`).
pub fn has_bf16_dot() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

pub fn is_float(ty: GgmlType) -> bool {
    matches!(ty, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16)
}

/// ggml's FP32 → BF16: round to nearest even, NaN kept quiet.
#[inline(always)]
pub fn f32_to_bf16(x: f32) -> u16 {
    let u = x.to_bits();
    if (u & 0x7fff_ffff) > 0x7f80_0000 {
        return ((u >> 16) | 64) as u16;
    }
    ((u + (0x7fff + ((u >> 16) & 1))) >> 16) as u16
}

#[inline(always)]
pub fn bf16_to_f32(h: u16) -> f32 {
    f32::from_bits((h as u32) << 16)
}

/// Activation rows as the kernels read them, rounded to the weights' format as ggml's
/// `from_float` does: f32 for F16 weights (exactly the f16 values, widened once here rather than
/// in every tile), bits for BF16 (`vdpbf16ps` reads them so); F32 weights read `x` itself.
pub enum FloatActs {
    Same,
    F16(Recycled<f32>),
    Bf16(Recycled<u16>),
}

impl FloatActs {
    pub fn new(ty: GgmlType, x: &[f32]) -> Self {
        match ty {
            GgmlType::F16 => {
                let mut v = Recycled::<f32>::take(x.len());
                super::f16::round_f16_into(x, &mut v.0);
                FloatActs::F16(v)
            }
            GgmlType::BF16 => {
                let mut v = Recycled::<u16>::take(x.len());
                v.0.extend(x.iter().map(|&v| f32_to_bf16(v)));
                FloatActs::Bf16(v)
            }
            _ => FloatActs::Same,
        }
    }
}

/// A conversion buffer handed back for the next matmul when dropped. A batch's buffer is
/// megabytes; allocated afresh each time, glibc returns it to the kernel on free and every
/// matmul then faults its pages in again (measured: 3.5x the page faults of a quantized model
/// and a third off F16 prefill).
pub struct Recycled<T: Spare>(pub Vec<T>);

pub trait Spare: Sized + 'static {
    fn spares() -> &'static std::sync::Mutex<Vec<Vec<Self>>>;
}
impl Spare for f32 {
    fn spares() -> &'static std::sync::Mutex<Vec<Vec<Self>>> {
        static S: std::sync::Mutex<Vec<Vec<f32>>> = std::sync::Mutex::new(Vec::new());
        &S
    }
}
impl Spare for u16 {
    fn spares() -> &'static std::sync::Mutex<Vec<Vec<Self>>> {
        static S: std::sync::Mutex<Vec<Vec<u16>>> = std::sync::Mutex::new(Vec::new());
        &S
    }
}

impl<T: Spare> Recycled<T> {
    /// An empty buffer with room for `len` values.
    pub fn take(len: usize) -> Self {
        let mut v = T::spares()
            .lock()
            .map(|mut s| s.pop())
            .ok()
            .flatten()
            .unwrap_or_default();
        v.clear();
        v.reserve(len);
        Recycled(v)
    }
}

impl<T: Spare> Drop for Recycled<T> {
    fn drop(&mut self) {
        let v = std::mem::take(&mut self.0);
        if let Ok(mut s) = T::spares().lock() {
            // Two: the most a forward pass has alive at once (one matmul group's, the next's).
            if s.len() < 2 {
                s.push(v);
            }
        }
    }
}

/// The element format of `ty`'s activation rows (`FloatActs`).
pub fn act_type(ty: GgmlType) -> GgmlType {
    if ty == GgmlType::BF16 {
        GgmlType::BF16
    } else {
        GgmlType::F32
    }
}

/// Element `i` of a row of `ty` values.
#[inline(always)]
pub fn elem(ty: GgmlType, row: &[u8], i: usize) -> f32 {
    match ty {
        GgmlType::F32 => f32::from_le_bytes(row[4 * i..4 * i + 4].try_into().unwrap()),
        GgmlType::F16 => f16_to_f32(u16::from_le_bytes([row[2 * i], row[2 * i + 1]])),
        _ => bf16_to_f32(u16::from_le_bytes([row[2 * i], row[2 * i + 1]])),
    }
}

/// ggml's dot without SIMD: the f32 products summed in double precision (`x` as `act_row`).
pub fn dot_scalar(ty: GgmlType, w: &[u8], x: &[u8], k: usize) -> f32 {
    let mut s = 0f64;
    for i in 0..k {
        s += (elem(ty, w, i) * elem(act_type(ty), x, i)) as f64;
    }
    s as f32
}

/// The bytes of activation row `t` (`cols` values) as the kernels read them.
pub fn act_row<'a>(x: &'a [f32], conv: &'a FloatActs, t: usize, cols: usize) -> &'a [u8] {
    fn bytes<T>(v: &[T]) -> &[u8] {
        // SAFETY: f32 and u16 have no padding or invalid bit patterns as bytes.
        unsafe { std::slice::from_raw_parts(v.as_ptr() as *const u8, std::mem::size_of_val(v)) }
    }
    match conv {
        FloatActs::Same => bytes(&x[t * cols..(t + 1) * cols]),
        FloatActs::F16(v) => bytes(&v.0[t * cols..(t + 1) * cols]),
        FloatActs::Bf16(v) => bytes(&v.0[t * cols..(t + 1) * cols]),
    }
}

/// Each order restated one lane at a time, for the tests: `w` and `x` are rows of `k` values of
/// `ty` and its activations (`act_row`'s format), `tiled` picks tinyBLAS over ggml's dot.
#[cfg(test)]
pub fn reference(
    order: FloatOrder,
    ty: GgmlType,
    w: &[u8],
    x: &[u8],
    k: usize,
    tiled: bool,
) -> f32 {
    let xt = act_type(ty);
    let p = |i: usize| elem(ty, w, i) * elem(xt, x, i);
    let fma = |i: usize, acc: f32| elem(ty, w, i).mul_add(elem(xt, x, i), acc);
    // Lanes halved down to four, then (l0 + l2) + (l1 + l3): GCC's `_mm512_reduce_add_ps` and
    // tinyBLAS's `hsum`.
    fn halving(mut v: Vec<f32>) -> f32 {
        while v.len() > 4 {
            let h = v.len() / 2;
            v = (0..h).map(|i| v[i + h] + v[i]).collect();
        }
        (v[0] + v[2]) + (v[1] + v[3])
    }
    // AVX's `hadd` fold of eight lanes: (t0 + t1) + (t2 + t3), t = low half + high half.
    fn hadd8(v: &[f32]) -> f32 {
        let t: Vec<f32> = (0..4).map(|i| v[i] + v[i + 4]).collect();
        (t[0] + t[1]) + (t[2] + t[3])
    }
    // `n_acc` accumulators of `lanes` lanes striding over the row, `step` = n_acc·lanes.
    let strided = |n_acc: usize, lanes: usize, end: usize| -> Vec<Vec<f32>> {
        let mut acc = vec![vec![0f32; lanes]; n_acc];
        for i in (0..end).step_by(n_acc * lanes) {
            for (j, a) in acc.iter_mut().enumerate() {
                for (l, v) in a.iter_mut().enumerate() {
                    *v = fma(i + j * lanes + l, *v);
                }
            }
        }
        acc
    };
    // Two accumulators' fold of ggml's REDUCE: x0 += x2, x1 += x3, x0 += x1.
    let fold4 = |a: &[Vec<f32>]| -> Vec<f32> {
        (0..a[0].len())
            .map(|l| (a[0][l] + a[2][l]) + (a[1][l] + a[3][l]))
            .collect()
    };
    let bf16_dot_lanes = |acc: &mut [f32], i: usize| {
        // vdpbf16ps: lane l adds the pair (2l, 2l+1) of the 32 values at i, one after the other.
        for (l, a) in acc.iter_mut().enumerate() {
            *a = bf16_dot_pair(*a, p(i + 2 * l), p(i + 2 * l + 1));
        }
    };
    match (order, tiled) {
        (FloatOrder::Scalar, _) => dot_scalar(ty, w, x, k),
        (FloatOrder::Avx512 { bf16_dot: true }, true) if ty == GgmlType::BF16 => {
            let mut acc = vec![0f32; 16];
            for i in (0..k).step_by(32) {
                bf16_dot_lanes(&mut acc, i);
            }
            halving(acc)
        }
        (_, true) => {
            let kn = order.tile_step(ty).unwrap();
            halving(strided(1, kn, k).remove(0))
        }
        (FloatOrder::Avx512 { bf16_dot }, false) if ty == GgmlType::BF16 => {
            let mut s = 0f64;
            let mut i = 0;
            if bf16_dot {
                let (mut c1, mut c2) = (vec![0f32; 16], vec![0f32; 16]);
                while i + 64 <= k {
                    bf16_dot_lanes(&mut c1, i);
                    bf16_dot_lanes(&mut c2, i + 32);
                    i += 64;
                }
                s += halving(c1) as f64;
                s += halving(c2) as f64;
            } else {
                let end = k / 32 * 32;
                let acc = strided(2, 16, end);
                s += halving(acc[0].clone()) as f64;
                s += halving(acc[1].clone()) as f64;
                i = end;
            }
            for j in i..k {
                s += p(j) as f64;
            }
            s as f32
        }
        (FloatOrder::Avx2, false) if ty == GgmlType::BF16 => {
            let end = k / 32 * 32;
            let mut s = halving(fold4(&strided(4, 8, end))) as f64;
            for j in end..k {
                s += p(j) as f64;
            }
            s as f32
        }
        (_, false) => {
            let (lanes, fold): (usize, fn(&[f32]) -> f32) = match order {
                FloatOrder::Avx2 => (8, hadd8),
                _ => (16, |v| halving(v.to_vec())),
            };
            let end = k / (4 * lanes) * (4 * lanes);
            let r = fold(&fold4(&strided(4, lanes, end)));
            if ty == GgmlType::F32 {
                // ggml keeps this sum in f32, the leftovers contracted to fused multiply-adds.
                (end..k).fold(r, |s, j| fma(j, s))
            } else {
                let s = (end..k).fold(r as f64, |s, j| s + p(j) as f64);
                s as f32
            }
        }
    }
}

/// One lane of `vdpbf16ps`: the odd product then the even one (both exact in f32), each added
/// with round-to-nearest-even; denormal inputs and results are flushed to zero.
#[cfg(test)]
fn bf16_dot_pair(acc: f32, even: f32, odd: f32) -> f32 {
    let ftz = |v: f32| {
        if v.is_subnormal() {
            0.0f32.copysign(v)
        } else {
            v
        }
    };
    let t = ftz(ftz(acc) + ftz(odd));
    ftz(t + ftz(even))
}

#[cfg(test)]
pub mod tests {
    use super::*;
    use crate::quant::f16::f32_to_f16;
    use crate::quant::testing::Rng;

    /// `n` values of `ty` as row bytes, spread over sixteen binades so that summation orders
    /// tell apart.
    pub fn random_row(ty: GgmlType, n: usize, rng: &mut Rng) -> Vec<u8> {
        let mut out = Vec::new();
        for _ in 0..n {
            let e = (rng.next_u64() % 16) as i32 - 8;
            let v = rng.unit() * 2f32.powi(e);
            match ty {
                GgmlType::F32 => out.extend(v.to_le_bytes()),
                GgmlType::F16 => out.extend(f32_to_f16(v).to_le_bytes()),
                _ => out.extend(f32_to_bf16(v).to_le_bytes()),
            }
        }
        out
    }

    #[test]
    fn bf16_conversion_rounds_to_nearest_even() {
        assert_eq!(f32_to_bf16(1.0), 0x3f80);
        // Halfway between 0x3f80 and 0x3f81: ties go to the even one.
        assert_eq!(f32_to_bf16(f32::from_bits(0x3f80_8000)), 0x3f80);
        assert_eq!(f32_to_bf16(f32::from_bits(0x3f81_8000)), 0x3f82);
        assert_eq!(f32_to_bf16(f32::from_bits(0x3f80_8001)), 0x3f81);
        assert_eq!(f32_to_bf16(f32::NAN) & 0x7fc0, 0x7fc0);
        assert_eq!(bf16_to_f32(0xbf80), -1.0);
    }

    #[test]
    fn the_orders_differ() {
        // The restatements are not one sum written four ways: on spread values they disagree.
        let mut rng = Rng::new(11);
        let k = 1024;
        let (mut tiled_differs, mut levels_differ) = (0, 0);
        for _ in 0..20 {
            let w = random_row(GgmlType::F32, k, &mut rng);
            let x = random_row(GgmlType::F32, k, &mut rng);
            let o = FloatOrder::Avx512 { bf16_dot: false };
            let a = reference(o, GgmlType::F32, &w, &x, k, false);
            tiled_differs += (a != reference(o, GgmlType::F32, &w, &x, k, true)) as u32;
            levels_differ +=
                (a != reference(FloatOrder::Avx2, GgmlType::F32, &w, &x, k, false)) as u32;
        }
        assert!(
            tiled_differs > 5 && levels_differ > 5,
            "{tiled_differs} {levels_differ}"
        );
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    #[allow(clippy::needless_range_loop)]
    fn x86_kernels_follow_the_orders_lane_by_lane() {
        use crate::cpu::{available, SimdLevel};
        use crate::quant::x86f;
        let mut orders = Vec::new();
        if available(SimdLevel::Avx2 { vnni: false }) {
            orders.push(FloatOrder::Avx2);
        }
        if available(SimdLevel::Avx512) {
            orders.push(FloatOrder::Avx512 { bf16_dot: false });
            if has_bf16_dot() {
                orders.push(FloatOrder::Avx512 { bf16_dot: true });
            }
        }
        let mut rng = Rng::new(0x9e37_79b9_7f4a_7c15);
        for ty in [GgmlType::F32, GgmlType::F16, GgmlType::BF16] {
            for k in [7, 40, 64, 96, 128, 200, 1040] {
                let rows: Vec<Vec<u8>> = (0..4).map(|_| random_row(ty, k, &mut rng)).collect();
                // Activations as `FloatActs` holds them: f16 values widened to f32.
                let xs: Vec<Vec<u8>> = (0..6)
                    .map(|_| {
                        let r = random_row(ty, k, &mut rng);
                        if ty != GgmlType::F16 {
                            return r;
                        }
                        (0..k).flat_map(|i| elem(ty, &r, i).to_le_bytes()).collect()
                    })
                    .collect();
                let ptrs: [*const u8; 4] = std::array::from_fn(|i| rows[i].as_ptr());
                for &o in &orders {
                    let want =
                        |i: usize, j: usize, tiled| reference(o, ty, &rows[i], &xs[j], k, tiled);
                    // SAFETY: the orders pushed are this CPU's; every row holds k values.
                    for i in 0..4 {
                        let got = unsafe { x86f::dot(o, ty, ptrs[i], xs[1].as_ptr(), k) };
                        assert_eq!(
                            got.to_bits(),
                            want(i, 1, false).to_bits(),
                            "{ty} {o:?} k={k} row {i}"
                        );
                    }
                    if !k.is_multiple_of(o.tile_step(ty).unwrap()) {
                        continue;
                    }
                    let xp: [*const u8; 6] = std::array::from_fn(|j| xs[j].as_ptr());
                    // SAFETY: as above, and k is a multiple of the tile step.
                    let t6 = unsafe { x86f::tile::<4, 6>(o, ty, ptrs, xp, k) };
                    let t1 = unsafe { x86f::tile::<4, 1>(o, ty, ptrs, [xp[4]], k) };
                    let t2 = unsafe { x86f::tile::<2, 6>(o, ty, [ptrs[1], ptrs[3]], xp, k) };
                    for (i, row) in [1, 3].into_iter().enumerate() {
                        for j in 0..6 {
                            assert_eq!(
                                t2[j][i].to_bits(),
                                want(row, j, true).to_bits(),
                                "{ty} {o:?} k={k} 2-row tile"
                            );
                        }
                    }
                    for i in 0..4 {
                        for j in 0..6 {
                            assert_eq!(
                                t6[j][i].to_bits(),
                                want(i, j, true).to_bits(),
                                "{ty} {o:?} k={k} tile {i},{j}"
                            );
                        }
                        assert_eq!(
                            t1[0][i].to_bits(),
                            want(i, 4, true).to_bits(),
                            "{ty} {o:?} k={k}"
                        );
                    }
                }
            }
        }
    }
}
