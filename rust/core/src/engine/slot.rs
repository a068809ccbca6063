//! A slot: a KV cache, the tokens it holds, and the request running in it (its sampler, stop
//! matcher, UTF-8 decoder, prompt cursor and timings).

use std::collections::VecDeque;
use std::time::Instant;

use super::self_extend::Grouping;
use super::{token_logprob, StopMatcher};
use super::{Event, GenerateJob, Generation, StopReason, TokenEvent, Utf8Decoder};
use crate::kv::BlockTable;
use crate::sampling::{top_logprobs, SamplerVocab};

pub struct Slot {
    pub id: usize,
    /// The slot's blocks in the engine's KV pool (kept when a request ends, for the next one).
    pub table: BlockTable,
    /// Tokens whose keys and values are in `table`, by cell.
    pub tokens: Vec<u32>,
    /// The cells' RoPE positions once self-extend has regrouped them (None: each cell's
    /// position is its index).
    pub grouping: Option<Grouping>,
    /// Scheduler clock when the slot last finished a request (least recently used goes first).
    pub last_used: u64,
    pub active: Option<Active>,
}

impl Slot {
    /// Drop the slot's cache.
    pub fn forget(&mut self, pool: &mut crate::kv::KvPool) {
        self.tokens.clear();
        self.grouping = None;
        pool.clear(&mut self.table);
    }

    /// The RoPE position of the next token.
    pub fn next_pos(&self) -> usize {
        self.grouping.as_ref().map_or(self.tokens.len(), |g| g.next)
    }
}

pub struct Active {
    pub id: u64,
    pub job: GenerateJob,
    /// Prompt ranges [start, end) still to evaluate, in order.
    pub pending: VecDeque<(usize, usize)>,
    /// The sampled token to evaluate next (generation phase).
    pub next: Option<u32>,
    pub out_tokens: Vec<u32>,
    pub n_prompt_evaluated: usize,
    pub dec: Utf8Decoder,
    pub stops: StopMatcher,
    pub t_start: Instant,
    pub t_first: Option<Instant>,
}

/// What happened to a slot after its logits were sampled.
pub enum Outcome {
    Continue,
    Finished(StopReason),
}

impl Active {
    pub fn new(id: u64, job: GenerateJob, pending: VecDeque<(usize, usize)>, reuse: usize) -> Self {
        let stops = StopMatcher::new(&job.params.stop);
        let n_prompt_evaluated = job.prompt.len() - reuse;
        Self {
            id,
            job,
            pending,
            next: None,
            out_tokens: Vec::new(),
            n_prompt_evaluated,
            dec: Utf8Decoder::default(),
            stops,
            t_start: Instant::now(),
            t_first: None,
        }
    }

    pub fn prompt(&self) -> &[u32] {
        &self.job.prompt
    }

    pub fn limit_reached(&self) -> bool {
        let n = self.job.params.n_predict;
        n >= 0 && self.out_tokens.len() as i64 >= n
    }

    /// Sample from `logits` and emit the token; `n_cached` is the slot's cache fill and
    /// `n_ctx` its size (a full cache ends the generation unless the context can shift).
    pub fn on_logits(
        &mut self,
        logits: &[f32],
        vocab: &SamplerVocab,
        n_cached: usize,
        n_ctx: usize,
        context_shift: bool,
        events: &mut Vec<(u64, Event)>,
    ) -> Outcome {
        if self.t_first.is_none() {
            self.t_first = Some(Instant::now());
        }
        if self.limit_reached() {
            return Outcome::Finished(StopReason::Limit);
        }
        let p = &self.job.params;
        let n_probs = p.sampling.n_probs;
        let sampler = &mut self.job.sampler;
        let token = match sampler.sample(logits) {
            Ok(t) => t,
            Err(e) => {
                events.push((self.id, Event::Failed(e)));
                return Outcome::Finished(StopReason::Cancelled);
            }
        };
        let (logprob, top) = if p.post_sampling_probs {
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
        } else if n_probs > 0 {
            (token_logprob(logits, token), top_logprobs(logits, n_probs))
        } else {
            // Nobody asked: a softmax over the whole vocabulary per token is not free (about
            // half a millisecond on a 49k vocabulary, on the scheduler's serial path).
            (f32::NAN, Vec::new())
        };
        if let Err(e) = sampler.accept(token) {
            events.push((self.id, Event::Failed(e)));
            return Outcome::Finished(StopReason::Cancelled);
        }
        self.out_tokens.push(token);
        let ignore_eos = p.sampling.ignore_eos;
        let eos = vocab.is_eog(token) && !ignore_eos;
        let (text, hit) = if eos {
            (self.stops.finish(&self.dec.finish()), None)
        } else {
            let fresh = self.dec.push(vocab.text_piece(token));
            self.stops.push(&fresh)
        };
        events.push((
            self.id,
            Event::Token(TokenEvent {
                token,
                text,
                logprob,
                top,
            }),
        ));
        if eos {
            return Outcome::Finished(StopReason::Eos);
        }
        if let Some(word) = hit {
            return Outcome::Finished(StopReason::Word(word));
        }
        if self.job.sampler.grammar_done() {
            return Outcome::Finished(StopReason::Eos);
        }
        // The token is the last one: no need to evaluate it.
        if self.limit_reached() || (n_cached + 1 > n_ctx && !context_shift) {
            return Outcome::Finished(StopReason::Limit);
        }
        self.next = Some(token);
        Outcome::Continue
    }

    /// The final events: held-back text (a partial stop string that never completed belongs to
    /// the content) and the summary.
    pub fn finish(
        mut self,
        stop: StopReason,
        id_slot: usize,
        n_cached: usize,
        events: &mut Vec<(u64, Event)>,
    ) -> (f64, f64, usize) {
        if !matches!(stop, StopReason::Word(_) | StopReason::Eos) {
            let tail = self.stops.finish(&self.dec.finish());
            if !tail.is_empty() {
                events.push((
                    self.id,
                    Event::Token(TokenEvent {
                        token: u32::MAX,
                        text: tail,
                        logprob: 0.0,
                        top: Vec::new(),
                    }),
                ));
            }
        }
        let now = Instant::now();
        let first = self.t_first.unwrap_or(now);
        let prompt_ms = (first - self.t_start).as_secs_f64() * 1e3;
        let gen_ms = (now - first).as_secs_f64() * 1e3;
        let n_gen = self.out_tokens.len();
        events.push((
            self.id,
            Event::Done(Box::new(Generation {
                content: self.stops.content().to_string(),
                tokens: self.out_tokens,
                stop,
                id_slot,
                n_prompt: self.job.prompt.len(),
                n_prompt_evaluated: self.n_prompt_evaluated,
                prompt_ms,
                gen_ms,
                truncated: self.job.truncated,
                seed: self.job.sampler.seed(),
                n_cached,
            })),
        ));
        (prompt_ms, gen_ms, n_gen)
    }
}
