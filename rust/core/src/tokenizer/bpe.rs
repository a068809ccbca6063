//! Byte-level BPE ("gpt2" tokenizer model): pre-tokenize, then in each word merge the adjacent
//! pair with the lowest merge rank (leftmost on ties) until no ranked pair is left.
//!
//! Words are worked on as raw bytes: the GPT-2 byte-to-character mapping is undone once at load
//! (vocabulary and merges), so one symbol is one byte and a merge is a lookup of an id pair.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use rustc_hash::FxHashMap;

use super::Vocab;

/// The GPT-2 byte <-> printable character mapping.
pub fn byte_to_char(b: u8) -> char {
    let printable = matches!(b, 33..=126 | 161..=172 | 174..=255);
    if printable {
        b as char
    } else {
        let n = (0..b)
            .filter(|&x| !matches!(x, 33..=126 | 161..=172 | 174..=255))
            .count() as u32;
        char::from_u32(256 + n).unwrap_or('\u{FFFD}')
    }
}

/// Inverse of [`byte_to_char`] as a lookup table over code points 0..=0x143.
pub fn char_to_byte_table() -> Vec<i16> {
    let mut t = vec![-1i16; 0x144];
    for b in 0..=255u8 {
        t[byte_to_char(b) as usize] = b as i16;
    }
    t
}

/// Decode a byte-level token text to its raw bytes; `None` if a character is outside the map.
pub fn decode_token_text(text: &str, table: &[i16]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len());
    for c in text.chars() {
        let b = *table.get(c as usize)?;
        if b < 0 {
            return None;
        }
        out.push(b as u8);
    }
    Some(out)
}

#[derive(Clone, Copy)]
struct Sym {
    id: u32,
    start: u32,
    len: u32,
    prev: i32,
    next: i32,
}

#[derive(PartialEq, Eq)]
struct Bigram {
    rank: u32,
    left: i32,
    right: i32,
    lid: u32,
    rid: u32,
}

impl PartialOrd for Bigram {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Bigram {
    /// Max-heap order: lowest rank first, then the leftmost pair.
    fn cmp(&self, o: &Self) -> Ordering {
        o.rank.cmp(&self.rank).then_with(|| o.left.cmp(&self.left))
    }
}

pub const NONE: u32 = u32::MAX;

/// Reusable buffers for one tokenize call, plus a cache of the words already seen in it.
#[derive(Default)]
pub struct BpeScratch {
    syms: Vec<Sym>,
    heap: BinaryHeap<Bigram>,
    cache: FxHashMap<Box<[u8]>, (u32, u32)>,
    cache_ids: Vec<u32>,
}

impl BpeScratch {
    /// Drop the working buffers a very long word or segment left behind (the cache stays).
    pub fn trim(&mut self) {
        if self.syms.capacity() > 1 << 16 {
            self.syms = Vec::new();
            self.heap = BinaryHeap::new();
        }
    }
}

#[inline]
fn try_add(v: &Vocab, syms: &[Sym], heap: &mut BinaryHeap<Bigram>, l: i32, r: i32) {
    if l < 0 || r < 0 {
        return;
    }
    let (a, b) = (syms[l as usize].id, syms[r as usize].id);
    if a == NONE || b == NONE {
        return;
    }
    if let Some(&(rank, _)) = v.merges.get(&(a, b)) {
        heap.push(Bigram {
            rank,
            left: l,
            right: r,
            lid: a,
            rid: b,
        });
    }
}

/// BPE over one pre-tokenized word (raw bytes), appending ids to `out`.
pub fn tokenize_word(
    v: &Vocab,
    word: &[u8],
    ignore_merges: bool,
    s: &mut BpeScratch,
    out: &mut Vec<u32>,
) {
    if word.is_empty() {
        return;
    }
    if ignore_merges {
        if let Some(id) = v.lookup(word) {
            out.push(id);
            return;
        }
    }
    if word.len() <= 64 {
        if let Some(&(a, n)) = s.cache.get(word) {
            out.extend_from_slice(&s.cache_ids[a as usize..(a + n) as usize]);
            return;
        }
    }
    let before = out.len();
    bpe(v, word, s, out);
    if word.len() <= 64 && s.cache.len() < 1 << 16 {
        let a = s.cache_ids.len() as u32;
        s.cache_ids.extend_from_slice(&out[before..]);
        s.cache
            .insert(word.into(), (a, (out.len() - before) as u32));
    }
}

fn bpe(v: &Vocab, word: &[u8], s: &mut BpeScratch, out: &mut Vec<u32>) {
    let syms = &mut s.syms;
    let heap = &mut s.heap;
    syms.clear();
    heap.clear();
    let n = word.len();
    for (i, &b) in word.iter().enumerate() {
        syms.push(Sym {
            id: v.byte_ids[b as usize],
            start: i as u32,
            len: 1,
            prev: i as i32 - 1,
            next: if i + 1 == n { -1 } else { i as i32 + 1 },
        });
    }
    for i in 1..n as i32 {
        try_add(v, syms, heap, i - 1, i);
    }
    while let Some(bg) = heap.pop() {
        let (l, r) = (bg.left as usize, bg.right as usize);
        if syms[l].len == 0 || syms[r].len == 0 || syms[l].id != bg.lid || syms[r].id != bg.rid {
            continue;
        }
        let merged = v.merges.get(&(bg.lid, bg.rid)).map_or(NONE, |m| m.1);
        syms[l].len += syms[r].len;
        syms[l].id = merged;
        syms[r].len = 0;
        syms[l].next = syms[r].next;
        let rn = syms[r].next;
        if rn >= 0 {
            syms[rn as usize].prev = bg.left;
        }
        let (p, nx) = (syms[l].prev, syms[l].next);
        try_add(v, syms, heap, p, bg.left);
        try_add(v, syms, heap, bg.left, nx);
    }
    let mut i = 0i32;
    while i != -1 {
        let sym = syms[i as usize];
        if sym.id != NONE {
            out.push(sym.id);
        } else {
            for &b in &word[sym.start as usize..(sym.start + sym.len) as usize] {
                let id = v.byte_ids[b as usize];
                if id != NONE {
                    out.push(id);
                }
            }
        }
        i = sym.next;
    }
}

/// Merges keyed by the ids of both sides: (rank, id of the joined token).
pub type Merges = FxHashMap<(u32, u32), (u32, u32)>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_map_is_a_bijection() {
        let t = char_to_byte_table();
        for b in 0..=255u8 {
            assert_eq!(t[byte_to_char(b) as usize], b as i16);
        }
        assert_eq!(byte_to_char(b' '), 'Ġ');
        assert_eq!(byte_to_char(b'\n'), 'Ċ');
    }
}
