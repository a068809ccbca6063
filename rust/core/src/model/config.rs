//! Hyperparameters read from GGUF metadata (`<arch>.*` keys), validated once at load.

use crate::error::{Error, Result};
use crate::gguf::GgufFile;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    Llama,
    /// Llama's blocks with biases on Q, K and V and NeoX RoPE.
    Qwen2,
    Gemma3,
    /// Llama's blocks with one fused Q/K/V matrix, one fused [gate | up] matrix, NeoX RoPE and
    /// optional per-dimension RoPE frequency factors (long and short).
    Phi3,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RopeStyle {
    /// Rotate adjacent pairs (x[2i], x[2i+1]): llama.
    Normal,
    /// Rotate halves (x[i], x[i + d/2]): gemma, qwen2, phi3.
    Neox,
}

/// YaRN's settings (llama.cpp's `--yarn-*` flags; defaults from metadata).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Yarn {
    pub ext_factor: f32,
    pub attn_factor: f32,
    pub beta_fast: f32,
    pub beta_slow: f32,
    pub n_ctx_orig: usize,
}

/// RoPE settings given on the command line or to `rllama.Model`, over the file's (llama.cpp's
/// `--rope-scaling`, `--rope-freq-base`, `--rope-freq-scale`, `--yarn-*`).
#[derive(Clone, Debug, Default)]
pub struct RopeOverrides {
    pub scaling: Option<String>,
    pub freq_base: Option<f32>,
    pub freq_scale: Option<f32>,
    pub yarn_orig_ctx: Option<usize>,
    pub yarn_ext_factor: Option<f32>,
    pub yarn_attn_factor: Option<f32>,
    pub yarn_beta_fast: Option<f32>,
    pub yarn_beta_slow: Option<f32>,
}

#[derive(Clone, Debug)]
pub struct ModelConfig {
    pub arch: Arch,
    pub arch_name: String,
    pub n_layer: usize,
    pub n_embd: usize,
    pub n_ff: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    pub head_dim: usize,
    pub n_vocab: usize,
    pub n_ctx_train: usize,
    pub rms_eps: f32,
    pub rope_style: RopeStyle,
    pub n_rot: usize,
    pub rope_base: f32,
    /// RoPE base of sliding-window layers (gemma3's local layers).
    pub rope_base_swa: f32,
    pub rope_scale: f32,
    /// YaRN scaling (`rope.scaling.type` = yarn, or `--rope-scaling yarn`).
    pub yarn: Option<Yarn>,
    /// Magnitude scale of RoPE's sin and cos without YaRN (`rope.scaling.attn_factor`).
    pub rope_attn_factor: f32,
    /// The training context that RoPE frequency factors were made for: longer contexts take the
    /// long factors (`rope.scaling.original_context_length`, else the training context).
    pub n_ctx_orig: usize,
    /// Sliding window size (0: none) and which layers use it.
    pub n_swa: usize,
    pub swa_layers: Vec<bool>,
    /// Query scale applied before attention (1/sqrt(head_dim) unless the architecture says otherwise).
    pub attn_scale: f32,
    pub final_logit_softcap: f32,
}

fn req(f: &GgufFile, key: &str) -> Result<i64> {
    f.get_i64(key)
        .ok_or_else(|| Error::load(format!("missing or non-integer metadata key {key}")))
}

impl ModelConfig {
    pub fn from_gguf(f: &GgufFile) -> Result<Self> {
        let arch_name = f
            .architecture()
            .ok_or_else(|| Error::load("missing general.architecture"))?
            .to_string();
        let arch = match arch_name.as_str() {
            "llama" => Arch::Llama,
            "qwen2" => Arch::Qwen2,
            "gemma3" => Arch::Gemma3,
            "phi3" => Arch::Phi3,
            other => {
                return Err(Error::load(format!(
                "unsupported model architecture '{other}' (supported: llama, qwen2, gemma3, phi3)"
            )))
            }
        };
        let k = |s: &str| format!("{arch_name}.{s}");
        let pos = |key: &str, v: i64| -> Result<usize> {
            if v <= 0 || v > (1 << 24) {
                return Err(Error::load(format!("metadata {key} = {v} is out of range")));
            }
            Ok(v as usize)
        };
        let n_layer = pos(&k("block_count"), req(f, &k("block_count"))?)?;
        let n_embd = pos(&k("embedding_length"), req(f, &k("embedding_length"))?)?;
        let n_ff = pos(
            &k("feed_forward_length"),
            req(f, &k("feed_forward_length"))?,
        )?;
        let n_head = pos(
            &k("attention.head_count"),
            req(f, &k("attention.head_count"))?,
        )?;
        let n_head_kv = match f.get_i64(&k("attention.head_count_kv")) {
            Some(v) => pos(&k("attention.head_count_kv"), v)?,
            None => n_head,
        };
        if !n_head.is_multiple_of(n_head_kv) {
            return Err(Error::load(format!(
                "head_count {n_head} is not a multiple of head_count_kv {n_head_kv}"
            )));
        }
        let head_dim = match f.get_i64(&k("attention.key_length")) {
            Some(v) => pos(&k("attention.key_length"), v)?,
            None => n_embd / n_head,
        };
        if let Some(v) = f.get_i64(&k("attention.value_length")) {
            if v as usize != head_dim {
                return Err(Error::load(
                    "attention key_length != value_length is not supported",
                ));
            }
        }
        // Like llama.cpp, the tokenizer's token list is the vocabulary: the embedding and output
        // matrices must have one row per token (checked against n_vocab where they are loaded),
        // and a vocab_size key that disagrees is a broken file, not a hint.
        let n_tokens = f.get_array("tokenizer.ggml.tokens").map(|a| a.len());
        let n_vocab = match (f.get_i64(&k("vocab_size")), n_tokens) {
            (Some(v), Some(n)) if v != n as i64 => {
                return Err(Error::load(format!(
                    "metadata {} = {v} differs from the tokenizer's {n} tokens",
                    k("vocab_size")
                )))
            }
            (Some(v), _) => pos(&k("vocab_size"), v)?,
            (None, Some(n)) => pos("tokenizer.ggml.tokens (length)", n as i64)?,
            (None, None) => return Err(Error::load("no vocab_size and no tokenizer.ggml.tokens")),
        };
        if let Some(t) = f.tensor("token_embd.weight") {
            let rows = t.dims.get(1).copied().unwrap_or(1);
            if rows != n_vocab as u64 {
                return Err(Error::load(format!(
                    "token_embd.weight has {rows} rows but the vocabulary has {n_vocab} tokens"
                )));
            }
        }
        let n_ctx_train = f.get_i64(&k("context_length")).unwrap_or(2048).max(1) as usize;
        let rms_eps = f
            .get_f64(&k("attention.layer_norm_rms_epsilon"))
            .unwrap_or(1e-5) as f32;
        // NaN or a negative epsilon makes every norm NaN (sqrt of a negative mean square).
        if !(rms_eps >= 0.0 && rms_eps.is_finite()) {
            return Err(Error::load(format!(
                "metadata {} = {rms_eps} must be a finite number >= 0",
                k("attention.layer_norm_rms_epsilon")
            )));
        }
        let n_rot = f
            .get_i64(&k("rope.dimension_count"))
            .map(|v| v as usize)
            .unwrap_or(head_dim);
        if n_rot > head_dim || !n_rot.is_multiple_of(2) {
            return Err(Error::load(format!(
                "rope dimension {n_rot} invalid for head size {head_dim}"
            )));
        }
        // The same rule as the --rope-freq-base override (apply_rope_overrides): a base of 0,
        // NaN, infinity or below zero gives NaN or constant angles, so it is a load error.
        let positive_base = |key: String| -> Result<Option<f32>> {
            match f.get_f64(&key) {
                None => Ok(None),
                Some(v) if v > 0.0 && (v as f32).is_finite() => Ok(Some(v as f32)),
                Some(v) => Err(Error::load(format!(
                    "metadata {key} = {v} must be a finite number > 0"
                ))),
            }
        };
        let rope_base = positive_base(k("rope.freq_base"))?.unwrap_or(10000.0);
        let rope_base_swa = positive_base(k("rope.freq_base_swa"))?.unwrap_or(10000.0);
        let factor = match f.get_f64(&k("rope.scaling.factor")) {
            Some(s) if s > 0.0 => 1.0 / s as f32,
            _ => 1.0,
        };
        let n_ctx_orig = f
            .get_i64(&k("rope.scaling.original_context_length"))
            .filter(|&v| v > 0)
            .map(|v| v as usize)
            .unwrap_or(n_ctx_train);
        let rope_attn_factor = f
            .get_f64(&k("rope.scaling.attn_factor"))
            .filter(|&v| v > 0.0)
            .unwrap_or(1.0) as f32;
        let (rope_scale, yarn) = match f.get_str(&k("rope.scaling.type")).unwrap_or("linear") {
            "none" => (1.0, None),
            "yarn" => (
                factor,
                Some(Yarn {
                    ext_factor: f.get_f64(&k("rope.scaling.yarn_ext_factor")).unwrap_or(1.0) as f32,
                    attn_factor: f
                        .get_f64(&k("rope.scaling.yarn_attn_factor"))
                        .or_else(|| f.get_f64(&k("rope.scaling.attn_factor")))
                        .unwrap_or(1.0) as f32,
                    beta_fast: f.get_f64(&k("rope.scaling.yarn_beta_fast")).unwrap_or(32.0) as f32,
                    beta_slow: f.get_f64(&k("rope.scaling.yarn_beta_slow")).unwrap_or(1.0) as f32,
                    n_ctx_orig,
                }),
            ),
            _ => (factor, None),
        };
        let (rope_style, n_swa, swa_layers, attn_scale) = match arch {
            // llama.cpp turns phi3's sliding window off (its files do not say which layers use
            // it), and so do we.
            Arch::Llama | Arch::Qwen2 | Arch::Phi3 => (
                if arch == Arch::Llama {
                    RopeStyle::Normal
                } else {
                    RopeStyle::Neox
                },
                0,
                vec![false; n_layer],
                1.0 / (head_dim as f32).sqrt(),
            ),
            Arch::Gemma3 => {
                let n_swa = f
                    .get_i64(&k("attention.sliding_window"))
                    .unwrap_or(0)
                    .max(0) as usize;
                let pattern = f
                    .get_i64(&k("attention.sliding_window_pattern"))
                    .unwrap_or(6)
                    .max(0) as usize;
                let swa = (0..n_layer)
                    .map(|il| n_swa > 0 && (pattern == 0 || il % pattern < pattern - 1))
                    .collect();
                // 27B scales by n_embd/n_head; the others by the head size (which is what we use:
                // for every released size but 27B the two agree or the head size is specified).
                let scale = if n_layer == 62 {
                    1.0 / ((n_embd / n_head) as f32).sqrt()
                } else {
                    1.0 / (head_dim as f32).sqrt()
                };
                (RopeStyle::Neox, n_swa, swa, scale)
            }
        };
        let final_logit_softcap = f.get_f64(&k("final_logit_softcapping")).unwrap_or(0.0) as f32;
        Ok(ModelConfig {
            arch,
            arch_name,
            n_layer,
            n_embd,
            n_ff,
            n_head,
            n_head_kv,
            head_dim,
            n_vocab,
            n_ctx_train,
            rms_eps,
            rope_style,
            n_rot,
            rope_base,
            rope_base_swa,
            rope_scale,
            yarn,
            rope_attn_factor,
            n_ctx_orig,
            n_swa,
            swa_layers,
            attn_scale,
            final_logit_softcap,
        })
    }

    /// Apply RoPE overrides (an unknown scaling name or a non-positive base/scale is an error).
    pub fn apply_rope_overrides(&mut self, o: &RopeOverrides) -> Result<()> {
        let positive = |name: &str, v: Option<f32>| match v {
            Some(x) if !(x > 0.0 && x.is_finite()) => {
                Err(Error::invalid(format!("{name} must be positive, got {x}")))
            }
            _ => Ok(v),
        };
        if let Some(b) = positive("rope frequency base", o.freq_base)? {
            self.rope_base = b;
        }
        if let Some(sc) = positive("rope frequency scale", o.freq_scale)? {
            self.rope_scale = sc;
        }
        match o.scaling.as_deref() {
            None => {}
            Some("none") => {
                self.rope_scale = 1.0;
                self.yarn = None;
            }
            Some("linear") => self.yarn = None,
            Some("yarn") => {
                self.yarn.get_or_insert(Yarn {
                    ext_factor: 1.0,
                    attn_factor: 1.0,
                    beta_fast: 32.0,
                    beta_slow: 1.0,
                    n_ctx_orig: self.n_ctx_orig,
                });
            }
            Some(other) => {
                return Err(Error::invalid(format!(
                    "unknown rope scaling '{other}' (none, linear or yarn)"
                )))
            }
        }
        if let Some(v) = o.yarn_orig_ctx.filter(|&v| v > 0) {
            self.n_ctx_orig = v;
        }
        if let Some(y) = &mut self.yarn {
            if let Some(v) = o.yarn_orig_ctx.filter(|&v| v > 0) {
                y.n_ctx_orig = v;
            }
            if let Some(v) = o.yarn_ext_factor.filter(|&v| v >= 0.0) {
                y.ext_factor = v;
            }
            if let Some(v) = o.yarn_attn_factor.filter(|&v| v > 0.0) {
                y.attn_factor = v;
            }
            if let Some(v) = o.yarn_beta_fast {
                y.beta_fast = v;
            }
            if let Some(v) = o.yarn_beta_slow {
                y.beta_slow = v;
            }
        }
        Ok(())
    }

    pub fn kv_dim(&self) -> usize {
        self.n_head_kv * self.head_dim
    }
    pub fn q_dim(&self) -> usize {
        self.n_head * self.head_dim
    }
}
