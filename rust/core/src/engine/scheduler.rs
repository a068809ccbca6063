//! The scheduler thread: takes jobs and cancellations from the inbox, places generations in
//! slots, and runs steps — one forward pass over one token of every generating slot plus the
//! next prompt chunk of every slot still reading its prompt — until there is nothing to do.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use super::self_extend::Grouping;
use super::slot::{Active, Outcome, Slot};
use super::{
    lock, prompt_batches, EngineConfig, Event, GenerateJob, Job, Shared, SlotOpResult, SlotState,
    StopReason,
};
use crate::error::{Error, Result};
use crate::kv::{blocks_for, slot_file, BlockTable, KvPool, BLOCK};
use crate::model::{BatchToken, Model};
use crate::sampling::SamplerVocab;

pub struct Scheduler {
    model: Arc<Model>,
    vocab: Arc<SamplerVocab>,
    cfg: EngineConfig,
    slots: Vec<Slot>,
    /// Every slot's keys and values.
    pool: KvPool,
    /// The queue's head waits for KV blocks: nothing new is placed until some are released.
    waiting_for_blocks: bool,
    /// Generations waiting for a slot, in arrival order.
    queue: VecDeque<(u64, Box<GenerateJob>)>,
    shared: Arc<Shared>,
    swa: bool,
    clock: u64,
    /// Rotates which slot's prompt goes first when chunks compete for a step's budget.
    rr: usize,
    /// Requests whose consumer asked to hold them: they take no decode step until resumed.
    paused: HashSet<u64>,
}

/// One entry of a step's batch: which slot, and how many of its tokens.
struct Part {
    slot: usize,
    /// Prompt range evaluated (prefill), or None for the one decode token.
    prompt: Option<(usize, usize)>,
    wants_logits: bool,
}

/// Length of the common prefix of two token lists.
fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// Pick the slot for `prompt` among the idle ones (`pinned` forces one): the one whose cached
/// tokens share the longest prefix, when it covers at least `similarity` of the prompt, else the
/// least recently used. `None`: wait.
pub fn choose_slot(
    idle: &[(usize, &[u32], u64)],
    prompt: &[u32],
    pinned: Option<usize>,
    similarity: f32,
) -> Option<usize> {
    if let Some(p) = pinned {
        return idle
            .iter()
            .find(|(id, _, _)| *id == p)
            .map(|(id, _, _)| *id);
    }
    let best = idle
        .iter()
        .map(|(id, toks, _)| (*id, common_prefix(toks, prompt)))
        .max_by_key(|&(id, n)| (n, std::cmp::Reverse(id)));
    if let Some((id, n)) = best {
        if similarity > 0.0 && n > 0 && n as f32 >= similarity * prompt.len() as f32 {
            return Some(id);
        }
    }
    idle.iter()
        .min_by_key(|(id, _, used)| (*used, *id))
        .map(|(id, _, _)| *id)
}

impl Scheduler {
    pub fn new(
        model: Arc<Model>,
        vocab: Arc<SamplerVocab>,
        cfg: EngineConfig,
        pool: KvPool,
        shared: Arc<Shared>,
    ) -> Self {
        let swa = model.cfg.swa_layers.iter().any(|&s| s);
        let slots = (0..cfg.n_parallel)
            .map(|id| Slot {
                id,
                table: BlockTable::new(cfg.n_ctx_slot()),
                tokens: Vec::new(),
                grouping: None,
                last_used: 0,
                active: None,
            })
            .collect();
        let s = Self {
            model,
            vocab,
            cfg,
            slots,
            pool,
            waiting_for_blocks: false,
            queue: VecDeque::new(),
            shared,
            swa,
            clock: 0,
            rr: 0,
            paused: HashSet::new(),
        };
        s.publish();
        s
    }

    pub fn run(mut self) {
        loop {
            let (jobs, cancels, pauses, shutdown) = {
                let mut inbox = lock(&self.shared.inbox);
                while inbox.jobs.is_empty()
                    && inbox.cancels.is_empty()
                    && inbox.pauses.is_empty()
                    && !inbox.shutdown
                    && !self.has_work()
                {
                    inbox = self
                        .shared
                        .wake
                        .wait(inbox)
                        .unwrap_or_else(|p| p.into_inner());
                }
                (
                    std::mem::take(&mut inbox.jobs),
                    std::mem::take(&mut inbox.cancels),
                    std::mem::take(&mut inbox.pauses),
                    inbox.shutdown,
                )
            };
            let mut events = Vec::new();
            for (id, job) in jobs {
                self.take_job(id, job, &mut events);
            }
            for (id, paused) in pauses {
                let open = self.queue.iter().any(|(q, _)| *q == id)
                    || self
                        .slots
                        .iter()
                        .any(|s| s.active.as_ref().is_some_and(|a| a.id == id));
                if paused && open {
                    self.paused.insert(id);
                } else {
                    self.paused.remove(&id);
                }
            }
            for id in cancels {
                self.cancel(id, &mut events);
            }
            if shutdown {
                let ids: Vec<u64> = self
                    .queue
                    .iter()
                    .map(|(id, _)| *id)
                    .chain(
                        self.slots
                            .iter()
                            .filter_map(|s| s.active.as_ref().map(|a| a.id)),
                    )
                    .collect();
                for id in ids {
                    self.cancel(id, &mut events);
                }
                self.publish();
                self.shared.emit(events);
                return;
            }
            self.assign(&mut events);
            if self.busy() {
                self.step(&mut events);
            }
            // Counters first, so a caller that has its final event sees them up to date.
            self.publish();
            self.shared.emit(events);
        }
    }

    /// Something to run now: a slot generating, or a queued request an idle slot can take.
    fn has_work(&self) -> bool {
        self.busy()
            || !self.waiting_for_blocks
                && self.queue.iter().any(|(_, j)| {
                    let idle = |s: &Slot| s.active.is_none();
                    match j.params.id_slot {
                        -1 => self.slots.iter().any(idle),
                        k => self.slots.get(k as usize).is_some_and(idle),
                    }
                })
    }

    /// A slot that can run a step: reading its prompt, or generating and not paused.
    fn busy(&self) -> bool {
        self.slots.iter().any(|s| {
            s.active
                .as_ref()
                .is_some_and(|a| a.next.is_none() || !self.paused.contains(&a.id))
        })
    }

    fn held(&self, s: &Slot) -> bool {
        s.active
            .as_ref()
            .is_some_and(|a| a.next.is_some() && self.paused.contains(&a.id))
    }

    fn take_job(&mut self, id: u64, job: Job, events: &mut Vec<(u64, Event)>) {
        let model = self.model.clone();
        let result = match job {
            Job::Generate(g) => {
                self.queue.push_back((id, g));
                return;
            }
            Job::Logits {
                tokens,
                n_ctx,
                n_batch,
                all,
                logits_from,
            } => logits(&model, &tokens, n_ctx, n_batch, all, logits_from)
                .map(|v| Event::Floats(vec![v])),
            Job::Hidden { inputs, n_batch } => inputs
                .iter()
                .map(|t| hidden(&model, t, n_batch))
                .collect::<Result<Vec<_>>>()
                .map(Event::Floats),
            Job::DecodeBench { tokens } => {
                decode_bench(&model, &tokens).map(|_| Event::Floats(Vec::new()))
            }
            Job::SlotSave { slot, path } => self.idle_slot(slot).and_then(|i| {
                let t0 = Instant::now();
                let s = &self.slots[i];
                if s.grouping.is_some() {
                    return Err(Error::invalid(format!(
                        "slot {i}'s cache has self-extended positions, which a slot file cannot hold"
                    )));
                }
                let n =
                    slot_file::save(&path, model.fingerprint(), &self.pool, &s.table, &s.tokens)?;
                Ok(Event::SlotOp(SlotOpResult {
                    n_tokens: s.tokens.len(),
                    n_bytes: n,
                    ms: ms(t0),
                }))
            }),
            Job::SlotRestore { slot, path } => self.idle_slot(slot).and_then(|i| {
                let t0 = Instant::now();
                let fp = model.fingerprint();
                let s = &mut self.slots[i];
                let mut r = slot_file::restore(&path, fp, &mut self.pool, &mut s.table);
                if matches!(r, Err(Error::ContextFull(_))) {
                    // Blocks held by the other idle slots' caches can be had.
                    while self.reclaim_idle(i) {}
                    let s = &mut self.slots[i];
                    r = slot_file::restore(&path, fp, &mut self.pool, &mut s.table);
                }
                let (tokens, n) = r?;
                let s = &mut self.slots[i];
                s.grouping = None;
                s.tokens = tokens;
                Ok(Event::SlotOp(SlotOpResult {
                    n_tokens: s.tokens.len(),
                    n_bytes: n,
                    ms: ms(t0),
                }))
            }),
            Job::SlotErase { slot } => self.idle_slot(slot).map(|i| {
                let s = &mut self.slots[i];
                let n = s.tokens.len();
                s.forget(&mut self.pool);
                self.waiting_for_blocks = false;
                Event::SlotOp(SlotOpResult {
                    n_tokens: n,
                    n_bytes: 0,
                    ms: 0.0,
                })
            }),
        };
        events.push((id, result.unwrap_or_else(Event::Failed)));
    }

    fn idle_slot(&self, slot: usize) -> Result<usize> {
        let n = self.slots.len();
        let s = self.slots.get(slot).ok_or_else(|| {
            Error::invalid(format!("slot {slot} does not exist (0 to {})", n - 1))
        })?;
        if s.active.is_some() {
            return Err(Error::invalid(format!("slot {slot} is busy")));
        }
        Ok(slot)
    }

    /// Drop the cache of the least recently used idle slot other than `except` that holds
    /// blocks (its full blocks stay cached for sharing until evicted). False: none left.
    fn reclaim_idle(&mut self, except: usize) -> bool {
        let Some(i) = self
            .slots
            .iter()
            .filter(|s| s.id != except && s.active.is_none() && !s.table.blocks().is_empty())
            .min_by_key(|s| (s.last_used, s.id))
            .map(|s| s.id)
        else {
            return false;
        };
        self.slots[i].forget(&mut self.pool);
        true
    }

    /// Give slot `si` blocks for positions [0, n), taking the caches of idle slots when the
    /// pool runs short. False when even that is not enough (it keeps what it got).
    fn grow(&mut self, si: usize, n: usize) -> bool {
        loop {
            if self.pool.grow(&mut self.slots[si].table, n) {
                return true;
            }
            if !self.reclaim_idle(si) {
                return false;
            }
        }
    }

    /// Make the block of slot `si` that holds `pos` its own to write (see
    /// `KvPool::make_writable`), reclaiming idle slots' caches for the copy if need be.
    fn writable(&mut self, si: usize, pos: usize) -> bool {
        loop {
            if self
                .pool
                .make_writable(&mut self.slots[si].table, pos / BLOCK)
            {
                return true;
            }
            if !self.reclaim_idle(si) {
                return false;
            }
        }
    }

    fn cancel(&mut self, id: u64, events: &mut Vec<(u64, Event)>) {
        self.paused.remove(&id);
        // The queue's head may change, or blocks come back.
        self.waiting_for_blocks = false;
        if let Some(i) = self.queue.iter().position(|(q, _)| *q == id) {
            let (_, job) = self.queue.remove(i).expect("index from position");
            let a = Active::new(id, *job, VecDeque::new(), 0);
            a.finish(StopReason::Cancelled, 0, 0, events);
            return;
        }
        if let Some(si) = self
            .slots
            .iter()
            .position(|s| s.active.as_ref().is_some_and(|a| a.id == id))
        {
            self.finish(si, StopReason::Cancelled, events);
        }
    }

    /// Place queued generations in idle slots, first come first served (one pinned to a busy
    /// slot waits without holding up the others; one the KV pool has no blocks for yet holds
    /// up the ones behind it until blocks are released).
    fn assign(&mut self, events: &mut Vec<(u64, Event)>) {
        if self.waiting_for_blocks {
            return;
        }
        let mut i = 0;
        while i < self.queue.len() {
            let idle: Vec<(usize, &[u32], u64)> = self
                .slots
                .iter()
                .filter(|s| s.active.is_none())
                .map(|s| (s.id, s.tokens.as_slice(), s.last_used))
                .collect();
            if idle.is_empty() {
                break;
            }
            let (_, job) = &self.queue[i];
            let pinned = (job.params.id_slot >= 0).then_some(job.params.id_slot as usize);
            let Some(si) = choose_slot(&idle, &job.prompt, pinned, self.cfg.slot_prompt_similarity)
            else {
                i += 1;
                continue;
            };
            let n = job.prompt.len();
            if blocks_for(n + 1) > self.pool.n_blocks() {
                let (id, job) = self.queue.remove(i).expect("index in range");
                let e = Error::ContextFull(format!(
                    "the prompt ({n} tokens) needs {} KV blocks of {BLOCK} cells and the pool has {} in all (-c {}): use a larger context",
                    blocks_for(n + 1),
                    self.pool.n_blocks(),
                    self.cfg.n_ctx
                ));
                drop(job);
                events.push((id, Event::Failed(e)));
                continue;
            }
            let reuse = if job.params.cache_prompt {
                let prompt = job.prompt.clone();
                self.reuse_prefix(si, &prompt)
            } else {
                self.slots[si].forget(&mut self.pool);
                0
            };
            // Blocks for the whole prompt now, so a prompt never stalls half way; the block
            // the first new token goes to must be this slot's own.
            if !self.writable(si, reuse) || !self.grow(si, n) {
                let s = &mut self.slots[si];
                self.pool.truncate(&mut s.table, reuse);
                self.waiting_for_blocks = true;
                break;
            }
            let (id, job) = self.queue.remove(i).expect("index in range");
            let slot = &mut self.slots[si];
            let pending = prompt_batches(n - reuse, self.cfg.n_ubatch, self.swa)
                .into_iter()
                .map(|(s, e)| (s + reuse, e + reuse))
                .collect();
            slot.active = Some(Active::new(id, *job, pending, reuse));
        }
    }

    /// Cached prompt tokens slot `si` can start from (its table and tokens cut to them): its
    /// own common prefix with `prompt`, or a longer chain of cached full blocks (evaluated by
    /// any slot, busy or idle, or by an earlier request), which it takes references to — no
    /// rows are copied. At most all but the last token (its logits are needed).
    fn reuse_prefix(&mut self, si: usize, prompt: &[u32]) -> usize {
        let limit = prompt.len() - 1;
        if self.slots[si].grouping.is_some() {
            // Regrouped cells are not what evaluating a prefix of them gives.
            self.slots[si].forget(&mut self.pool);
        }
        let own = common_prefix(&self.slots[si].tokens, prompt).min(limit);
        let m = self.pool.cached_prefix(prompt, limit);
        if let Some(k) = self.share_from_slot(si, prompt, own.max(m * BLOCK)) {
            return k;
        }
        let s = &mut self.slots[si];
        if m * BLOCK > own {
            let k = self.pool.share_prefix(&mut s.table, prompt, m);
            s.grouping = None;
            s.tokens.clear();
            s.tokens.extend_from_slice(&prompt[..k]);
            lock(&self.shared.stats).prefix_shared_tokens_total += k as u64;
            return k;
        }
        s.tokens.truncate(own);
        self.pool.truncate(&mut s.table, own);
        own
    }

    /// Take references to the blocks of the other slot that holds the longest prefix of
    /// `prompt`, when it is longer than `than` (its last block maybe partial, copied when slot
    /// `si` first writes into it). Returns the tokens shared.
    fn share_from_slot(&mut self, si: usize, prompt: &[u32], than: usize) -> Option<usize> {
        let limit = prompt.len() - 1;
        let (j, k) = (0..self.slots.len())
            .filter(|&j| j != si && self.slots[j].grouping.is_none())
            .map(|j| {
                let o = &self.slots[j];
                let k = common_prefix(&o.tokens, prompt)
                    .min(limit)
                    .min(o.table.capacity());
                (j, k)
            })
            .max_by_key(|&(j, k)| (k, std::cmp::Reverse(j)))
            .filter(|&(_, k)| k > than)?;
        let src = std::mem::take(&mut self.slots[j].table);
        let s = &mut self.slots[si];
        self.pool.share_from(&mut s.table, &src, k);
        self.slots[j].table = src;
        let s = &mut self.slots[si];
        s.grouping = None;
        s.tokens.clear();
        s.tokens.extend_from_slice(&prompt[..k]);
        lock(&self.shared.stats).prefix_shared_tokens_total += k as u64;
        Some(k)
    }

    /// For slot `si` still reading its prompt: start from a longer chain of cached blocks
    /// another slot has evaluated meanwhile (shared), and say whether it should wait this step because a slot further ahead is
    /// evaluating at least `SHARE_MIN` more tokens of the same prefix. The slot furthest ahead
    /// (ties: the lowest id) never waits, so every prompt progresses.
    fn catch_up(&mut self, si: usize) -> bool {
        const SHARE_MIN: usize = 32;
        let Some(a) = self.slots[si].active.as_ref() else {
            return false;
        };
        if a.pending.is_empty() || !a.job.params.cache_prompt {
            return false;
        }
        let prompt = a.job.prompt.clone();
        let n = prompt.len();
        let c = self.slots[si].tokens.len();
        let m = self.pool.cached_prefix(&prompt, n - 1);
        let shared = match self.share_from_slot(si, &prompt, c.max(m * BLOCK)) {
            Some(k) => Some(k),
            None if m * BLOCK > c => {
                let s = &mut self.slots[si];
                let k = self.pool.share_prefix(&mut s.table, &prompt, m);
                s.grouping = None;
                s.tokens.clear();
                s.tokens.extend_from_slice(&prompt[..k]);
                lock(&self.shared.stats).prefix_shared_tokens_total += k as u64;
                Some(k)
            }
            None => None,
        };
        if let Some(k) = shared {
            // Blocks for the rest of the prompt again (fewer than it gave back); a shortfall
            // is met at the step that needs them.
            self.grow(si, n);
            let s = &mut self.slots[si];
            let a = s.active.as_mut().expect("checked above");
            a.pending = prompt_batches(n - k, self.cfg.n_ubatch, self.swa)
                .into_iter()
                .map(|(from, to)| (from + k, to + k))
                .collect();
            a.n_prompt_evaluated = a.n_prompt_evaluated.saturating_sub(k - c);
        }
        let c = self.slots[si].tokens.len();
        let me = (c, std::cmp::Reverse(si));
        self.slots.iter().enumerate().any(|(j, o)| {
            j != si
                && o.active.as_ref().is_some_and(|b| {
                    !b.pending.is_empty()
                        && b.job.params.cache_prompt
                        && common_prefix(&b.job.prompt, &prompt) >= c + SHARE_MIN
                        && (o.tokens.len(), std::cmp::Reverse(j)) > me
                })
        })
    }

    /// One forward pass over every active slot's next tokens, then sampling.
    fn step(&mut self, events: &mut Vec<(u64, Event)>) {
        let n_ctx = self.cfg.n_ctx_slot();
        let budget = self.cfg.n_ubatch.max(1);
        // Generating slots whose cache is full shift their context first (or stop).
        for si in 0..self.slots.len() {
            let full = {
                let s = &self.slots[si];
                s.active.as_ref().is_some_and(|a| a.next.is_some())
                    && !self.held(s)
                    && s.tokens.len() + 1 > n_ctx
            };
            if full && !self.shift(si) {
                self.finish(si, StopReason::Limit, events);
            }
        }
        // Prompts that share a prefix with another slot's: take what that slot has evaluated,
        // and wait while a slot ahead of them is still evaluating the shared part (so a prefix
        // that many requests bring at once is computed once).
        let waiting: Vec<bool> = (0..self.slots.len()).map(|si| self.catch_up(si)).collect();
        let mut batch: Vec<BatchToken> = Vec::new();
        let mut parts: Vec<Part> = Vec::new();
        // Slots the pool had no block for this step.
        let mut stalled: Vec<usize> = Vec::new();
        for si in 0..self.slots.len() {
            let s = &self.slots[si];
            if self.held(s) {
                continue;
            }
            let Some(t) = s.active.as_ref().and_then(|a| a.next) else {
                continue;
            };
            let pos = s.tokens.len();
            if !self.grow(si, pos + 1) || !self.writable(si, pos) || !self.regroup(si) {
                stalled.push(si);
                continue;
            }
            let s = &self.slots[si];
            {
                batch.push(BatchToken {
                    token: t,
                    pos: s.tokens.len(),
                    rope_pos: s.next_pos(),
                    seq: si,
                    logits: true,
                });
                parts.push(Part {
                    slot: si,
                    prompt: None,
                    wants_logits: true,
                });
            }
        }
        let n_slots = self.slots.len();
        for k in 0..n_slots {
            let si = (self.rr + k) % n_slots;
            let left = budget.saturating_sub(batch.len());
            if left == 0 {
                break;
            }
            if waiting[si] {
                continue;
            }
            let Some(a) = self.slots[si].active.as_mut() else {
                continue;
            };
            let Some(&(s, e)) = a.pending.front() else {
                continue;
            };
            // Blocks were given at admission; after a prefix was shared they may be short.
            let cap = {
                let table = &mut self.slots[si].table;
                self.pool.grow(table, e);
                if !self.pool.make_writable(table, s / BLOCK) {
                    stalled.push(si);
                    continue;
                }
                table.capacity()
            };
            if !self.regroup(si) {
                stalled.push(si);
                continue;
            }
            let rope0 = self.slots[si].next_pos() as isize - s as isize;
            let Some(a) = self.slots[si].active.as_mut() else {
                continue;
            };
            let take = (e - s).min(left).min(cap.saturating_sub(s));
            if take == 0 {
                stalled.push(si);
                continue;
            }
            if take < e - s {
                a.pending[0] = (s + take, e);
            } else {
                a.pending.pop_front();
            }
            let n = a.prompt().len();
            let last = s + take == n;
            for pos in s..s + take {
                batch.push(BatchToken {
                    token: a.prompt()[pos],
                    pos,
                    rope_pos: (pos as isize + rope0) as usize,
                    seq: si,
                    logits: last && pos + 1 == n,
                });
            }
            parts.push(Part {
                slot: si,
                prompt: Some((s, s + take)),
                wants_logits: last,
            });
        }
        self.rr = (self.rr + 1) % n_slots.max(1);
        if batch.is_empty() {
            // Every runnable slot waits for a block that no one will release: the longest
            // stalled sequence has reached what the pool can give it, and shifts its context
            // (or stops) as at the end of its context.
            // A prompt still being read cannot shift: it fails with a clear error instead.
            if let Some(&si) = stalled
                .iter()
                .max_by_key(|&&si| self.slots[si].tokens.len())
            {
                let reading = self.slots[si]
                    .active
                    .as_ref()
                    .is_some_and(|a| a.next.is_none());
                if reading {
                    if let Some(a) = self.slots[si].active.take() {
                        let e = Error::ContextFull(format!(
                            "no KV block left for the prompt ({} of {} blocks in use): use a larger context (-c)",
                            self.pool.n_used(),
                            self.pool.n_blocks()
                        ));
                        self.paused.remove(&a.id);
                        events.push((a.id, Event::Failed(e)));
                        self.slots[si].forget(&mut self.pool);
                        self.waiting_for_blocks = false;
                    }
                } else if !self.shift(si) {
                    self.finish(si, StopReason::Limit, events);
                }
            }
            return;
        }
        let out = {
            let tables: Vec<&BlockTable> = self.slots.iter().map(|s| &s.table).collect();
            self.model.forward(&batch, &mut self.pool, &tables, false)
        };
        {
            let mut st = lock(&self.shared.stats);
            st.n_decode_total += 1;
            st.n_busy_slots_total +=
                self.slots.iter().filter(|s| s.active.is_some()).count() as u64;
        }
        let out = match out {
            Ok(o) => o,
            Err(e) => {
                // The caches of the batch's slots are in an unknown state: forget them.
                for p in &parts {
                    let s = &mut self.slots[p.slot];
                    s.forget(&mut self.pool);
                    if let Some(a) = s.active.take() {
                        events.push((a.id, Event::Failed(e.duplicate())));
                    }
                }
                return;
            }
        };
        // The batch's tokens are in the caches now.
        for p in &parts {
            let s = &mut self.slots[p.slot];
            let Some(a) = s.active.as_mut() else { continue };
            let n0 = s.tokens.len();
            match p.prompt {
                Some((from, to)) => s.tokens.extend_from_slice(&a.prompt()[from..to]),
                None => s
                    .tokens
                    .push(a.next.take().expect("decode part has a token")),
            }
            match &mut s.grouping {
                Some(g) => g.push(s.tokens.len() - n0),
                // Blocks the batch filled can be shared from now on.
                None => self.pool.register(&mut s.table, &s.tokens),
            }
        }
        let n_vocab = self.model.cfg.n_vocab;
        for (p, logits) in parts
            .iter()
            .filter(|p| p.wants_logits)
            .zip(out.logits.chunks_exact(n_vocab))
        {
            let s = &mut self.slots[p.slot];
            let n_cached = s.tokens.len();
            let Some(a) = s.active.as_mut() else { continue };
            let id = a.id;
            let outcome = a.on_logits(
                logits,
                &self.vocab,
                n_cached,
                n_ctx,
                self.cfg.context_shift && self.cfg.self_extend.is_none(),
                events,
            );
            if let Outcome::Finished(stop) = outcome {
                let failed = events
                    .last()
                    .is_some_and(|(i, e)| *i == id && matches!(e, Event::Failed(_)));
                if failed {
                    s.active = None;
                } else {
                    self.finish(p.slot, stop, events);
                }
            }
        }
    }

    /// Self-extend: regroup slot `si`'s positions if its next one is past the current window,
    /// re-rotating the keys that move. False when the pool has no block for a copy the
    /// rotation needs (nothing changed: it waits for one like a slot that cannot grow).
    fn regroup(&mut self, si: usize) -> bool {
        let Some(se) = self.cfg.self_extend else {
            return true;
        };
        let s = &self.slots[si];
        // Most steps have nothing to regroup: decide that before copying any positions.
        let done = s.grouping.as_ref().map_or(0, |g| g.done);
        if s.next_pos() < done + se.w {
            return true;
        }
        let mut g = s
            .grouping
            .clone()
            .unwrap_or_else(|| Grouping::new(s.tokens.len()));
        let (from, deltas) = g.regroup(se);
        for b in from / BLOCK..(from + deltas.len()).div_ceil(BLOCK) {
            if !self.writable(si, b * BLOCK) {
                return false;
            }
        }
        let s = &mut self.slots[si];
        if !self
            .model
            .rotate_keys(&mut self.pool, &mut s.table, from, &deltas)
        {
            return false;
        }
        s.grouping = Some(g);
        true
    }

    /// Context shift of slot `si`: keep n_keep tokens, drop half of the rest. False when it
    /// cannot (disabled, or nothing left to drop).
    fn shift(&mut self, si: usize) -> bool {
        if !self.cfg.context_shift || self.cfg.self_extend.is_some() {
            return false;
        }
        let s = &mut self.slots[si];
        let Some(a) = s.active.as_mut() else {
            return false;
        };
        let n_past = s.tokens.len();
        let n_keep = match a.job.params.n_keep {
            k if k < 0 => a.job.prompt.len(),
            k => k as usize,
        }
        .min(n_past.saturating_sub(2));
        let n_discard = (n_past - n_keep) / 2;
        if n_discard == 0
            || !self
                .model
                .shift_cache(&mut self.pool, &mut s.table, n_keep, n_discard, n_past)
        {
            return false;
        }
        s.tokens.drain(n_keep..n_keep + n_discard);
        a.job.truncated = true;
        true
    }

    fn finish(&mut self, si: usize, stop: StopReason, events: &mut Vec<(u64, Event)>) {
        self.clock += 1;
        let s = &mut self.slots[si];
        let Some(a) = s.active.take() else { return };
        self.paused.remove(&a.id);
        let n_eval = a.n_prompt_evaluated as u64;
        let (prompt_ms, gen_ms, n_gen) = a.finish(stop, si, s.tokens.len(), events);
        s.last_used = self.clock;
        self.waiting_for_blocks = false;
        let mut st = lock(&self.shared.stats);
        st.prompt_tokens_total += n_eval;
        st.prompt_ms_total += prompt_ms;
        st.predicted_tokens_total += n_gen as u64;
        st.predicted_ms_total += gen_ms;
    }

    /// Copy the slots' state and the queue length into the shared stats.
    fn publish(&self) {
        let n_ctx = self.cfg.n_ctx_slot();
        let mut st = lock(&self.shared.stats);
        st.slots = self
            .slots
            .iter()
            .map(|s| SlotState {
                id: s.id,
                n_ctx,
                id_task: s.active.as_ref().map(|a| a.id),
                n_past: s.tokens.len(),
                n_prompt: s.active.as_ref().map_or(0, |a| a.prompt().len()),
                n_decoded: s.active.as_ref().map_or(0, |a| a.out_tokens.len()),
                n_remain: s.active.as_ref().map_or(-1, |a| {
                    let n = a.job.params.n_predict;
                    if n < 0 {
                        -1
                    } else {
                        n - a.out_tokens.len() as i64
                    }
                }),
            })
            .collect();
        // Cells of the blocks some slot references (a block shared by several counts once).
        st.kv_cache_tokens = (self.pool.n_used() * BLOCK) as u64;
        st.kv_cache_cells = (self.pool.n_blocks() * BLOCK) as u64;
        st.kv_blocks_used = self.pool.n_used() as u64;
        st.kv_blocks_cached = self.pool.n_cached() as u64;
        st.kv_blocks_total = self.pool.n_blocks() as u64;
        st.requests_processing = self.slots.iter().filter(|s| s.active.is_some()).count() as u64;
        st.requests_deferred = self.queue.len() as u64;
    }
}

fn ms(t0: Instant) -> f64 {
    t0.elapsed().as_secs_f64() * 1e3
}

/// Logits of `tokens` from position 0 in a scratch cache (perplexity, `Model.logits`).
fn logits(
    model: &Model,
    tokens: &[u32],
    n_ctx: usize,
    n_batch: usize,
    all: bool,
    from: usize,
) -> Result<Vec<f32>> {
    let (mut pool, table) = model.scratch_cache(tokens.len().max(n_ctx).max(1))?;
    let nb = n_batch.max(1);
    let n = tokens.len();
    let mut out = Vec::new();
    for (c, chunk) in tokens.chunks(nb).enumerate() {
        let batch: Vec<BatchToken> = chunk
            .iter()
            .enumerate()
            .map(|(i, &t)| {
                let pos = c * nb + i;
                BatchToken {
                    token: t,
                    pos,
                    rope_pos: pos,
                    seq: 0,
                    logits: (all && pos >= from) || pos + 1 == n,
                }
            })
            .collect();
        let o = model.forward(&batch, &mut pool, &[&table], false)?;
        out.extend_from_slice(&o.logits);
    }
    Ok(out)
}

/// Final-normed hidden states of `tokens` from position 0 (embeddings).
fn hidden(model: &Model, tokens: &[u32], n_batch: usize) -> Result<Vec<f32>> {
    let (mut pool, table) = model.scratch_cache(tokens.len().max(1))?;
    let nb = n_batch.max(1);
    let mut out = Vec::with_capacity(tokens.len() * model.cfg.n_embd);
    for (c, chunk) in tokens.chunks(nb).enumerate() {
        let batch: Vec<BatchToken> = chunk
            .iter()
            .enumerate()
            .map(|(i, &t)| BatchToken {
                token: t,
                pos: c * nb + i,
                rope_pos: c * nb + i,
                seq: 0,
                logits: false,
            })
            .collect();
        let o = model.forward(&batch, &mut pool, &[&table], true)?;
        out.extend_from_slice(&o.hidden.unwrap_or_default());
    }
    Ok(out)
}

fn decode_bench(model: &Model, tokens: &[u32]) -> Result<()> {
    let (mut pool, table) = model.scratch_cache(tokens.len().max(1))?;
    for (pos, &t) in tokens.iter().enumerate() {
        let b = [BatchToken {
            token: t,
            pos,
            rope_pos: pos,
            seq: 0,
            logits: true,
        }];
        model.forward(&b, &mut pool, &[&table], false)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::choose_slot;

    #[test]
    fn slots_are_chosen_by_prefix_then_least_recently_used() {
        let a = [1u32, 2, 3, 4];
        let b = [9u32, 9];
        let idle: Vec<(usize, &[u32], u64)> = vec![(0, &a, 5), (1, &b, 2), (2, &[], 7)];
        // Shares 3 of 4 tokens with slot 0.
        assert_eq!(choose_slot(&idle, &[1, 2, 3, 7], None, 0.5), Some(0));
        // Below the similarity threshold: least recently used.
        assert_eq!(choose_slot(&idle, &[1, 5, 6, 7], None, 0.5), Some(1));
        assert_eq!(choose_slot(&idle, &[1, 2, 3, 7], None, 0.0), Some(1));
        // Pinned: that slot or wait.
        assert_eq!(choose_slot(&idle, &[1], Some(2), 0.5), Some(2));
        assert_eq!(choose_slot(&idle, &[1], Some(3), 0.5), None);
        assert_eq!(choose_slot(&[], &[1], None, 0.5), None);
    }
}
