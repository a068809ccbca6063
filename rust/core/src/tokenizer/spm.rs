//! SentencePiece BPE ("llama" tokenizer model): merge the adjacent pair whose joined text is the
//! highest-scoring vocabulary token, leftmost first on ties, until none is left; characters that
//! never became a token fall back to `<0xXX>` byte tokens.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use rustc_hash::{FxHashMap, FxHashSet};

use super::Vocab;

#[derive(Clone, Copy)]
struct Sym {
    start: u32,
    len: u32,
    prev: i32,
    next: i32,
}

struct Bigram {
    score: f32,
    left: i32,
    right: i32,
    size: u32,
}

impl PartialEq for Bigram {
    fn eq(&self, o: &Self) -> bool {
        self.cmp(o) == Ordering::Equal
    }
}
impl Eq for Bigram {}
impl PartialOrd for Bigram {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Bigram {
    /// Max-heap order: higher score first, then the leftmost pair.
    fn cmp(&self, o: &Self) -> Ordering {
        self.score
            .partial_cmp(&o.score)
            .unwrap_or(Ordering::Equal)
            .then_with(|| o.left.cmp(&self.left))
    }
}

/// Reusable buffers for one tokenize call, plus the segments already tokenized in it.
#[derive(Default)]
pub struct SpmScratch {
    syms: Vec<Sym>,
    heap: BinaryHeap<Bigram>,
    cache: FxHashMap<Box<[u8]>, (u32, u32)>,
    cache_ids: Vec<u32>,
}

impl SpmScratch {
    /// Drop the working buffers a very long word or segment left behind (the cache stays).
    pub fn trim(&mut self) {
        if self.syms.capacity() > 1 << 16 {
            self.syms = Vec::new();
            self.heap = BinaryHeap::new();
        }
    }
}

const ESCAPED_SPACE: &[u8] = "\u{2581}".as_bytes();

/// The characters `c` for which some token contains `c` directly followed by U+2581.
pub fn space_joiners(texts: &[String]) -> FxHashSet<char> {
    let mut set = FxHashSet::default();
    for t in texts {
        let mut prev = None;
        for c in t.chars() {
            if c == '\u{2581}' {
                if let Some(p) = prev {
                    set.insert(p);
                }
            }
            prev = Some(c);
        }
    }
    set
}

/// Tokenize `text` (spaces escaped) in independent segments: a cut before U+2581 is exact when
/// no token contains the character before it followed by U+2581, since then no merge (and no
/// candidate pair) can span the cut, and the merge order inside a segment is the global order
/// restricted to it. Repeated segments come from a cache.
pub fn tokenize_segmented(
    v: &Vocab,
    text: &[u8],
    joiners: &FxHashSet<char>,
    scratch: &mut SpmScratch,
    out: &mut Vec<u32>,
) {
    let mut start = 0usize;
    let mut i = 0usize;
    let mut prev: Option<char> = None;
    while i < text.len() {
        let n = utf8_len(text[i]).min(text.len() - i);
        if text[i..].starts_with(ESCAPED_SPACE) && i > start {
            if let Some(p) = prev {
                if !joiners.contains(&p) {
                    segment(v, &text[start..i], scratch, out);
                    start = i;
                }
            }
        }
        prev = if n == 1 {
            Some(text[i] as char)
        } else {
            std::str::from_utf8(&text[i..i + n])
                .ok()
                .and_then(|s| s.chars().next())
        };
        i += n;
    }
    if start < text.len() {
        segment(v, &text[start..], scratch, out);
    }
}

fn segment(v: &Vocab, seg: &[u8], s: &mut SpmScratch, out: &mut Vec<u32>) {
    if seg.len() <= 64 {
        if let Some(&(a, n)) = s.cache.get(seg) {
            out.extend_from_slice(&s.cache_ids[a as usize..(a + n) as usize]);
            return;
        }
    }
    let before = out.len();
    tokenize(v, seg, s, out);
    if seg.len() <= 64 && s.cache.len() < 1 << 16 {
        let a = s.cache_ids.len() as u32;
        s.cache_ids.extend_from_slice(&out[before..]);
        s.cache.insert(seg.into(), (a, (out.len() - before) as u32));
    }
}

fn try_add(v: &Vocab, text: &[u8], syms: &[Sym], heap: &mut BinaryHeap<Bigram>, l: i32, r: i32) {
    if l < 0 || r < 0 {
        return;
    }
    let (a, b) = (syms[l as usize], syms[r as usize]);
    let s = &text[a.start as usize..(b.start + b.len) as usize];
    if let Some(id) = v.lookup(s) {
        heap.push(Bigram {
            score: v.scores[id as usize],
            left: l,
            right: r,
            size: s.len() as u32,
        });
    }
}

/// Tokenize `text` (spaces already escaped to U+2581) and append ids to `out`.
pub fn tokenize(v: &Vocab, text: &[u8], scratch: &mut SpmScratch, out: &mut Vec<u32>) {
    let syms = &mut scratch.syms;
    let heap = &mut scratch.heap;
    syms.clear();
    heap.clear();
    let mut off = 0usize;
    while off < text.len() {
        let n = utf8_len(text[off]).min(text.len() - off);
        let idx = syms.len() as i32;
        off += n;
        syms.push(Sym {
            start: (off - n) as u32,
            len: n as u32,
            prev: idx - 1,
            next: if off == text.len() { -1 } else { idx + 1 },
        });
    }
    for i in 1..syms.len() as i32 {
        try_add(v, text, syms, heap, i - 1, i);
    }
    while let Some(bg) = heap.pop() {
        let (l, r) = (bg.left as usize, bg.right as usize);
        if syms[l].len == 0 || syms[r].len == 0 || syms[l].len + syms[r].len != bg.size {
            continue;
        }
        syms[l].len += syms[r].len;
        syms[r].len = 0;
        syms[l].next = syms[r].next;
        let rn = syms[r].next;
        if rn >= 0 {
            syms[rn as usize].prev = bg.left;
        }
        let (p, nx) = (syms[l].prev, syms[l].next);
        try_add(v, text, syms, heap, p, bg.left);
        try_add(v, text, syms, heap, bg.left, nx);
    }
    if syms.is_empty() {
        return;
    }
    let mut i = 0i32;
    while i != -1 {
        let s = syms[i as usize];
        let piece = &text[s.start as usize..(s.start + s.len) as usize];
        match v.lookup(piece) {
            Some(id) => out.push(id),
            None => {
                // A merged symbol is always a token, so only single characters get here.
                for &b in piece {
                    if let Some(id) = v.byte_token(b) {
                        out.push(id);
                    }
                }
            }
        }
        i = s.next;
    }
}

#[inline]
pub fn utf8_len(b: u8) -> usize {
    const LOOKUP: [usize; 16] = [1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 3, 4];
    LOOKUP[(b >> 4) as usize]
}
