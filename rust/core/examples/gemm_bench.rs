//! Kernel timing without Python: `cargo run -p rllama-core --release --example gemm_bench --
//! TYPE ROWS COLS TOKENS [THREADS] [REPS]`. Random weights (finite f16 scales), packed tiles as
//! a loaded model has them; prints GFLOP/s (2·rows·cols·tokens per pass), best of REPS.

use rllama_core::quant::GgmlType;
use rllama_core::tensor::{matmul_acts, pack_tiles, Activations, QMatrix, ThreadPool};

fn main() {
    let a: Vec<String> = std::env::args().skip(1).collect();
    let ty: GgmlType = match a.first().map(|s| s.as_str()).unwrap_or("Q4_1") {
        "Q4_0" => GgmlType::Q4_0,
        "Q4_1" => GgmlType::Q4_1,
        "Q5_0" => GgmlType::Q5_0,
        "Q5_1" => GgmlType::Q5_1,
        "Q8_0" => GgmlType::Q8_0,
        "IQ4_NL" => GgmlType::IQ4_NL,
        "Q2_K" => GgmlType::Q2_K,
        "Q3_K" => GgmlType::Q3_K,
        "Q4_K" => GgmlType::Q4_K,
        "Q5_K" => GgmlType::Q5_K,
        "Q6_K" => GgmlType::Q6_K,
        "IQ4_XS" => GgmlType::IQ4_XS,
        "F16" => GgmlType::F16,
        "BF16" => GgmlType::BF16,
        "F32" => GgmlType::F32,
        t => panic!("unknown type {t}"),
    };
    let num = |i: usize, d: usize| a.get(i).map(|s| s.parse().unwrap()).unwrap_or(d);
    let (rows, cols, n, threads, reps) =
        (num(1, 1536), num(2, 576), num(3, 512), num(4, 1), num(5, 5));
    let ts = ty.type_size();
    let bs = ty.block_size();
    let mut st = 0x9e3779b97f4a7c15u64;
    let mut next = || {
        st ^= st << 13;
        st ^= st >> 7;
        st ^= st << 17;
        st
    };
    let n_blocks = rows * cols / bs;
    let mut data: Vec<u8> = (0..n_blocks * ts).map(|_| next() as u8).collect();
    let f16_fields: &[usize] = match ty {
        GgmlType::Q4_0 | GgmlType::Q5_0 | GgmlType::Q8_0 | GgmlType::IQ4_NL | GgmlType::IQ4_XS => {
            &[0]
        }
        GgmlType::Q4_1 | GgmlType::Q5_1 | GgmlType::Q4_K | GgmlType::Q5_K => &[0, 2],
        GgmlType::Q2_K => &[80, 82],
        GgmlType::Q3_K => &[108],
        GgmlType::Q6_K => &[208],
        _ => &[],
    };
    match ty {
        GgmlType::F32 => {
            for c in data.chunks_exact_mut(4) {
                c.copy_from_slice(&((next() % 2000) as f32 / 1000.0 - 1.0).to_le_bytes());
            }
        }
        GgmlType::F16 | GgmlType::BF16 => {
            for c in data.chunks_exact_mut(2) {
                let v = (next() % 2000) as f32 / 1000.0 - 1.0;
                let h = if ty == GgmlType::F16 {
                    half::f16::from_f32(v).to_bits()
                } else {
                    half::bf16::from_f32(v).to_bits()
                };
                c.copy_from_slice(&h.to_le_bytes());
            }
        }
        _ => {
            for blk in data.chunks_exact_mut(ts) {
                for &o in f16_fields {
                    let v = 0.002 + (next() % 1000) as f32 * 2e-5;
                    blk[o..o + 2].copy_from_slice(&half::f16::from_f32(v).to_le_bytes());
                }
            }
        }
    }
    let pool = ThreadPool::new(threads);
    let w = QMatrix::new(ty, &data, rows, cols).unwrap();
    let tiles = pack_tiles(&pool, std::slice::from_ref(&w), &|_, _| {})
        .pop()
        .flatten();
    let w = w.with_tiles(tiles.as_ref());
    let x: Vec<f32> = (0..n * cols)
        .map(|_| (next() % 2000) as f32 / 1000.0 - 1.0)
        .collect();
    let acts = Activations::new(&pool, ty, &x, n).unwrap();
    let mut y = Vec::new();
    let mut best = f64::MAX;
    for _ in 0..reps {
        let t0 = std::time::Instant::now();
        y = matmul_acts(&pool, &w, &acts).unwrap();
        best = best.min(t0.elapsed().as_secs_f64());
    }
    let sum: f64 = y.iter().map(|&v| v as f64).sum();
    println!(
        "{ty} {rows}x{cols} n={n} t={threads} tiles={} best {:.3} ms  {:.1} GFLOP/s  (checksum {sum:.6e})",
        tiles.is_some(),
        best * 1e3,
        2.0 * (rows * cols * n) as f64 / best / 1e9
    );
}
