//! The grammar matcher: a pushdown recognizer over code points. A parse position is a stack of
//! element positions (top = the next character class to match). Stacks are hash-consed into an
//! arena so a set of stacks is a small list of ids, identical stacks share one id, and the
//! transition (stack, code point) -> stacks is memoized. UTF-8 is decoded incrementally, so a
//! token may end (or start) in the middle of a character.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

use super::parser::{parse, CharClass, Elem};
use super::trie::TokenTrie;
use crate::{Error, Result};

/// Multiply-rotate hasher for small integer keys (the std SipHash is several times slower here).
#[derive(Default, Clone, Copy)]
pub struct FastHasher(u64);

impl Hasher for FastHasher {
    fn finish(&self) -> u64 {
        self.0 ^ (self.0 >> 29)
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(b as u64);
        }
    }
    #[inline]
    fn write_u32(&mut self, x: u32) {
        self.write_u64(x as u64);
    }
    #[inline]
    fn write_u64(&mut self, x: u64) {
        self.0 = (self.0.rotate_left(5) ^ x).wrapping_mul(0x517c_c1b7_2722_0a95);
    }
}

pub type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<FastHasher>>;
pub type FastSet<K> = HashSet<K, BuildHasherDefault<FastHasher>>;

/// The empty stack: the grammar has matched completely.
pub const DONE: u32 = 0;
const MAX_NODES: usize = 2_000_000;
const MAX_STACKS: usize = 20_000;
const MAX_EXPAND_STEPS: usize = 1_000_000;
/// Rule-expansion steps allowed per public operation (checking or accepting a token, walking the
/// vocabulary). Normal grammars use a tiny fraction; pathological ones (e.g. a bounded
/// repetition of something that can match nothing) would otherwise take seconds per token.
const MAX_WORK_PER_OP: usize = 4_000_000;
const MAX_CACHE: usize = 4_000_000;

/// A parsed, compiled grammar; immutable and shareable between requests.
#[derive(Debug)]
pub struct Grammar {
    elems: Vec<Elem>,
    classes: Vec<CharClass>,
    /// For each rule, the positions where its alternatives start.
    alts: Vec<Vec<u32>>,
    root: u32,
    pub n_rules: usize,
}

impl Grammar {
    pub fn parse(text: &str) -> Result<Arc<Grammar>> {
        let p = parse(text)?;
        let mut elems = Vec::new();
        let mut starts = Vec::with_capacity(p.rules.len());
        for rule in &p.rules {
            starts.push(elems.len() as u32);
            elems.extend_from_slice(rule);
        }
        let mut alts = Vec::with_capacity(p.rules.len());
        for (r, rule) in p.rules.iter().enumerate() {
            let base = starts[r];
            let mut a = vec![base];
            for (i, e) in rule.iter().enumerate() {
                if *e == Elem::Alt {
                    a.push(base + i as u32 + 1);
                }
            }
            alts.push(a);
        }
        // Rule ids become rule-start positions are not needed: Ref keeps the rule id.
        Ok(Arc::new(Grammar {
            elems,
            classes: p.classes,
            alts,
            root: p.root,
            n_rules: p.rules.len(),
        }))
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Utf8Partial {
    value: u32,
    remain: u8,
    /// Smallest code point the sequence's length can encode (overlong forms are invalid).
    min: u32,
}

enum Step {
    Char(u32),
    Partial(Utf8Partial),
    Invalid,
}

#[inline]
fn utf8_step(p: Utf8Partial, b: u8) -> Step {
    if p.remain > 0 {
        if b & 0xC0 != 0x80 {
            return Step::Invalid;
        }
        let value = (p.value << 6) | (b & 0x3F) as u32;
        if p.remain == 1 {
            if value < p.min || value > 0x10FFFF {
                Step::Invalid
            } else {
                Step::Char(value)
            }
        } else {
            Step::Partial(Utf8Partial {
                value,
                remain: p.remain - 1,
                min: p.min,
            })
        }
    } else {
        match b {
            0x00..=0x7F => Step::Char(b as u32),
            0xC2..=0xDF => Step::Partial(Utf8Partial {
                value: (b & 0x1F) as u32,
                remain: 1,
                min: 0x80,
            }),
            0xE0..=0xEF => Step::Partial(Utf8Partial {
                value: (b & 0x0F) as u32,
                remain: 2,
                min: 0x800,
            }),
            0xF0..=0xF4 => Step::Partial(Utf8Partial {
                value: (b & 0x07) as u32,
                remain: 3,
                min: 0x10000,
            }),
            _ => Step::Invalid,
        }
    }
}

/// Matching state for one sequence.
pub struct Matcher {
    g: Arc<Grammar>,
    nodes: Vec<(u32, u32)>,
    node_ids: FastMap<(u32, u32), u32>,
    cache: FastMap<u64, (u32, u32)>,
    cache_buf: Vec<u32>,
    stacks: Vec<u32>,
    partial: Utf8Partial,
    // scratch, reused
    work: Vec<u32>,
    seen: FastSet<u32>,
    tmp: Vec<u32>,
    a: Vec<u32>,
    b: Vec<u32>,
    dfs_buf: Vec<u32>,
    /// Allowed-token lists of recently walked states (stacks, pending UTF-8): generation often
    /// returns to the same state (inside a string, between list items), and hash-consing makes
    /// equal states compare equal.
    walk_cache: FastMap<(Vec<u32>, Utf8Partial), Arc<Vec<u32>>>,
    /// Lazily built byte-level DFA over matcher states: a state is a (stack set, pending UTF-8)
    /// pair, its 256 transitions are computed on first use. Walking the trie or checking a token
    /// is then one array lookup per byte.
    dfa: Dfa,
    /// The DFA state of the current position (UNKNOWN until interned).
    cur: u32,
    /// Expansion steps spent in the current public operation.
    work_used: usize,
}

const UNKNOWN: u32 = u32::MAX;
const DEAD: u32 = u32::MAX - 1;
/// DFA states kept before the DFA is dropped and rebuilt (each costs 1 KiB of transitions).
const MAX_DFA_STATES: usize = 4096;

#[derive(Default)]
struct Dfa {
    states: Vec<(u32, u32, Utf8Partial)>,
    set_buf: Vec<u32>,
    ids: FastMap<(Vec<u32>, Utf8Partial), u32>,
    trans: Vec<[u32; 256]>,
    /// (state, code point) -> state for non-ASCII code points completed inside a trie walk
    /// (so multi-byte prefixes do not each become a DFA state).
    cp_trans: FastMap<u64, u32>,
}

impl Dfa {
    fn clear(&mut self) {
        self.states.clear();
        self.set_buf.clear();
        self.ids.clear();
        self.trans.clear();
        self.cp_trans.clear();
    }

    fn intern(&mut self, set: &[u32], p: Utf8Partial) -> u32 {
        if let Some(&id) = self.ids.get(&(set.to_vec(), p)) {
            return id;
        }
        let id = self.states.len() as u32;
        self.states
            .push((self.set_buf.len() as u32, set.len() as u32, p));
        self.set_buf.extend_from_slice(set);
        self.ids.insert((set.to_vec(), p), id);
        self.trans.push([UNKNOWN; 256]);
        id
    }

    fn set(&self, state: u32) -> (&[u32], Utf8Partial) {
        let (start, len, p) = self.states[state as usize];
        (&self.set_buf[start as usize..(start + len) as usize], p)
    }
}

const MAX_WALK_CACHE: usize = 32;

impl Matcher {
    pub fn new(g: Arc<Grammar>) -> Result<Self> {
        let mut m = Matcher {
            g,
            nodes: vec![(u32::MAX, u32::MAX)],
            node_ids: FastMap::default(),
            cache: FastMap::default(),
            cache_buf: Vec::new(),
            stacks: Vec::new(),
            partial: Utf8Partial::default(),
            work: Vec::new(),
            seen: FastSet::default(),
            tmp: Vec::new(),
            a: Vec::new(),
            b: Vec::new(),
            dfs_buf: Vec::new(),
            walk_cache: FastMap::default(),
            dfa: Dfa::default(),
            cur: UNKNOWN,
            work_used: 0,
        };
        m.reset()?;
        Ok(m)
    }

    pub fn reset(&mut self) -> Result<()> {
        self.work_used = 0;
        let root = self.g.root as usize;
        let mut out = Vec::new();
        for i in 0..self.g.alts[root].len() {
            let a = self.g.alts[root][i];
            let s = if self.g.elems[a as usize].is_end() {
                DONE
            } else {
                self.node(a, DONE)?
            };
            self.expand(s, &mut out)?;
        }
        out.sort_unstable();
        out.dedup();
        self.stacks = out;
        self.partial = Utf8Partial::default();
        self.cur = UNKNOWN;
        Ok(())
    }

    fn too_complex() -> Error {
        Error::Grammar("grammar is too ambiguous or too deeply recursive to match".into())
    }

    fn node(&mut self, pos: u32, parent: u32) -> Result<u32> {
        if let Some(&id) = self.node_ids.get(&(pos, parent)) {
            return Ok(id);
        }
        if self.nodes.len() >= MAX_NODES {
            return Err(Self::too_complex());
        }
        let id = self.nodes.len() as u32;
        self.nodes.push((pos, parent));
        self.node_ids.insert((pos, parent), id);
        Ok(id)
    }

    /// Expand rule references on top of `s` until every stack has a character class on top (or
    /// is DONE); appends the results to `out` (possibly with duplicates).
    fn expand(&mut self, s: u32, out: &mut Vec<u32>) -> Result<()> {
        self.work.clear();
        self.seen.clear();
        self.work.push(s);
        let mut steps = 0usize;
        while let Some(x) = self.work.pop() {
            steps += 1;
            if steps > MAX_EXPAND_STEPS || self.work_used + steps > MAX_WORK_PER_OP {
                return Err(Self::too_complex());
            }
            if !self.seen.insert(x) {
                continue;
            }
            if x == DONE {
                out.push(DONE);
                continue;
            }
            let (pos, parent) = self.nodes[x as usize];
            match self.g.elems[pos as usize] {
                Elem::Chars(_) => out.push(x),
                Elem::Ref(r) => {
                    let next = pos + 1;
                    let rest = if self.g.elems[next as usize].is_end() {
                        parent
                    } else {
                        self.node(next, parent)?
                    };
                    for i in 0..self.g.alts[r as usize].len() {
                        let a = self.g.alts[r as usize][i];
                        let ns = if self.g.elems[a as usize].is_end() {
                            rest
                        } else {
                            self.node(a, rest)?
                        };
                        self.work.push(ns);
                    }
                }
                Elem::End | Elem::Alt => self.work.push(parent),
            }
        }
        self.work_used += steps;
        if out.len() > MAX_STACKS {
            return Err(Self::too_complex());
        }
        Ok(())
    }

    /// The stacks reached from stack `s` by code point `c` (memoized): range into cache_buf.
    fn advance_stack(&mut self, s: u32, c: u32) -> Result<(u32, u32)> {
        let key = ((s as u64) << 32) | c as u64;
        if let Some(&r) = self.cache.get(&key) {
            return Ok(r);
        }
        if self.cache_buf.len() > MAX_CACHE {
            self.cache.clear();
            self.cache_buf.clear();
        }
        let mut res = std::mem::take(&mut self.tmp);
        res.clear();
        if s != DONE {
            let (pos, parent) = self.nodes[s as usize];
            if let Elem::Chars(cls) = self.g.elems[pos as usize] {
                if self.g.classes[cls as usize].matches(c) {
                    let next = pos + 1;
                    let ns = if self.g.elems[next as usize].is_end() {
                        parent
                    } else {
                        self.node(next, parent)?
                    };
                    let r = self.expand(ns, &mut res);
                    if let Err(e) = r {
                        self.tmp = res;
                        return Err(e);
                    }
                    res.sort_unstable();
                    res.dedup();
                }
            }
        }
        let start = self.cache_buf.len() as u32;
        self.cache_buf.extend_from_slice(&res);
        let r = (start, res.len() as u32);
        self.tmp = res;
        self.cache.insert(key, r);
        Ok(r)
    }

    /// Advance a set of stacks by one code point into `out` (deduplicated).
    fn advance_set(&mut self, input: &[u32], c: u32, out: &mut Vec<u32>) -> Result<()> {
        out.clear();
        for &s in input {
            let (start, len) = self.advance_stack(s, c)?;
            out.extend_from_slice(&self.cache_buf[start as usize..(start + len) as usize]);
        }
        if input.len() > 1 {
            out.sort_unstable();
            out.dedup();
        }
        if out.len() > MAX_STACKS {
            return Err(Self::too_complex());
        }
        Ok(())
    }

    /// Whether some stack can continue with a character whose UTF-8 encoding starts with the
    /// pending partial sequence.
    fn partial_ok(&self, set: &[u32], p: Utf8Partial) -> bool {
        let shift = 6 * p.remain as u32;
        let lo = (p.value << shift).max(p.min);
        let hi = ((p.value << shift) | ((1u32 << shift) - 1)).min(0x10FFFF);
        if lo > hi {
            return false;
        }
        set.iter().any(|&s| {
            s != DONE && {
                let (pos, _) = self.nodes[s as usize];
                match self.g.elems[pos as usize] {
                    Elem::Chars(cls) => self.g.classes[cls as usize].intersects(lo, hi),
                    _ => false,
                }
            }
        })
    }

    /// The DFA state of the current position, dropping the DFA first when it grew too big.
    fn current_state(&mut self) -> u32 {
        if self.dfa.states.len() >= MAX_DFA_STATES {
            self.dfa.clear();
            self.cur = UNKNOWN;
        }
        if self.cur == UNKNOWN {
            self.cur = self.dfa.intern(&self.stacks, self.partial);
        }
        self.cur
    }

    /// One byte from a DFA state (memoized); DEAD when the grammar rejects it.
    #[inline]
    fn step(&mut self, state: u32, byte: u8) -> Result<u32> {
        let t = self.dfa.trans[state as usize][byte as usize];
        if t != UNKNOWN {
            return Ok(t);
        }
        self.step_slow(state, byte)
    }

    #[cold]
    #[inline(never)]
    fn step_slow(&mut self, state: u32, byte: u8) -> Result<u32> {
        let mut set = std::mem::take(&mut self.a);
        let mut out = std::mem::take(&mut self.b);
        set.clear();
        let (s, p) = self.dfa.set(state);
        set.extend_from_slice(s);
        let r = match utf8_step(p, byte) {
            Step::Char(c) => match self.advance_set(&set, c, &mut out) {
                Ok(()) if out.is_empty() => Ok(DEAD),
                Ok(()) => Ok(self.dfa.intern(&out, Utf8Partial::default())),
                Err(e) => Err(e),
            },
            Step::Partial(np) => Ok(if self.partial_ok(&set, np) {
                self.dfa.intern(&set, np)
            } else {
                DEAD
            }),
            Step::Invalid => Ok(DEAD),
        };
        self.a = set;
        self.b = out;
        let t = r?;
        self.dfa.trans[state as usize][byte as usize] = t;
        Ok(t)
    }

    /// A whole code point from a DFA state without pending bytes (memoized).
    fn step_cp(&mut self, state: u32, c: u32) -> Result<u32> {
        let key = ((state as u64) << 32) | c as u64;
        if let Some(&t) = self.dfa.cp_trans.get(&key) {
            return Ok(t);
        }
        let mut set = std::mem::take(&mut self.a);
        let mut out = std::mem::take(&mut self.b);
        set.clear();
        set.extend_from_slice(self.dfa.set(state).0);
        let r = self.advance_set(&set, c, &mut out);
        let t = match r {
            Ok(()) if out.is_empty() => Ok(DEAD),
            Ok(()) => Ok(self.dfa.intern(&out, Utf8Partial::default())),
            Err(e) => Err(e),
        };
        self.a = set;
        self.b = out;
        let t = t?;
        self.dfa.cp_trans.insert(key, t);
        Ok(t)
    }

    /// Run `bytes` from the current position: the DFA state reached, or None if rejected.
    fn run(&mut self, bytes: &[u8]) -> Result<Option<u32>> {
        let mut st = self.current_state();
        for &b in bytes {
            st = self.step(st, b)?;
            if st == DEAD {
                return Ok(None);
            }
        }
        Ok(Some(st))
    }

    /// Whether a (non end-of-generation) token with these bytes is allowed now.
    pub fn token_allowed(&mut self, bytes: &[u8]) -> Result<bool> {
        self.work_used = 0;
        if bytes.is_empty() {
            return Ok(false);
        }
        Ok(self.run(bytes)?.is_some())
    }

    /// Consume a token's bytes; an error if the grammar does not allow them.
    pub fn accept_bytes(&mut self, bytes: &[u8]) -> Result<()> {
        self.work_used = 0;
        match self.run(bytes)? {
            Some(st) => {
                let (set, p) = self.dfa.set(st);
                self.stacks.clear();
                self.stacks.extend_from_slice(set);
                self.partial = p;
                self.cur = st;
                Ok(())
            }
            None => Err(Error::Grammar("token not allowed by the grammar".into())),
        }
    }

    /// Whether the whole of `bytes`, from the current state, is a complete match.
    pub fn matches_completely(&mut self, bytes: &[u8]) -> Result<bool> {
        self.work_used = 0;
        match self.run(bytes)? {
            Some(st) => {
                let (set, p) = self.dfa.set(st);
                Ok(p.remain == 0 && set.contains(&DONE))
            }
            None => Ok(false),
        }
    }

    /// End of generation is allowed: the grammar may end here.
    pub fn can_end(&self) -> bool {
        self.partial.remain == 0 && self.stacks.contains(&DONE)
    }

    /// Only end of generation is allowed.
    pub fn only_end(&self) -> bool {
        self.partial.remain == 0
            && !self.stacks.is_empty()
            && self.stacks.iter().all(|&s| s == DONE)
    }

    /// Every non end-of-generation token the grammar allows now, by walking the vocabulary trie.
    pub fn allowed_tokens(
        &mut self,
        trie: &TokenTrie,
        pieces: &[Vec<u8>],
        out: &mut Vec<u32>,
    ) -> Result<()> {
        self.work_used = 0;
        out.clear();
        let key = (self.stacks.clone(), self.partial);
        if let Some(hit) = self.walk_cache.get(&key) {
            out.extend_from_slice(hit);
            return Ok(());
        }
        self.walk(trie, pieces, out)?;
        if self.walk_cache.len() >= MAX_WALK_CACHE {
            self.walk_cache.clear();
        }
        self.walk_cache.insert(key, Arc::new(out.clone()));
        Ok(())
    }

    fn walk(&mut self, trie: &TokenTrie, pieces: &[Vec<u8>], out: &mut Vec<u32>) -> Result<()> {
        let st = self.current_state();
        if self.dfa_walk(trie, st, out)? {
            for &t in &trie.long_tokens {
                if self.token_allowed(&pieces[t as usize])? {
                    out.push(t);
                }
            }
            return Ok(());
        }
        // The DFA outgrew its budget mid-walk: drop it and walk with stack sets instead.
        out.clear();
        self.dfa.clear();
        self.cur = UNKNOWN;
        self.walk_sets(trie, pieces, out)
    }

    /// Trie walk over DFA states in the trie's preorder, skipping dead subtrees; false when the
    /// DFA outgrew its budget. Per depth it keeps the state and the bytes of a character begun
    /// inside this walk (non-ASCII characters step the DFA once complete).
    fn dfa_walk(&mut self, trie: &TokenTrie, st0: u32, out: &mut Vec<u32>) -> Result<bool> {
        let n = trie.n_nodes();
        let mut at: Vec<(u32, Utf8Partial)> =
            vec![(st0, Utf8Partial::default()); trie.max_depth + 1];
        let mut i = 1usize;
        while i < n {
            let d = trie.depth[i] as usize;
            let (st, p) = at[d - 1];
            let byte = trie.byte_in[i];
            let state_pending = self.dfa.states[st as usize].2.remain > 0;
            let (ns, np) = if state_pending || (p.remain == 0 && byte < 0x80) {
                (self.step(st, byte)?, Utf8Partial::default())
            } else {
                match utf8_step(p, byte) {
                    Step::Char(c) => (self.step_cp(st, c)?, Utf8Partial::default()),
                    Step::Partial(np) => {
                        if self.partial_ok(self.dfa.set(st).0, np) {
                            (st, np)
                        } else {
                            (DEAD, np)
                        }
                    }
                    Step::Invalid => (DEAD, p),
                }
            };
            if ns == DEAD {
                i = trie.subtree_end[i] as usize;
                continue;
            }
            if self.dfa.states.len() > 2 * MAX_DFA_STATES {
                return Ok(false);
            }
            at[d] = (ns, np);
            out.extend_from_slice(trie.tokens_at(i as u32));
            i += 1;
        }
        Ok(true)
    }

    fn walk_sets(
        &mut self,
        trie: &TokenTrie,
        pieces: &[Vec<u8>],
        out: &mut Vec<u32>,
    ) -> Result<()> {
        let mut buf = std::mem::take(&mut self.dfs_buf);
        buf.clear();
        buf.extend_from_slice(&self.stacks);
        let n = buf.len() as u32;
        let mut tmp = Vec::new();
        let r = self.dfs(trie, 0, 0, n, self.partial, &mut buf, &mut tmp, out);
        self.dfs_buf = buf;
        r?;
        for &t in &trie.long_tokens {
            if self.token_allowed(&pieces[t as usize])? {
                out.push(t);
            }
            // keep the DFA small while we are in the fallback
            if self.dfa.states.len() >= MAX_DFA_STATES {
                self.dfa.clear();
                self.cur = UNKNOWN;
            }
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn dfs(
        &mut self,
        trie: &TokenTrie,
        node: u32,
        start: u32,
        end: u32,
        p: Utf8Partial,
        buf: &mut Vec<u32>,
        tmp: &mut Vec<u32>,
        out: &mut Vec<u32>,
    ) -> Result<()> {
        if node != 0 {
            let toks = trie.tokens_at(node);
            if !toks.is_empty()
                && (p.remain == 0 || self.partial_ok(&buf[start as usize..end as usize], p))
            {
                out.extend_from_slice(toks);
            }
        }
        for &(byte, child) in trie.children(node) {
            match utf8_step(p, byte) {
                Step::Char(c) => {
                    self.advance_set(&buf[start as usize..end as usize], c, tmp)?;
                    if tmp.is_empty() {
                        continue;
                    }
                    let s = buf.len();
                    buf.extend_from_slice(tmp);
                    let e = buf.len();
                    self.dfs(
                        trie,
                        child,
                        s as u32,
                        e as u32,
                        Utf8Partial::default(),
                        buf,
                        tmp,
                        out,
                    )?;
                    buf.truncate(s);
                }
                Step::Partial(np) => {
                    if self.partial_ok(&buf[start as usize..end as usize], np) {
                        self.dfs(trie, child, start, end, np, buf, tmp, out)?;
                    }
                }
                Step::Invalid => {}
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(g: &str) -> Matcher {
        Matcher::new(Grammar::parse(g).unwrap()).unwrap()
    }

    #[test]
    fn literal_and_classes() {
        let mut x = m("root ::= \"ab\" [0-9]+ \"c\"?\n");
        assert!(x.matches_completely(b"ab1").unwrap());
        assert!(x.matches_completely(b"ab12c").unwrap());
        assert!(!x.matches_completely(b"ab").unwrap());
        assert!(!x.matches_completely(b"abc").unwrap());
        assert!(x.token_allowed(b"ab").unwrap());
        x.accept_bytes(b"a").unwrap();
        assert!(!x.can_end());
        x.accept_bytes(b"b9").unwrap();
        assert!(x.can_end());
        assert!(!x.only_end());
        x.accept_bytes(b"c").unwrap();
        assert!(x.only_end());
    }

    #[test]
    fn multibyte_split_across_tokens() {
        let mut x = m("root ::= [é-ê] \"x\"\n");
        let e = "é".as_bytes();
        assert!(x.token_allowed(&e[..1]).unwrap());
        // ö shares é's lead byte, so its first byte may start an allowed character; all of it may not
        assert!(x.token_allowed(&"ö".as_bytes()[..1]).unwrap());
        assert!(!x.token_allowed("ö".as_bytes()).unwrap());
        assert!(!x.token_allowed(&"中".as_bytes()[..1]).unwrap());
        x.accept_bytes(&e[..1]).unwrap();
        assert!(!x.can_end());
        assert!(x.token_allowed(&[e[1], b'x']).unwrap());
        assert!(!x.token_allowed(&[0x80]).unwrap());
        x.accept_bytes(&[e[1]]).unwrap();
        x.accept_bytes(b"x").unwrap();
        assert!(x.only_end());
    }

    #[test]
    fn repetition_bounds() {
        let mut x = m("root ::= \"a\"{2,3}\n");
        assert!(!x.matches_completely(b"a").unwrap());
        assert!(x.matches_completely(b"aa").unwrap());
        assert!(x.matches_completely(b"aaa").unwrap());
        assert!(!x.matches_completely(b"aaaa").unwrap());
    }

    #[test]
    fn trie_filter_agrees_with_single_checks() {
        let pieces: Vec<Vec<u8>> = [
            "a", "ab", "b", "{", "{\"", "\"", "é", "\u{e9}x", "1", "12", "}", " ",
        ]
        .iter()
        .map(|s| s.as_bytes().to_vec())
        .chain([vec![0xC3u8], vec![0xA9u8, b'1']])
        .collect();
        let trie = TokenTrie::build(&pieces, |_| false);
        let mut x = m("root ::= \"{\" [aé]* [0-9]* \"}\"\n");
        for prefix in [&b""[..], b"{", "{é".as_bytes(), b"{a1"] {
            let mut y = m("root ::= \"{\" [aé]* [0-9]* \"}\"\n");
            y.accept_bytes(prefix).unwrap();
            let mut got = Vec::new();
            y.allowed_tokens(&trie, &pieces, &mut got).unwrap();
            got.sort();
            let want: Vec<u32> = (0..pieces.len() as u32)
                .filter(|&t| y.token_allowed(&pieces[t as usize]).unwrap())
                .collect();
            assert_eq!(got, want, "prefix {prefix:?}");
        }
        assert!(x.token_allowed(b"{").unwrap());
    }

    #[test]
    fn right_recursion_keeps_stacks_bounded() {
        let mut x = m("root ::= item*\nitem ::= \"a\" | \"b\"\n");
        for _ in 0..10_000 {
            x.accept_bytes(b"ab").unwrap();
        }
        assert!(x.nodes.len() < 100);
    }
}

#[cfg(test)]
mod perf_probe {
    use super::*;

    #[test]
    #[ignore]
    fn probe_walk_cost() {
        // Token bytes as (u32 length, bytes)*, e.g. dumped from a GGUF vocabulary.
        let path =
            std::env::var("RLLAMA_PIECES").unwrap_or_else(|_| "/tmp/smollm2_pieces.bin".into());
        let Ok(raw) = std::fs::read(path) else { return };
        let mut pieces = Vec::new();
        let mut i = 0;
        while i < raw.len() {
            let n = u32::from_le_bytes(raw[i..i + 4].try_into().unwrap()) as usize;
            pieces.push(raw[i + 4..i + 4 + n].to_vec());
            i += 4 + n;
        }
        let trie = TokenTrie::build(&pieces, |_| false);
        for g in [
            "root ::= \"\\\"\" [^\"]{0,1900} \"\\\"\"\n",
            "root ::= \"\\\"\" [^\"]* \"\\\"\"\n",
        ] {
            let mut m = Matcher::new(Grammar::parse(g).unwrap()).unwrap();
            m.accept_bytes(b"\"").unwrap();
            let mut out = Vec::new();
            let t0 = std::time::Instant::now();
            for i in 0..50 {
                m.walk_cache.clear();
                m.allowed_tokens(&trie, &pieces, &mut out).unwrap();
                m.accept_bytes(b"abc").unwrap();
                if i % 10 == 0 {
                    eprintln!(
                        "states {} cp {} nodes {} cache {} allowed {}",
                        m.dfa.states.len(),
                        m.dfa.cp_trans.len(),
                        m.nodes.len(),
                        m.cache.len(),
                        out.len()
                    );
                }
            }
            eprintln!(
                "{g:?}: {} tokens {} trie nodes: {:?} per walk",
                pieces.len(),
                trie.n_nodes(),
                t0.elapsed() / 50
            );
        }
    }
}
