//! Sampling: logit bias, repetition penalties, grammar constraint, the sampler chain (top_k,
//! tfs_z, typical_p, top_p, min_p, temperature/dynatemp) or mirostat, and the final draw.
//!
//! Order per token (as llama.cpp's server): logit bias (incl. ignore_eos) -> penalties ->
//! chain -> draw. With a grammar, the drawn token is checked; only if the grammar rejects it is
//! the draw redone over the grammar-allowed tokens (llama.cpp's rejection sampling). That redo is
//! exactly "grammar on the whole vocabulary, then the chain", computed cheaply: when the chain
//! starts with top_k (or sampling is greedy) the best-logit tokens are checked one by one until
//! enough are allowed; otherwise, or when too few are, the vocabulary trie is walked once
//! (through a lazily built byte-level DFA over grammar states; see grammar/matcher.rs).
//! Penalties always apply before the chain (`penalties` in `samplers` is accepted and ignored);
//! `temperature <= 0` is plain argmax after bias and penalties, whatever the other samplers say.
//! When a grammar allows nothing (e.g. it is complete but ignore_eos bans end of generation),
//! `sample` returns the first end-of-generation token rather than a token the grammar rejects.
//!
//! Cost (smollm2, 49,152 tokens, `--profile fast`, see tests/unit/test_grammar_perf.py): about
//! 0.06 ms per token for the default chain or greedy, 0.28 ms for a chain without top_k; a
//! grammar adds under 0.2 ms per token except when every draw is rejected, no top_k leads the
//! chain and the grammar state never repeats (then ~1.5 ms: one full trie walk per token).
//!
//! n_probs: the probabilities the server reports by default are the log-softmax of the raw
//! logits, before any sampler (llama.cpp's `post_sampling_probs: false`); see `top_logprobs`.
//! `Sampler::post_sampling_probs` gives the other flavour (the chain's final candidates).

pub mod candidates;
pub mod chain;
pub mod grammar;
pub mod mirostat;
pub mod penalties;
pub mod rng;

use std::sync::{Arc, OnceLock};

use candidates::{Candidate, Candidates};
pub use chain::{ChainStep, SamplerKind};
use grammar::{Grammar, Matcher, TokenTrie};
use mirostat::Mirostat;
use penalties::Penalties;
use rng::Rng;

use crate::{Error, Result};

/// Every sampling option of a /completion request, resolved to token ids.
/// `Default` is llama.cpp's default (the reference version the golden data comes from:
/// repeat_penalty 1.0, i.e. off).
#[derive(Clone, Debug, PartialEq)]
pub struct SamplingParams {
    pub temperature: f32,
    pub dynatemp_range: f32,
    pub dynatemp_exponent: f32,
    pub top_k: i32,
    pub top_p: f32,
    pub min_p: f32,
    pub tfs_z: f32,
    pub typical_p: f32,
    pub min_keep: usize,
    pub samplers: Vec<SamplerKind>,
    pub repeat_penalty: f32,
    /// 0 disables, -1 means the whole context.
    pub repeat_last_n: i32,
    pub penalize_nl: bool,
    pub presence_penalty: f32,
    pub frequency_penalty: f32,
    /// Replaces the prompt as the penalty history when set.
    pub penalty_prompt: Option<Vec<u32>>,
    /// 0 off, 1 Mirostat, 2 Mirostat 2.0.
    pub mirostat: u8,
    pub mirostat_tau: f32,
    pub mirostat_eta: f32,
    /// (token, bias); -inf bans the token. Added up when a token appears more than once.
    pub logit_bias: Vec<(u32, f32)>,
    pub ignore_eos: bool,
    /// `rng::RANDOM_SEED` (u32::MAX, i.e. -1) picks a random seed.
    pub seed: u32,
    pub n_probs: usize,
    /// GBNF text; empty means no grammar.
    pub grammar: String,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 0.8,
            dynatemp_range: 0.0,
            dynatemp_exponent: 1.0,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            tfs_z: 1.0,
            typical_p: 1.0,
            min_keep: 0,
            samplers: SamplerKind::default_order(),
            repeat_penalty: 1.0,
            repeat_last_n: 64,
            penalize_nl: false,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            penalty_prompt: None,
            mirostat: 0,
            mirostat_tau: 5.0,
            mirostat_eta: 0.1,
            logit_bias: Vec::new(),
            ignore_eos: false,
            seed: rng::RANDOM_SEED,
            n_probs: 0,
            grammar: String::new(),
        }
    }
}

/// What the sampler needs to know about a model's vocabulary; build once per model, share.
#[derive(Debug)]
pub struct SamplerVocab {
    /// Token bytes (rendered with special tokens as text), indexed by token id.
    pub pieces: Vec<Vec<u8>>,
    /// End-of-generation token ids.
    pub eog: Vec<u32>,
    /// The token whose piece is exactly "\n" (for penalize_nl).
    pub newline: Option<u32>,
    trie: OnceLock<TokenTrie>,
    is_eog: Vec<bool>,
    /// Tokens that render as no text in generated content (control and unknown tokens).
    hidden: Vec<bool>,
}

impl SamplerVocab {
    pub fn new(pieces: Vec<Vec<u8>>, eog: Vec<u32>) -> Arc<Self> {
        Self::with_hidden(pieces, eog, &[])
    }

    /// Like `new`, with the tokens whose text is hidden from generated content (control tokens:
    /// the grammar still sees their bytes, a reader of the output does not).
    pub fn with_hidden(pieces: Vec<Vec<u8>>, eog: Vec<u32>, hidden_ids: &[u32]) -> Arc<Self> {
        let mut hidden = vec![false; pieces.len()];
        for &h in hidden_ids {
            if let Some(x) = hidden.get_mut(h as usize) {
                *x = true;
            }
        }
        let mut is_eog = vec![false; pieces.len()];
        for &e in &eog {
            if let Some(x) = is_eog.get_mut(e as usize) {
                *x = true;
            }
        }
        let newline = pieces
            .iter()
            .position(|p| p.as_slice() == b"\n")
            .map(|i| i as u32);
        Arc::new(SamplerVocab {
            pieces,
            eog,
            newline,
            trie: OnceLock::new(),
            is_eog,
            hidden,
        })
    }

    pub fn n_vocab(&self) -> usize {
        self.pieces.len()
    }

    /// The text bytes of token `t` in generated content: empty for hidden (control) tokens and
    /// ids outside the vocabulary.
    pub fn text_piece(&self, t: u32) -> &[u8] {
        if self.hidden.get(t as usize).copied().unwrap_or(true) {
            return &[];
        }
        self.pieces
            .get(t as usize)
            .map(|p| p.as_slice())
            .unwrap_or(&[])
    }

    #[inline]
    pub fn is_eog(&self, t: u32) -> bool {
        self.is_eog.get(t as usize).copied().unwrap_or(false)
    }

    /// The trie over all non end-of-generation pieces (built on first grammar use).
    pub fn trie(&self) -> &TokenTrie {
        self.trie
            .get_or_init(|| TokenTrie::build(&self.pieces, |t| self.is_eog(t)))
    }
}

/// Log-softmax of raw logits, top `n` as (token, logprob), best first: what the server reports
/// for n_probs with post_sampling_probs false.
pub fn top_logprobs(logits: &[f32], n: usize) -> Vec<(u32, f32)> {
    if logits.is_empty() || n == 0 {
        return Vec::new();
    }
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = logits.iter().map(|&l| ((l - max) as f64).exp()).sum();
    let lse = max as f64 + sum.ln();
    let mut c = Candidates::default();
    c.fill(logits);
    let n = n.min(c.len());
    c.partial_sort(n);
    c.data[..n]
        .iter()
        .map(|x| (x.id, (x.logit as f64 - lse) as f32))
        .collect()
}

/// Draw from candidates by their logits (softmax, f64 accumulation); returns the index and leaves
/// normalized probabilities in `p`.
pub(crate) fn dist_pick(c: &mut Candidates, rng: &mut Rng) -> usize {
    let u = rng.uniform();
    if c.len() <= 1 {
        if let Some(x) = c.data.first_mut() {
            x.p = 1.0;
        }
        return 0;
    }
    let max_l = c.data.iter().fold(f32::NEG_INFINITY, |m, x| m.max(x.logit));
    let mut sum = 0.0f64;
    for x in c.data.iter_mut() {
        let p = (x.logit - max_l).exp();
        x.p = p;
        sum += p as f64;
    }
    let target = sum * u;
    let mut run = 0.0f64;
    let mut picked = c.len() - 1;
    let mut found = false;
    for (i, x) in c.data.iter_mut().enumerate() {
        if !found {
            run += x.p as f64;
            if run >= target && x.p > 0.0 {
                picked = i;
                found = true;
            }
        }
        x.p = (x.p as f64 / sum) as f32;
    }
    picked
}

/// Per-sequence sampler state.
pub struct Sampler {
    params: SamplingParams,
    vocab: Arc<SamplerVocab>,
    steps: Vec<ChainStep>,
    /// Index of the first chain step when it is a top_k (the grammar fast path uses it).
    leading_top_k: Option<usize>,
    penalties: Penalties,
    mirostat: Option<Mirostat>,
    matcher: Option<Matcher>,
    rng: Rng,
    seed: u32,
    bias: Vec<(u32, f32)>,
    // scratch, reused across tokens
    work: Vec<f32>,
    cands: Candidates,
    scratch: Vec<Candidate>,
    allowed: Vec<u32>,
    last_greedy: bool,
    /// Counters for measurements: tokens sampled, grammar redraws, full-vocabulary walks.
    pub stats: SamplerStats,
}

#[derive(Clone, Copy, Debug, Default)]
pub struct SamplerStats {
    pub sampled: u64,
    pub grammar_redraws: u64,
    pub trie_walks: u64,
}

fn check_finite(name: &str, v: f32) -> Result<()> {
    if v.is_nan() {
        return Err(Error::invalid(format!("\"{name}\" must be a number")));
    }
    Ok(())
}

impl Sampler {
    pub fn new(params: &SamplingParams, vocab: Arc<SamplerVocab>) -> Result<Self> {
        let p = params;
        for (n, v) in [
            ("temperature", p.temperature),
            ("dynatemp_range", p.dynatemp_range),
            ("dynatemp_exponent", p.dynatemp_exponent),
            ("top_p", p.top_p),
            ("min_p", p.min_p),
            ("tfs_z", p.tfs_z),
            ("typical_p", p.typical_p),
            ("repeat_penalty", p.repeat_penalty),
            ("presence_penalty", p.presence_penalty),
            ("frequency_penalty", p.frequency_penalty),
            ("mirostat_tau", p.mirostat_tau),
            ("mirostat_eta", p.mirostat_eta),
        ] {
            check_finite(n, v)?;
        }
        if p.mirostat > 2 {
            return Err(Error::invalid("\"mirostat\" must be 0, 1 or 2"));
        }
        if p.repeat_last_n < -1 {
            return Err(Error::invalid("\"repeat_last_n\" must be >= -1"));
        }
        let n_vocab = vocab.n_vocab();
        let mut steps = Vec::new();
        for &k in &p.samplers {
            let mk = p.min_keep;
            steps.push(match k {
                SamplerKind::TopK => ChainStep::TopK(p.top_k),
                SamplerKind::TfsZ => ChainStep::TailFree {
                    z: p.tfs_z,
                    min_keep: mk,
                },
                SamplerKind::TypicalP => ChainStep::Typical {
                    p: p.typical_p,
                    min_keep: mk,
                },
                SamplerKind::TopP => ChainStep::TopP {
                    p: p.top_p,
                    min_keep: mk,
                },
                SamplerKind::MinP => ChainStep::MinP {
                    p: p.min_p,
                    min_keep: mk,
                },
                SamplerKind::Temperature => ChainStep::Temperature {
                    temp: p.temperature,
                    range: p.dynatemp_range,
                    exponent: p.dynatemp_exponent,
                },
                SamplerKind::Penalties => continue,
            });
        }
        let leading_top_k = match steps.first() {
            Some(ChainStep::TopK(k)) if *k > 0 => Some(*k as usize),
            _ => None,
        };
        let matcher = if p.grammar.trim().is_empty() {
            None
        } else {
            Some(Matcher::new(Grammar::parse(&p.grammar)?)?)
        };
        let mut bias: Vec<(u32, f32)> = p
            .logit_bias
            .iter()
            .copied()
            .filter(|&(t, _)| (t as usize) < n_vocab)
            .collect();
        if p.ignore_eos {
            bias.extend(vocab.eog.iter().map(|&t| (t, f32::NEG_INFINITY)));
        }
        let seed = if p.seed == rng::RANDOM_SEED {
            rng::random_seed()
        } else {
            p.seed
        };
        let mirostat = (p.mirostat > 0)
            .then(|| Mirostat::new(p.mirostat, p.mirostat_tau, p.mirostat_eta, n_vocab));
        let mut s = Sampler {
            params: p.clone(),
            vocab,
            steps,
            leading_top_k,
            penalties: Penalties::new(
                p.repeat_last_n,
                p.repeat_penalty,
                p.frequency_penalty,
                p.presence_penalty,
            ),
            mirostat,
            matcher,
            rng: Rng::new(seed),
            seed,
            bias,
            work: Vec::new(),
            cands: Candidates::default(),
            scratch: Vec::new(),
            allowed: Vec::new(),
            last_greedy: false,
            stats: SamplerStats::default(),
        };
        if let Some(pp) = &p.penalty_prompt {
            s.load_history(pp);
        }
        Ok(s)
    }

    /// The seed in use (the drawn one when the request said -1).
    pub fn seed(&self) -> u32 {
        self.seed
    }

    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    pub fn vocab(&self) -> &Arc<SamplerVocab> {
        &self.vocab
    }

    pub fn has_grammar(&self) -> bool {
        self.matcher.is_some()
    }

    /// Load the penalty window with the prompt tokens (ignored when penalty_prompt was given,
    /// which replaces the prompt for this purpose). Does not touch the grammar.
    pub fn set_history(&mut self, tokens: &[u32]) {
        if self.params.penalty_prompt.is_none() {
            self.load_history(tokens);
        }
    }

    fn load_history(&mut self, tokens: &[u32]) {
        self.penalties.reset();
        for &t in tokens {
            self.penalties.accept(t);
        }
    }

    /// Record a generated token: penalty window, grammar state.
    pub fn accept(&mut self, token: u32) -> Result<()> {
        self.penalties.accept(token);
        if let Some(m) = self.matcher.as_mut() {
            if !self.vocab.is_eog(token) {
                let piece = self
                    .vocab
                    .pieces
                    .get(token as usize)
                    .map(|p| p.as_slice())
                    .unwrap_or(&[]);
                m.accept_bytes(piece)?;
            }
        }
        Ok(())
    }

    /// The grammar allows nothing but end of generation now (false without a grammar).
    pub fn grammar_done(&self) -> bool {
        self.matcher.as_ref().is_some_and(|m| m.only_end())
    }

    /// Whether the grammar may end here (true without a grammar).
    pub fn grammar_can_end(&self) -> bool {
        self.matcher.as_ref().is_none_or(|m| m.can_end())
    }

    fn greedy(&self) -> bool {
        self.mirostat.is_none() && self.params.temperature <= 0.0
    }

    fn token_ok(&mut self, t: u32) -> Result<bool> {
        let Some(m) = self.matcher.as_mut() else {
            return Ok(true);
        };
        if self.vocab.is_eog(t) {
            return Ok(m.can_end());
        }
        match self.vocab.pieces.get(t as usize) {
            Some(p) => m.token_allowed(p),
            None => Ok(false),
        }
    }

    /// Pick the next token from raw logits (length >= the vocabulary's size is not required; ids
    /// beyond the vocabulary are never allowed under a grammar).
    pub fn sample(&mut self, logits: &[f32]) -> Result<u32> {
        if logits.is_empty() {
            return Err(Error::invalid("empty logits"));
        }
        self.stats.sampled += 1;
        let mut work = std::mem::take(&mut self.work);
        work.clear();
        work.extend_from_slice(logits);
        for &(t, b) in &self.bias {
            if let Some(l) = work.get_mut(t as usize) {
                *l += b;
            }
        }
        let keep = if self.params.penalize_nl {
            None
        } else {
            self.vocab.newline
        };
        self.penalties.apply(&mut work, keep);
        let r = self.sample_work(&work);
        self.work = work;
        r
    }

    fn sample_work(&mut self, work: &[f32]) -> Result<u32> {
        // The first draw only needs what the chain will look at: the best token when greedy, the
        // top k when the chain starts with top_k.
        if self.greedy() {
            self.cands.fill_argmax(work);
        } else if let (None, Some(k)) = (&self.mirostat, self.leading_top_k) {
            if k < work.len() / 4 {
                self.cands.fill_top_k(work, k);
            } else {
                self.cands.fill(work);
            }
        } else {
            self.cands.fill(work);
        }
        let first = if self.cands.is_empty() {
            None
        } else {
            Some(self.run_chain_and_draw())
        };
        if self.matcher.is_none() {
            return first.ok_or_else(|| Error::invalid("every token is banned (logit bias -inf)"));
        }
        if let Some(t) = first {
            if self.token_ok(t)? {
                return Ok(t);
            }
        }
        // Redraw among grammar-allowed tokens.
        self.stats.grammar_redraws += 1;
        if self.mirostat.is_none() {
            let need = if self.greedy() {
                Some(1)
            } else {
                self.leading_top_k
            };
            if let Some(need) = need {
                if self.fill_best_allowed(work, need)? {
                    return Ok(self.run_chain_and_draw());
                }
            }
        }
        self.fill_all_allowed(work)?;
        if self.cands.is_empty() {
            // Nothing is allowed (e.g. the grammar is complete but end of generation is banned by
            // ignore_eos): end the sequence rather than emit a token the grammar rejects.
            return self
                .vocab
                .eog
                .first()
                .copied()
                .ok_or_else(|| Error::Grammar("the grammar allows no token".into()));
        }
        Ok(self.run_chain_and_draw())
    }

    /// Fill candidates with the `need` best-logit allowed tokens by checking tokens in logit
    /// order; false when the best few hundred contain fewer than `need` allowed ones.
    fn fill_best_allowed(&mut self, work: &[f32], need: usize) -> Result<bool> {
        let mut all = std::mem::take(&mut self.cands);
        let want = (need * 4).max(256);
        all.fill_top_k(work, want);
        // Fewer than asked for means every non-banned token is in the list.
        let scanned_all = all.len() < want;
        let limit = all.len();
        let mut found = std::mem::take(&mut self.scratch);
        found.clear();
        for i in 0..limit {
            let c = all.data[i];
            if self.token_ok(c.id)? {
                found.push(c);
                if found.len() == need {
                    break;
                }
            }
        }
        let ok = found.len() == need || scanned_all;
        if ok {
            all.data.clear();
            all.data.extend_from_slice(&found);
            all.sorted = false;
        }
        self.cands = all;
        self.scratch = found;
        Ok(ok && !self.cands.is_empty())
    }

    /// Fill candidates with every allowed token (vocabulary trie walk).
    fn fill_all_allowed(&mut self, work: &[f32]) -> Result<()> {
        self.stats.trie_walks += 1;
        let vocab = self.vocab.clone();
        let trie = vocab.trie();
        let mut allowed = std::mem::take(&mut self.allowed);
        let m = self.matcher.as_mut().expect("grammar present");
        let r = m.allowed_tokens(trie, &vocab.pieces, &mut allowed);
        if let Err(e) = r {
            self.allowed = allowed;
            return Err(e);
        }
        if m.can_end() {
            allowed.extend(vocab.eog.iter().copied());
        }
        self.cands.data.clear();
        self.cands.sorted = false;
        for &t in &allowed {
            if let Some(&l) = work.get(t as usize) {
                if l != f32::NEG_INFINITY && !l.is_nan() {
                    self.cands.data.push(Candidate {
                        id: t,
                        logit: l,
                        p: 0.0,
                    });
                }
            }
        }
        self.allowed = allowed;
        Ok(())
    }

    /// Apply the chain (or greedy / mirostat) to non-empty candidates and draw.
    fn run_chain_and_draw(&mut self) -> u32 {
        self.last_greedy = false;
        if let Some(m) = self.mirostat.as_mut() {
            chain::temperature(&mut self.cands, self.params.temperature);
            let i = m.sample(&mut self.cands, &mut self.rng);
            return self.cands.data[i].id;
        }
        if self.greedy() {
            self.last_greedy = true;
            let i = self.cands.argmax().unwrap_or(0);
            let best = self.cands.data[i];
            self.cands.data.clear();
            self.cands.data.push(Candidate { p: 1.0, ..best });
            self.cands.sorted = true;
            return best.id;
        }
        for step in &self.steps {
            step.apply(&mut self.cands, &mut self.scratch);
            if self.cands.len() <= 1 {
                // Later steps cannot change a single candidate (temperature keeps it too).
                if self.cands.is_empty() {
                    break;
                }
            }
        }
        if self.cands.is_empty() {
            return 0;
        }
        let i = dist_pick(&mut self.cands, &mut self.rng);
        self.cands.data[i].id
    }

    /// The last draw's final candidates as (token, probability), most probable first, at most
    /// `n`, zero probabilities dropped (`post_sampling_probs: true`).
    pub fn post_sampling_probs(&self, n: usize) -> Vec<(u32, f32)> {
        let mut v: Vec<(u32, f32)> = self
            .cands
            .data
            .iter()
            .filter(|c| c.p > 0.0)
            .map(|c| (c.id, c.p))
            .collect();
        v.sort_by(|a, b| {
            b.1.partial_cmp(&a.1)
                .unwrap_or(std::cmp::Ordering::Equal)
                .then(a.0.cmp(&b.0))
        });
        v.truncate(n);
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vocab(n: usize) -> Arc<SamplerVocab> {
        let pieces = (0..n).map(|i| format!("t{i}").into_bytes()).collect();
        SamplerVocab::new(pieces, vec![0])
    }

    #[test]
    fn greedy_and_bias() {
        let v = vocab(5);
        let p = SamplingParams {
            temperature: 0.0,
            logit_bias: vec![(3, 10.0)],
            ..Default::default()
        };
        let mut s = Sampler::new(&p, v).unwrap();
        assert_eq!(s.sample(&[0.0, 1.0, 2.0, 0.5, 0.0]).unwrap(), 3);
        assert_eq!(s.post_sampling_probs(5), vec![(3, 1.0)]);
    }

    #[test]
    fn fixed_seed_reproduces() {
        let v = vocab(50);
        let logits: Vec<f32> = (0..50).map(|i| ((i * 7919) % 13) as f32 * 0.3).collect();
        let p = SamplingParams {
            seed: 7,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            ..Default::default()
        };
        let run = |v: Arc<SamplerVocab>| {
            let mut s = Sampler::new(&p, v).unwrap();
            (0..50)
                .map(|_| s.sample(&logits).unwrap())
                .collect::<Vec<_>>()
        };
        assert_eq!(run(v.clone()), run(v));
    }

    #[test]
    fn grammar_constrains() {
        let pieces: Vec<Vec<u8>> = vec![
            b"</s>".to_vec(),
            b"a".to_vec(),
            b"b".to_vec(),
            b"ab".to_vec(),
            b"c".to_vec(),
        ];
        let v = SamplerVocab::new(pieces, vec![0]);
        let p = SamplingParams {
            grammar: "root ::= (\"a\" | \"b\")+ \"c\"\n".into(),
            seed: 3,
            ..Default::default()
        };
        let mut s = Sampler::new(&p, v.clone()).unwrap();
        let mut text = Vec::new();
        for _ in 0..100 {
            let t = s.sample(&[5.0, 0.0, 0.0, 0.0, 1.0]).unwrap();
            if t == 0 {
                break;
            }
            s.accept(t).unwrap();
            text.extend_from_slice(&v.pieces[t as usize]);
        }
        assert!(text.ends_with(b"c"), "{:?}", String::from_utf8_lossy(&text));
        assert!(s.grammar_done());
    }
}
