//! The engine: one scheduler thread owns the model's slots (each with a block table in one KV
//! pool shared by all of them) and runs
//! every request — generations, evaluations for logits and embeddings, slot files. Requests are
//! submitted from any thread; events come back through one queue that a single consumer drains
//! (`wait_events`), tagged with the request id. Nothing here touches Python.
//!
//! Each step of the scheduler is one forward pass over a batch that holds one token of every
//! generating slot and the next prompt chunk of every slot still reading its prompt (continuous
//! batching), so a new request starts at the next step and a long prompt never stalls the streams.

mod scheduler;
mod self_extend;
mod slot;
mod stop;
mod utf8;

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

pub use self_extend::SelfExtend;
pub use stop::StopMatcher;
pub use utf8::Utf8Decoder;

use crate::error::{Error, Result};
use crate::kv::{blocks_for, BLOCK};
use crate::model::Model;
use crate::sampling::{Sampler, SamplerVocab, SamplingParams};

/// How the engine runs: slots, their contexts, batch sizes.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Slots (`-np`).
    pub n_parallel: usize,
    /// Total context (`-c`), the size of the KV pool: each slot may reach `n_ctx / n_parallel`
    /// positions, or all of them with `kv_unified`, taking blocks from the pool as it grows.
    pub n_ctx: usize,
    pub kv_unified: bool,
    /// Tokens per forward pass (`-ub`): a step's decode tokens and prompt chunks together.
    pub n_ubatch: usize,
    /// Shift the context when a generation fills it (else it stops at the limit).
    pub context_shift: bool,
    /// `--slot-prompt-similarity`: an idle slot whose cached tokens share at least this share of
    /// a new prompt is preferred (0 disables the preference).
    pub slot_prompt_similarity: f32,
    /// Self-extend's group factor and width (`--grp-attn-n/-w`); a sequence then never shifts
    /// its context, as in llama.cpp.
    pub self_extend: Option<SelfExtend>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            n_parallel: 1,
            n_ctx: 4096,
            kv_unified: false,
            n_ubatch: 512,
            context_shift: true,
            slot_prompt_similarity: 0.5,
            self_extend: None,
        }
    }
}

impl EngineConfig {
    pub fn n_ctx_slot(&self) -> usize {
        if self.kv_unified {
            self.n_ctx
        } else {
            self.n_ctx / self.n_parallel.max(1)
        }
    }
}

#[derive(Clone, Debug)]
pub struct GenerateParams {
    /// Tokens to generate; negative: until the context is full or a stop condition.
    pub n_predict: i64,
    pub stop: Vec<String>,
    /// Reuse the longest common prefix already in the slot's cache.
    pub cache_prompt: bool,
    /// Tokens of the prompt to keep when the prompt is truncated or the context shifts (-1: all).
    pub n_keep: i64,
    pub sampling: SamplingParams,
    /// Report probabilities after the sampler chain instead of from the raw logits.
    pub post_sampling_probs: bool,
    /// The slot to run in (-1: any idle one).
    pub id_slot: i64,
}

impl Default for GenerateParams {
    fn default() -> Self {
        Self {
            n_predict: -1,
            stop: Vec::new(),
            cache_prompt: true,
            n_keep: 0,
            sampling: SamplingParams::default(),
            post_sampling_probs: false,
            id_slot: -1,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// An end-of-generation token (or a grammar that is complete).
    Eos,
    /// n_predict reached, or the context is full.
    Limit,
    /// A stop string, which is returned.
    Word(String),
    /// The consumer asked to stop (client gone), or the engine shut down.
    Cancelled,
}

/// One generated token.
#[derive(Clone, Debug)]
pub struct TokenEvent {
    /// `u32::MAX` for a final piece of held-back text that belongs to no token.
    pub token: u32,
    /// Text this token completes that is safe to show now (held back while it could still be
    /// the start of a stop string or an incomplete UTF-8 character).
    pub text: String,
    /// When n_probs > 0: the log-probability of the token, and the top-n (id, logprob); NaN and
    /// empty otherwise.
    pub logprob: f32,
    pub top: Vec<(u32, f32)>,
}

#[derive(Clone, Debug)]
pub struct Generation {
    pub tokens: Vec<u32>,
    pub content: String,
    pub stop: StopReason,
    pub id_slot: usize,
    pub n_prompt: usize,
    /// Prompt tokens actually evaluated (the rest came from the cache).
    pub n_prompt_evaluated: usize,
    pub prompt_ms: f64,
    pub gen_ms: f64,
    /// The prompt was cut to fit, or the context shifted.
    pub truncated: bool,
    pub seed: u32,
    /// Tokens in the slot's cache at the end.
    pub n_cached: usize,
}

/// What a request asks of the engine.
pub enum Job {
    Generate(Box<GenerateJob>),
    /// Logits of `tokens` evaluated from position 0 in a scratch cache: of the last position, or
    /// of every position from `logits_from` on.
    Logits {
        tokens: Vec<u32>,
        /// Size of the scratch cache (at least the tokens; RoPE factors can depend on it).
        n_ctx: usize,
        n_batch: usize,
        all: bool,
        logits_from: usize,
    },
    /// Final-normed hidden states of every token of each input (embeddings).
    Hidden {
        inputs: Vec<Vec<u32>>,
        n_batch: usize,
    },
    /// Decode `tokens` one at a time from position 0 (llama-bench's tg test).
    DecodeBench {
        tokens: Vec<u32>,
    },
    SlotSave {
        slot: usize,
        path: PathBuf,
    },
    SlotRestore {
        slot: usize,
        path: PathBuf,
    },
    SlotErase {
        slot: usize,
    },
}

pub struct GenerateJob {
    prompt: Vec<u32>,
    params: GenerateParams,
    sampler: Sampler,
    truncated: bool,
}

/// What a finished slot operation did.
#[derive(Clone, Debug)]
pub struct SlotOpResult {
    pub n_tokens: usize,
    pub n_bytes: usize,
    pub ms: f64,
}

pub enum Event {
    Token(TokenEvent),
    Done(Box<Generation>),
    Failed(Error),
    /// A Logits result (n × n_vocab) or a Hidden result (one array per input, n_tokens × n_embd).
    Floats(Vec<Vec<f32>>),
    SlotOp(SlotOpResult),
    /// The scheduler thread died (a bug): every request still open has failed.
    Dead(String),
}

impl Event {
    /// The last event of its request.
    pub fn is_final(&self) -> bool {
        !matches!(self, Event::Token(_))
    }
}

/// One slot as /slots shows it.
#[derive(Clone, Debug, Default)]
pub struct SlotState {
    pub id: usize,
    pub n_ctx: usize,
    /// The request running in it, if any.
    pub id_task: Option<u64>,
    pub n_past: usize,
    pub n_prompt: usize,
    pub n_decoded: usize,
    pub n_remain: i64,
}

/// Counters for /metrics and /slots, read without touching the scheduler's hot path.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    pub prompt_tokens_total: u64,
    pub prompt_ms_total: f64,
    pub predicted_tokens_total: u64,
    pub predicted_ms_total: f64,
    /// Forward passes, and slots busy summed over them.
    pub n_decode_total: u64,
    pub n_busy_slots_total: u64,
    pub kv_cache_tokens: u64,
    pub kv_cache_cells: u64,
    pub requests_processing: u64,
    pub requests_deferred: u64,
    /// Prompt tokens whose keys and values were taken by reference from cached blocks (another
    /// slot's, or an earlier request's) instead of evaluated.
    pub prefix_shared_tokens_total: u64,
    /// Blocks of the KV pool: referenced by some slot, and registered for sharing.
    pub kv_blocks_used: u64,
    pub kv_blocks_cached: u64,
    pub kv_blocks_total: u64,
    pub slots: Vec<SlotState>,
}

#[derive(Default)]
struct Inbox {
    jobs: VecDeque<(u64, Job)>,
    cancels: Vec<u64>,
    /// (request, paused): flow control from a consumer that has fallen behind.
    pauses: Vec<(u64, bool)>,
    shutdown: bool,
}

struct Shared {
    inbox: Mutex<Inbox>,
    wake: Condvar,
    outbox: Mutex<Vec<(u64, Event)>>,
    out_ready: Condvar,
    stats: Mutex<Stats>,
    next_id: AtomicU64,
    dead: AtomicBool,
}

/// Lock that survives a panicked holder (the data are counters and queues, valid at any point).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    fn emit(&self, events: Vec<(u64, Event)>) {
        if events.is_empty() {
            return;
        }
        lock(&self.outbox).extend(events);
        self.out_ready.notify_all();
    }
}

pub struct Engine {
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
    model: Arc<Model>,
    vocab: Arc<SamplerVocab>,
    cfg: EngineConfig,
}

impl Engine {
    /// Allocate the KV pool (so a context that does not fit fails here, not at the first
    /// request) and start the scheduler thread.
    /// `cfg.n_ctx` 0 means the model's training context, or the largest multiple of 256 whose
    /// cache fits in half the memory available when that does not.
    pub fn start(
        model: Arc<Model>,
        vocab: Arc<SamplerVocab>,
        mut cfg: EngineConfig,
    ) -> Result<Self> {
        if cfg.n_parallel == 0 {
            return Err(Error::invalid("n_parallel must be at least 1"));
        }
        let per_pos = model.cache_bytes_per_pos();
        let avail = crate::kv::available_memory();
        if cfg.n_ctx == 0 {
            let train = model.cfg.n_ctx_train.max(1);
            let fit = avail.map_or(usize::MAX, |a| (a / 2 / per_pos.max(1)) / 256 * 256);
            cfg.n_ctx = train.min(fit.max(256));
        }
        // The pool: `-c` cells in blocks. Without a unified cache every slot can always reach its
        // own context at once (its blocks rounded up), as llama.cpp's per-sequence split does.
        let n_blocks = if cfg.kv_unified {
            blocks_for(cfg.n_ctx)
        } else {
            blocks_for(cfg.n_ctx).max(cfg.n_parallel * blocks_for(cfg.n_ctx_slot()))
        };
        // Checked against the memory there is before anything is allocated: an allocation the
        // system grants but cannot back would be killed later, not refused now.
        let need = per_pos.saturating_mul(n_blocks * BLOCK);
        if let Some(a) = avail {
            if need > a {
                return Err(Error::load(format!(
                    "the KV cache for a context of {} positions needs {} MiB, but only {} MiB of memory is available: use a smaller context (-c / n_ctx) or a smaller cache type (-ctk/-ctv)",
                    cfg.n_ctx,
                    need >> 20,
                    a >> 20
                )));
            }
        }
        if vocab.n_vocab() != model.cfg.n_vocab {
            return Err(Error::invalid(format!(
                "vocabulary has {} tokens, the model {}",
                vocab.n_vocab(),
                model.cfg.n_vocab
            )));
        }
        let n_ctx_slot = cfg.n_ctx_slot();
        if n_ctx_slot < 4 {
            return Err(Error::invalid(format!(
                "context of {} positions for {} slots leaves {n_ctx_slot} per slot (at least 4 are needed)",
                cfg.n_ctx, cfg.n_parallel
            )));
        }
        if cfg.self_extend.is_some() && model.cfg.swa_layers.iter().any(|&s| s) {
            // Its windows are measured in positions, which self-extend regroups.
            return Err(Error::invalid(
                "self-extend (--grp-attn-n) does not work with a sliding-window attention model",
            ));
        }
        let pool = model.new_pool(n_blocks)?;
        let shared = Arc::new(Shared {
            inbox: Mutex::new(Inbox::default()),
            wake: Condvar::new(),
            outbox: Mutex::new(Vec::new()),
            out_ready: Condvar::new(),
            stats: Mutex::new(Stats::default()),
            next_id: AtomicU64::new(1),
            dead: AtomicBool::new(false),
        });
        let sched = scheduler::Scheduler::new(
            model.clone(),
            vocab.clone(),
            cfg.clone(),
            pool,
            shared.clone(),
        );
        let sh = shared.clone();
        let thread = std::thread::Builder::new()
            .name("rllama-engine".into())
            .spawn(move || {
                let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || sched.run()));
                if let Err(p) = r {
                    let msg = p
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_else(|| "unknown panic".into());
                    sh.dead.store(true, Ordering::SeqCst);
                    sh.emit(vec![(
                        0,
                        Event::Dead(format!("the engine thread failed: {msg}")),
                    )]);
                }
            })
            .map_err(|e| Error::load(format!("cannot start the engine thread: {e}")))?;
        Ok(Self {
            shared,
            thread: Mutex::new(Some(thread)),
            model,
            vocab,
            cfg,
        })
    }

    pub fn model(&self) -> &Arc<Model> {
        &self.model
    }

    pub fn config(&self) -> &EngineConfig {
        &self.cfg
    }

    pub fn n_ctx_slot(&self) -> usize {
        self.cfg.n_ctx_slot()
    }

    /// Check a generation request and queue it. Errors (bad tokens, a bad grammar, an unknown
    /// slot, a prompt that cannot fit) are returned here, before anything runs.
    pub fn submit_generate(&self, prompt: &[u32], params: GenerateParams) -> Result<u64> {
        let n_ctx = self.n_ctx_slot();
        if prompt.is_empty() {
            return Err(Error::invalid("the prompt is empty"));
        }
        let n_vocab = self.model.cfg.n_vocab;
        if let Some(&bad) = prompt.iter().find(|&&t| t as usize >= n_vocab) {
            return Err(Error::invalid(format!(
                "prompt token id {bad} out of range (vocab {n_vocab})"
            )));
        }
        if params.id_slot >= self.cfg.n_parallel as i64 || params.id_slot < -1 {
            return Err(Error::invalid(format!(
                "\"id_slot\" {} does not exist (the server has {} slots: 0 to {}, or -1 for any)",
                params.id_slot,
                self.cfg.n_parallel,
                self.cfg.n_parallel - 1
            )));
        }
        let (prompt, truncated) = truncate_prompt(prompt, params.n_keep, n_ctx)?;
        let mut sampler = Sampler::new(&params.sampling, self.vocab.clone())?;
        sampler.set_history(&prompt);
        let job = GenerateJob {
            prompt,
            params,
            sampler,
            truncated,
        };
        self.submit(Job::Generate(Box::new(job)))
    }

    /// Queue a job; its events carry the returned id.
    pub fn submit(&self, job: Job) -> Result<u64> {
        if self.shared.dead.load(Ordering::SeqCst) {
            return Err(Error::invalid("the engine has stopped"));
        }
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        let mut inbox = lock(&self.shared.inbox);
        if inbox.shutdown {
            return Err(Error::invalid("the engine is shutting down"));
        }
        inbox.jobs.push_back((id, job));
        drop(inbox);
        self.shared.wake.notify_all();
        Ok(id)
    }

    /// Stop request `id` at the next step (its final event is still sent).
    pub fn cancel(&self, id: u64) {
        lock(&self.shared.inbox).cancels.push(id);
        self.shared.wake.notify_all();
    }

    /// Hold request `id` after its current token (`paused`) or let it go on: a consumer whose
    /// buffer is full pauses only its own sequence; the others keep their steps.
    pub fn pause(&self, id: u64, paused: bool) {
        lock(&self.shared.inbox).pauses.push((id, paused));
        self.shared.wake.notify_all();
    }

    /// Every event since the last call, waiting up to `timeout` for the first.
    pub fn wait_events(&self, timeout: Duration) -> Vec<(u64, Event)> {
        let mut out = lock(&self.shared.outbox);
        if out.is_empty() {
            out = self
                .shared
                .out_ready
                .wait_timeout(out, timeout)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        std::mem::take(&mut *out)
    }

    pub fn stats(&self) -> Stats {
        lock(&self.shared.stats).clone()
    }

    /// Cancel everything, let the thread send the final events and join it.
    pub fn shutdown(&self) {
        lock(&self.shared.inbox).shutdown = true;
        self.shared.wake.notify_all();
        if let Some(t) = lock(&self.thread).take() {
            let _ = t.join();
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// A prompt that does not fit `n_ctx` keeps its first `n_keep` tokens and the most recent part
/// of the rest, erased in blocks of half the remaining context (llama.cpp's rule).
fn truncate_prompt(prompt: &[u32], n_keep: i64, n_ctx: usize) -> Result<(Vec<u32>, bool)> {
    if prompt.len() < n_ctx {
        return Ok((prompt.to_vec(), false));
    }
    let n_keep = if n_keep < 0 {
        prompt.len()
    } else {
        n_keep as usize
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
    Ok((kept, true))
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

/// log-softmax of `logits` at `token`.
pub fn token_logprob(logits: &[f32], token: u32) -> f32 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = logits.iter().map(|&v| ((v - max) as f64).exp()).sum();
    logits[token as usize] - max - sum.ln() as f32
}

#[cfg(test)]
mod batch_tests {
    use super::{prompt_batches, truncate_prompt};

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

    #[test]
    fn long_prompts_keep_n_keep_and_the_tail() {
        let p: Vec<u32> = (0..100).collect();
        assert_eq!(
            truncate_prompt(&p[..10], 0, 64).unwrap(),
            (p[..10].to_vec(), false)
        );
        let (t, cut) = truncate_prompt(&p, 4, 64).unwrap();
        assert!(cut && t.len() < 64);
        assert_eq!(&t[..4], &[0, 1, 2, 3]);
        assert_eq!(*t.last().unwrap(), 99);
    }
}
