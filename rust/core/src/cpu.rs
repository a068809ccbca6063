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

/// The instruction set the kernels use, detected once (or forced by `RLLAMA_SIMD`). A value it
/// cannot honour (a misspelt level, or one this CPU lacks) is said once on stderr, and the
/// detected level is used.
pub fn simd_level() -> SimdLevel {
    static LEVEL: OnceLock<SimdLevel> = OnceLock::new();
    *LEVEL.get_or_init(|| {
        let forced = std::env::var("RLLAMA_SIMD").ok();
        let (level, warning) = choose(forced.as_deref(), detect(), available);
        if let Some(w) = warning {
            eprintln!("rllama: {w}");
        }
        level
    })
}

/// The level `RLLAMA_SIMD=forced` gives on a CPU whose best level is `detected` and that runs
/// the levels `has` accepts, and what to warn when the value names no level or one the CPU
/// lacks (the detected level is used then). Unset or empty: the detected level, no warning.
fn choose(
    forced: Option<&str>,
    detected: SimdLevel,
    has: impl Fn(SimdLevel) -> bool,
) -> (SimdLevel, Option<String>) {
    let Some(name) = forced.filter(|v| !v.is_empty()) else {
        return (detected, None);
    };
    let using = detected.name();
    match SimdLevel::ALL.into_iter().find(|l| l.name() == name) {
        Some(level) if has(level) => (level, None),
        Some(_) => (
            detected,
            Some(format!(
                "RLLAMA_SIMD={name} is not available on this CPU; using {using}"
            )),
        ),
        None => {
            let names: Vec<&str> = SimdLevel::ALL.iter().map(|l| l.name()).collect();
            let msg = format!(
                "RLLAMA_SIMD={name:?} is not a SIMD level ({}); using {using}",
                names.join(", ")
            );
            (detected, Some(msg))
        }
    }
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

    /// Every level: the names `RLLAMA_SIMD` takes, and for tests that hold each one this CPU has
    /// to the same bits.
    pub const ALL: [SimdLevel; 5] = [
        SimdLevel::Scalar,
        SimdLevel::Avx2 { vnni: false },
        SimdLevel::Avx2 { vnni: true },
        SimdLevel::Avx512,
        SimdLevel::Neon,
    ];
}

#[cfg(test)]
mod tests {
    use super::*;

    const AVX2: SimdLevel = SimdLevel::Avx2 { vnni: false };

    /// A CPU with plain AVX2 (and scalar) only.
    fn avx2_cpu(l: SimdLevel) -> bool {
        matches!(l, SimdLevel::Scalar | AVX2)
    }

    #[test]
    fn unset_or_empty_is_the_detected_level_quietly() {
        assert_eq!(choose(None, AVX2, avx2_cpu), (AVX2, None));
        assert_eq!(choose(Some(""), AVX2, avx2_cpu), (AVX2, None));
    }

    #[test]
    fn a_level_the_cpu_has_is_taken_quietly() {
        assert_eq!(
            choose(Some("scalar"), AVX2, avx2_cpu),
            (SimdLevel::Scalar, None)
        );
        assert_eq!(choose(Some("avx2"), AVX2, avx2_cpu), (AVX2, None));
    }

    #[test]
    fn a_level_the_cpu_lacks_falls_back_with_a_warning() {
        for name in ["avxvnni", "avx512", "neon"] {
            let (level, w) = choose(Some(name), AVX2, avx2_cpu);
            assert_eq!(level, AVX2);
            let w = w.expect("a warning");
            assert!(
                w.contains(name) && w.contains("not available") && w.ends_with("using avx2"),
                "{w}"
            );
        }
    }

    #[test]
    fn an_unknown_name_falls_back_with_the_known_ones() {
        let (level, w) = choose(Some("AVX-512"), AVX2, avx2_cpu);
        assert_eq!(level, AVX2);
        let w = w.expect("a warning");
        assert!(w.contains("\"AVX-512\" is not a SIMD level"), "{w}");
        assert!(w.contains("scalar, avx2, avxvnni, avx512, neon"), "{w}");
    }
}
