//! Random inputs for the kernel tests (xorshift, so every run and target sees the same data).

use super::GgmlType;

/// A xorshift64 stream.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed.max(1))
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    /// Uniform in [-1, 1] in steps of 0.001.
    pub fn unit(&mut self) -> f32 {
        (self.next_u64() % 2001) as f32 / 1000.0 - 1.0
    }
}

/// `n_blocks` random blocks of a legacy type with finite f16 scales (and mins) in [0.001, 0.06).
pub fn legacy_blocks(ty: GgmlType, n_blocks: usize, rng: &mut Rng) -> Vec<u8> {
    let ts = ty.type_size();
    let mut raw: Vec<u8> = (0..n_blocks * ts).map(|_| rng.next_u64() as u8).collect();
    for blk in raw.chunks_exact_mut(ts) {
        for at in [0usize, 2] {
            let h = half::f16::from_f32(0.001 + (rng.next_u64() % 1000) as f32 * 6e-5).to_bits();
            blk[at..at + 2].copy_from_slice(&h.to_le_bytes());
        }
    }
    raw
}

/// Every 32-block type the legacy dots handle.
pub const LEGACY: [GgmlType; 6] = [
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q8_0,
    GgmlType::IQ4_NL,
];
