//! Generation for one sequence: prompt evaluation in batches (reusing the cached prefix),
//! sampling, incremental detokenizing, stop strings and limits, and timing. It emits one event per
//! token through a callback that runs on the generating thread (the binding forwards events to a
//! channel; nothing here touches Python). The Engine issue grows this into the continuous-batching
//! scheduler over many sequences; `Sequence` and `generate` are its single-slot core.

mod stop;
mod utf8;

use std::sync::Arc;
use std::time::Instant;

pub use stop::StopMatcher;
pub use utf8::Utf8Decoder;

use crate::error::{Error, Result};
use crate::kv::KvCache;
use crate::model::{BatchToken, Model};
use crate::sampling::{top_logprobs, Sampler, SamplerVocab, SamplingParams};

/// A sequence's KV cache and the tokens it holds, so a later prompt can reuse the common prefix.
pub struct Sequence {
    pub cache: KvCache,
    pub tokens: Vec<u32>,
}

impl Sequence {
    pub fn new(model: &Model, n_ctx: usize) -> Result<Self> {
        Ok(Self {
            cache: model.new_cache(n_ctx)?,
            tokens: Vec::new(),
        })
    }
    pub fn n_ctx(&self) -> usize {
        self.cache.n_ctx()
    }
}

#[derive(Clone, Debug)]
pub struct GenerateParams {
    /// Tokens to generate; negative: until the context is full or a stop condition.
    pub n_predict: i64,
    pub stop: Vec<String>,
    pub n_batch: usize,
    /// Reuse the longest common prefix already in the sequence's cache.
    pub cache_prompt: bool,
    /// Tokens of the prompt to keep when the prompt must be truncated to fit the context.
    pub n_keep: i64,
    pub sampling: SamplingParams,
    /// Report probabilities after the sampler chain instead of from the raw logits.
    pub post_sampling_probs: bool,
}

impl Default for GenerateParams {
    fn default() -> Self {
        Self {
            n_predict: -1,
            stop: Vec::new(),
            n_batch: 512,
            cache_prompt: true,
            n_keep: 0,
            sampling: SamplingParams::default(),
            post_sampling_probs: false,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// An end-of-generation token.
    Eos,
    /// n_predict reached, or the context is full.
    Limit,
    /// A stop string, which is returned.
    Word(String),
    /// The consumer asked to stop (client gone).
    Cancelled,
}

/// One generated token.
#[derive(Clone, Debug)]
pub struct TokenEvent {
    pub token: u32,
    /// Text this token completes that is safe to show now (held back while it could still be
    /// the start of a stop string or an incomplete UTF-8 character).
    pub text: String,
    /// Log-probability of the token, and the top-n (id, logprob) when n_probs > 0.
    pub logprob: f32,
    pub top: Vec<(u32, f32)>,
}

#[derive(Clone, Debug)]
pub struct Generation {
    pub tokens: Vec<u32>,
    pub content: String,
    pub stop: StopReason,
    pub n_prompt: usize,
    /// Prompt tokens actually evaluated (the rest came from the cache).
    pub n_prompt_evaluated: usize,
    pub prompt_ms: f64,
    pub gen_ms: f64,
    pub truncated: bool,
    pub seed: u32,
    /// Tokens in the sequence's cache at the end.
    pub n_cached: usize,
}

/// The batches [start, end) that evaluate `n` prompt tokens, `n_batch` at most each. Models with
/// sliding-window layers end a batch 4 + n_batch tokens and 4 tokens before the end, as
/// llama-server does for them (it keeps a cache checkpoint there); batch sizes decide which
/// kernels run, so the same cuts give llama.cpp's rounding.
pub fn prompt_batches(n: usize, n_batch: usize, swa: bool) -> Vec<(usize, usize)> {
    let nb = n_batch.max(1);
    let mut cuts = vec![0];
    if swa {
        for tail in [4 + nb, 4] {
            if n > tail {
                cuts.push(n - tail);
            }
        }
    }
    cuts.push(n);
    cuts.dedup();
    let mut out = Vec::new();
    for w in cuts.windows(2) {
        let mut s = w[0];
        while s < w[1] {
            out.push((s, (s + nb).min(w[1])));
            s += nb;
        }
    }
    out
}

/// Evaluate `tokens` at positions starting at `pos0`; logits of the last token if `want_last`.
fn eval(
    model: &Model,
    seq: &mut Sequence,
    tokens: &[u32],
    pos0: usize,
    n_batch: usize,
    want_last: bool,
) -> Result<Vec<f32>> {
    let mut logits = Vec::new();
    let n = tokens.len();
    let swa = model.cfg.swa_layers.iter().any(|&s| s);
    for (start, end) in prompt_batches(n, n_batch, swa) {
        let batch: Vec<BatchToken> = (start..end)
            .map(|k| BatchToken {
                token: tokens[k],
                pos: pos0 + k,
                seq: 0,
                logits: want_last && k + 1 == n,
            })
            .collect();
        let out = model.forward(&batch, &mut [&mut seq.cache], false)?;
        if !out.logits.is_empty() {
            logits = out.logits;
        }
    }
    Ok(logits)
}

/// Generate from `prompt`. `on_token` returns false to stop (cancellation).
pub fn generate(
    model: &Model,
    vocab: &Arc<SamplerVocab>,
    seq: &mut Sequence,
    prompt: &[u32],
    params: &GenerateParams,
    on_token: &mut dyn FnMut(&TokenEvent) -> bool,
) -> Result<Generation> {
    let n_ctx = seq.n_ctx();
    if prompt.is_empty() {
        return Err(Error::invalid("the prompt is empty"));
    }
    let n_vocab = model.cfg.n_vocab;
    if let Some(&bad) = prompt.iter().find(|&&t| t as usize >= n_vocab) {
        return Err(Error::invalid(format!(
            "prompt token id {bad} out of range (vocab {n_vocab})"
        )));
    }
    // Truncate a prompt that does not fit, keeping n_keep tokens and the most recent half of the rest.
    let mut prompt = prompt.to_vec();
    let mut truncated = false;
    if prompt.len() >= n_ctx {
        let n_keep = if params.n_keep < 0 {
            prompt.len()
        } else {
            params.n_keep as usize
        }
        .min(n_ctx.saturating_sub(4));
        let n_left = n_ctx - n_keep;
        let n_block = (n_left / 2).max(1);
        let erased = (prompt.len() - n_keep - n_block).div_ceil(n_block) * n_block;
        let mut kept = prompt[..n_keep].to_vec();
        kept.extend_from_slice(&prompt[(n_keep + erased).min(prompt.len())..]);
        if kept.len() >= n_ctx || kept.is_empty() {
            return Err(Error::ContextFull(format!(
                "the prompt ({} tokens) does not fit the context ({n_ctx})",
                prompt.len()
            )));
        }
        prompt = kept;
        truncated = true;
    }

    let mut sampler = Sampler::new(&params.sampling, vocab.clone())?;
    sampler.set_history(&prompt);

    // Reuse the common prefix; always evaluate at least the last prompt token to get logits.
    let t0 = Instant::now();
    let mut reuse = 0;
    if params.cache_prompt {
        reuse = seq
            .tokens
            .iter()
            .zip(&prompt)
            .take_while(|(a, b)| a == b)
            .count();
        reuse = reuse.min(prompt.len() - 1);
    }
    seq.tokens.truncate(reuse);
    let mut logits = eval(model, seq, &prompt[reuse..], reuse, params.n_batch, true)?;
    seq.tokens.extend_from_slice(&prompt[reuse..]);
    let prompt_ms = t0.elapsed().as_secs_f64() * 1e3;

    let t1 = Instant::now();
    let mut dec = Utf8Decoder::default();
    let mut stops = StopMatcher::new(&params.stop);
    let mut out_tokens = Vec::new();
    let n_probs = params.sampling.n_probs;
    let stop_reason;
    loop {
        if params.n_predict >= 0 && out_tokens.len() as i64 >= params.n_predict {
            stop_reason = StopReason::Limit;
            break;
        }
        if seq.tokens.len() >= n_ctx {
            stop_reason = StopReason::Limit;
            break;
        }
        let token = sampler.sample(&logits)?;
        let (logprob, top) = if params.post_sampling_probs {
            let probs = sampler.post_sampling_probs(n_probs.max(1));
            let lp = probs
                .iter()
                .find(|(t, _)| *t == token)
                .map(|(_, p)| p.ln())
                .unwrap_or(f32::NEG_INFINITY);
            (
                lp,
                probs
                    .into_iter()
                    .take(n_probs)
                    .map(|(t, p)| (t, p.ln()))
                    .collect(),
            )
        } else {
            let top = if n_probs > 0 {
                top_logprobs(&logits, n_probs)
            } else {
                Vec::new()
            };
            (token_logprob(&logits, token), top)
        };
        sampler.accept(token)?;
        out_tokens.push(token);
        if vocab.is_eog(token) && !params.sampling.ignore_eos {
            let text = stops.finish(&dec.finish());
            let keep_going = on_token(&TokenEvent {
                token,
                text,
                logprob,
                top,
            });
            stop_reason = if keep_going {
                StopReason::Eos
            } else {
                StopReason::Cancelled
            };
            break;
        }
        let piece = vocab.text_piece(token);
        let fresh = dec.push(piece);
        let (text, hit) = stops.push(&fresh);
        let keep_going = on_token(&TokenEvent {
            token,
            text,
            logprob,
            top,
        });
        if let Some(word) = hit {
            stop_reason = StopReason::Word(word);
            break;
        }
        if !keep_going {
            stop_reason = StopReason::Cancelled;
            break;
        }
        let limit_next = params.n_predict >= 0 && out_tokens.len() as i64 >= params.n_predict;
        if limit_next || seq.tokens.len() + 1 > n_ctx || sampler.grammar_done() {
            // The token is the last one: no need to evaluate it.
            stop_reason = if sampler.grammar_done() {
                StopReason::Eos
            } else {
                StopReason::Limit
            };
            break;
        }
        logits = eval(model, seq, &[token], seq.tokens.len(), 1, true)?;
        seq.tokens.push(token);
    }
    // Text still held back (a partial stop string that never completed) belongs to the content.
    if !matches!(stop_reason, StopReason::Word(_) | StopReason::Eos) {
        let tail = stops.finish(&dec.finish());
        if !tail.is_empty() {
            on_token(&TokenEvent {
                token: u32::MAX,
                text: tail,
                logprob: 0.0,
                top: Vec::new(),
            });
        }
    }
    Ok(Generation {
        content: stops.content().to_string(),
        tokens: out_tokens,
        stop: stop_reason,
        n_prompt: prompt.len(),
        n_prompt_evaluated: prompt.len() - reuse,
        prompt_ms,
        gen_ms: t1.elapsed().as_secs_f64() * 1e3,
        truncated,
        seed: sampler.seed(),
        n_cached: seq.tokens.len(),
    })
}

/// log-softmax of `logits` at `token`.
pub fn token_logprob(logits: &[f32], token: u32) -> f32 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = logits.iter().map(|&v| ((v - max) as f64).exp()).sum();
    logits[token as usize] - max - sum.ln() as f32
}

#[cfg(test)]
mod batch_tests {
    use super::prompt_batches;

    #[test]
    fn prompt_batches_cut_like_llama_server() {
        assert_eq!(prompt_batches(10, 512, false), vec![(0, 10)]);
        assert_eq!(
            prompt_batches(1100, 512, false),
            vec![(0, 512), (512, 1024), (1024, 1100)]
        );
        // Sliding-window models: the last 4 tokens alone, and 4 + n_batch from the end.
        assert_eq!(prompt_batches(10, 512, true), vec![(0, 6), (6, 10)]);
        assert_eq!(prompt_batches(4, 512, true), vec![(0, 4)]);
        assert_eq!(
            prompt_batches(1100, 512, true),
            vec![(0, 512), (512, 584), (584, 1096), (1096, 1100)]
        );
    }
}
