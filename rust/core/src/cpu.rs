//! The CPU's SIMD level: detected once (or forced by `RLLAMA_SIMD`), and a dispatcher that
//! compiles a closure for it. Below `quant` and `tensor`, which both pick kernels by it.

use std::sync::OnceLock;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SimdLevel {
    Scalar,
    /// AVX2 with FMA and F16C; `vnni`: with AVX-VNNI too (`vpdpbusd` on 256-bit vectors, as on
    /// Intel's cores since Alder Lake, which have no AVX-512), which the integer kernels use in
    /// place of `maddubs` + `madd` for the same exact sums.
    Avx2 {
        vnni: bool,
    },
    Avx512,
    /// aarch64 (NEON is part of every aarch64 target).
    Neon,
}

/// The instruction set the kernels use, detected once (or forced by `RLLAMA_SIMD`).
pub fn simd_level() -> SimdLevel {
    static LEVEL: OnceLock<SimdLevel> = OnceLock::new();
    *LEVEL.get_or_init(|| {
        let detected = detect();
        match std::env::var("RLLAMA_SIMD").ok().as_deref() {
            Some("scalar") => SimdLevel::Scalar,
            Some("avx2") if available(SimdLevel::Avx2 { vnni: false }) => {
                SimdLevel::Avx2 { vnni: false }
            }
            Some("avxvnni") if available(SimdLevel::Avx2 { vnni: true }) => {
                SimdLevel::Avx2 { vnni: true }
            }
            Some("avx512") if detected == SimdLevel::Avx512 => SimdLevel::Avx512,
            Some("neon") if detected == SimdLevel::Neon => SimdLevel::Neon,
            _ => detected,
        }
    })
}

/// Run `f` compiled for the detected SIMD level: LLVM vectorizes the `#[inline(always)]` code it
/// reaches with that level's instructions (mark the closure `#[inline(always)]` too).
#[inline(always)]
pub fn simd_dispatch<R, F: FnOnce() -> R>(f: F) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
        unsafe fn avx512<R, F: FnOnce() -> R>(f: F) -> R {
            f()
        }
        #[target_feature(enable = "avx2,fma,f16c")]
        unsafe fn avx2<R, F: FnOnce() -> R>(f: F) -> R {
            f()
        }
        match simd_level() {
            // SAFETY: the level is only chosen when the CPU reports these features.
            SimdLevel::Avx512 => return unsafe { avx512(f) },
            SimdLevel::Avx2 { .. } => return unsafe { avx2(f) },
            _ => {}
        }
    }
    f()
}

fn detect() -> SimdLevel {
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512vl")
            && is_x86_feature_detected!("avx512vnni")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c")
        {
            return SimdLevel::Avx512;
        }
        if is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c")
        {
            return SimdLevel::Avx2 {
                vnni: has_avx_vnni(),
            };
        }
    }
    #[cfg(target_arch = "aarch64")]
    if std::arch::is_aarch64_feature_detected!("neon") {
        return SimdLevel::Neon;
    }
    SimdLevel::Scalar
}

/// Whether this CPU runs `level`'s kernels.
pub fn available(level: SimdLevel) -> bool {
    let detected = detect();
    match level {
        SimdLevel::Scalar => true,
        SimdLevel::Avx2 { vnni } => {
            matches!(detected, SimdLevel::Avx2 { .. } | SimdLevel::Avx512)
                && (!vnni || has_avx_vnni())
        }
        SimdLevel::Avx512 | SimdLevel::Neon => detected == level,
    }
}

fn has_avx_vnni() -> bool {
    #[cfg(target_arch = "x86_64")]
    return is_x86_feature_detected!("avxvnni");
    #[cfg(not(target_arch = "x86_64"))]
    false
}

impl SimdLevel {
    /// The name `RLLAMA_SIMD` takes for it, as `bench` prints it.
    pub fn name(self) -> &'static str {
        match self {
            SimdLevel::Scalar => "scalar",
            SimdLevel::Avx2 { vnni: false } => "avx2",
            SimdLevel::Avx2 { vnni: true } => "avxvnni",
            SimdLevel::Avx512 => "avx512",
            SimdLevel::Neon => "neon",
        }
    }

    /// Every level, for tests that hold each one this CPU has to the same bits.
    pub const ALL: [SimdLevel; 5] = [
        SimdLevel::Scalar,
        SimdLevel::Avx2 { vnni: false },
        SimdLevel::Avx2 { vnni: true },
        SimdLevel::Avx512,
        SimdLevel::Neon,
    ];
}
