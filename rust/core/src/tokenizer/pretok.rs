//! Pre-tokenizers for byte-level BPE, chosen by `tokenizer.ggml.pre`.
//!
//! A pre-tokenizer is a list of steps applied in order; each step splits every current chunk into
//! its matches and the gaps between them (both kept), and never looks across a chunk's edges —
//! the way llama.cpp's `unicode_regex_split` refines offsets. The hot splitters (GPT-2, Llama-3,
//! Qwen-2, single digits) are hand-written state machines over code points; the rarer ones use
//! `fancy-regex` with the expressions from the models' `tokenizer.json`.

use std::sync::OnceLock;

use fancy_regex::Regex;

use crate::{Error, Result};

pub(crate) const F_LETTER: u8 = 1;
pub(crate) const F_NUMBER: u8 = 2;
pub(crate) const F_SPACE: u8 = 4;
pub(crate) const F_PUNCT: u8 = 8;
pub(crate) const F_SYMBOL: u8 = 16;
/// \p{C} other than unassigned (llama.cpp's "control").
pub(crate) const F_CONTROL: u8 = 32;
pub(crate) const F_MARK: u8 = 64;

/// Per-code-point flags (letter, number, white space, punctuation, symbol, control, mark) for
/// the whole Unicode range, built once from regex-syntax's Unicode tables. Bit 0x80 stays free.
pub(crate) fn flag_table() -> &'static [u8] {
    static TABLE: OnceLock<Vec<u8>> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut t = vec![0u8; 0x110000];
        for (pat, flag) in [
            (r"\p{L}", F_LETTER),
            (r"\p{N}", F_NUMBER),
            (r"\s", F_SPACE),
            (r"\p{P}", F_PUNCT),
            (r"\p{S}", F_SYMBOL),
            (r"[\p{Cc}\p{Cf}\p{Co}]", F_CONTROL),
            (r"\p{M}", F_MARK),
        ] {
            for (lo, hi) in class_ranges(pat) {
                for x in &mut t[lo as usize..=hi as usize] {
                    *x |= flag;
                }
            }
        }
        t
    })
}

fn class_ranges(pat: &str) -> Vec<(u32, u32)> {
    use regex_syntax::hir::{Class, HirKind};
    let Ok(hir) = regex_syntax::Parser::new().parse(pat) else {
        return Vec::new();
    };
    match hir.kind() {
        HirKind::Class(Class::Unicode(c)) => c
            .ranges()
            .iter()
            .map(|r| (r.start() as u32, r.end() as u32))
            .collect(),
        _ => Vec::new(),
    }
}

/// The steps of one pre-tokenizer.
#[derive(Debug)]
pub enum Step {
    /// `'s|'t|…| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)`
    Gpt2,
    /// Llama-3 style (case-insensitive contractions, `[^\r\n\p{L}\p{N}]?\p{L}+`, newline runs),
    /// with digit runs cut every `max_digits` (3 for llama3, 1 for qwen2).
    Llama3 { max_digits: usize },
    /// `\p{N}`: every number code point alone.
    Digit,
    /// Anything else, by regex. `wide`: the regex names no Unicode category, and llama.cpp then
    /// runs it on the text with every non-ASCII white space character replaced by U+000B.
    Regex(Box<Regex>, bool),
}

#[derive(Debug)]
pub struct PreTokenizer {
    steps: Vec<Step>,
}

fn re(p: &str) -> Result<Step> {
    Regex::new(p)
        .map(|r| Step::Regex(Box::new(r), !p.contains(r"\p{")))
        .map_err(|e| Error::load(format!("pre-tokenizer regex {p:?}: {e}")))
}

const GPT2_RE: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)";
const LLAMA3_RE: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
// gpt-4o and tekken as llama.cpp runs them: "upper" means a letter other than a-z and "lower" a
// letter other than A-Z (its adaptation of the \p{Lu}/\p{Ll} classes, marks left out).
const GPT4O_RE: &str = r"[^\r\n\p{L}\p{N}]?(?:(?=\p{L})[^a-z])*(?:(?=\p{L})[^A-Z])+(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?|[^\r\n\p{L}\p{N}]?(?:(?=\p{L})[^a-z])+(?:(?=\p{L})[^A-Z])*(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const TEKKEN_RE: &str = r"[^\r\n\p{L}\p{N}]?(?:(?=\p{L})[^a-z])*(?:(?=\p{L})[^A-Z])+|[^\r\n\p{L}\p{N}]?(?:(?=\p{L})[^a-z])+(?:(?=\p{L})[^A-Z])*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const BLOOM_RE: &str = r" ?[^(\s|.,!?…。，、।۔،)]+";

impl PreTokenizer {
    /// The pre-tokenizer llama.cpp uses for `tokenizer.ggml.pre` = `pre` (empty: "default").
    pub fn for_pre(pre: &str) -> Result<Self> {
        use Step::*;
        let steps = match pre {
            "" | "default" => vec![
                re(r"[\p{P}\$\+<=>\^~\|]+")?,
                Gpt2,
                re(r"\p{N}+")?,
                re(r"[0-9][0-9][0-9]")?,
            ],
            "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "falcon-h1" | "pixtral"
            | "midm-2.0" | "lfm2" | "dbrx" | "smaug-bpe" | "chatglm-bpe" | "glm4" => {
                vec![Llama3 { max_digits: 3 }]
            }
            "qwen2" | "deepseek-r1-qwen" | "stablelm2" | "hunyuan" => {
                vec![Llama3 { max_digits: 1 }]
            }
            "deepseek-llm" => vec![
                re(r"[\r\n]")?,
                re(
                    r"\s?[A-Za-zµÀ-ÖØ-öø-ƺƼ-ƿǄ-ʓʕ-ʯͰ-ͳͶͷͻ-ͽͿΆΈ-ΊΌΎ-ΡΣ-ϵϷ-ҁҊ-ԯԱ-ՖႠ-ჅᎠ-Ᏽᏸ-ᏽᲐ-ᲺᲽ-Ჿᴀ-ᴫᵫ-ᵷᵹ-ᶚḀ-ἕἘ-Ἕἠ-ὅὈ-Ὅὐ-ὗὙὛὝὟ-\x{1F7D}ᾀ-ᾴᾶ-ᾼ\x{1FBE}ῂ-ῄῆ-ῌῐ-\x{1FD3}ῖ-\x{1FDB}ῠ-Ῥῲ-ῴῶ-ῼℂℇℊ-ℓℕℙ-ℝℤ\x{2126}ℨ\x{212A}-ℭℯ-ℴℹℼ-ℿⅅ-ⅉⅎↃↄⰀ-ⱻⱾ-ⳤⳫ-ⳮⳲⳳꙀ-ꙭꚀ-ꚛꜢ-ꝯꝱ-ꞇꞋ-ꞎꭰ-ꮿﬀ-ﬆﬓ-ﬗＡ-Ｚａ-ｚ𐐀-𐑏𐒰-𐓓𐓘-𐓻𐲀-𐲲𐳀-𐳲𑢠-𑣟𞤀-𞥃]+",
                )?,
                re(r"\s?[!-/:-~！-／：-～‘-‟　-。]+")?,
                re(r"\s+$")?,
                re(r"[一-龥ࠀ-一가-퟿]+")?,
                re(r"\p{N}+")?,
            ],
            "deepseek-coder" => vec![
                re(r"[\r\n]")?,
                re(r"\s?\p{L}+")?,
                re(r"\s?\p{P}+")?,
                re(r"[一-龥ࠀ-一가-퟿]+")?,
                re(r"\p{N}")?,
            ],
            "falcon" => vec![re(r"[\p{P}\$\+<=>\^~\|`]+")?, Gpt2, re(r"[0-9][0-9][0-9]")?],
            "starcoder" | "refact" | "command-r" | "smollm" | "codeshell" | "exaone"
            | "minerva-7b" => {
                vec![Digit, Gpt2]
            }
            "gpt-2" | "phi-2" | "jina-es" | "jina-de" | "gigachat" | "jina-v2-es"
            | "jina-v2-de" | "jina-v1-en" | "jina-v2-code" | "roberta-bpe" | "mpt" | "olmo"
            | "jais" | "trillion" | "granite-docling" | "a.x-4.0" | "mellum" | "modern-bert" => {
                vec![Gpt2]
            }
            "poro-chat" | "bloom" | "gpt3-finnish" => vec![re(BLOOM_RE)?],
            "viking" => vec![re(BLOOM_RE)?, Digit],
            "tekken" => vec![re(TEKKEN_RE)?],
            "gpt-4o" | "llama4" | "minimax-m2" => vec![re(GPT4O_RE)?],
            other => {
                return Err(Error::load(format!(
                    "unknown pre-tokenizer type: '{other}'"
                )));
            }
        };
        Ok(PreTokenizer { steps })
    }

    /// Split `text` into pre-token byte ranges, appended to `out` (cleared first).
    pub fn split(&self, text: &str, out: &mut Vec<(usize, usize)>) {
        out.clear();
        if text.is_empty() {
            return;
        }
        out.push((0, text.len()));
        let mut next = Vec::with_capacity(text.len() / 3 + 4);
        let mut cps: Vec<(u32, u32)> = Vec::new();
        for step in &self.steps {
            next.clear();
            for &(s, e) in out.iter() {
                let chunk = &text[s..e];
                match step {
                    Step::Regex(r, false) => split_regex(r, chunk, s, &mut next),
                    Step::Regex(r, true) => split_regex_wide(r, chunk, s, &mut next),
                    _ => {
                        cps.clear();
                        cps.extend(
                            chunk
                                .char_indices()
                                .map(|(i, c)| ((s + i) as u32, c as u32)),
                        );
                        match step {
                            Step::Gpt2 => split_gpt2(&cps, e, &mut next),
                            Step::Llama3 { max_digits } => {
                                split_llama3(&cps, e, *max_digits, &mut next)
                            }
                            Step::Digit => split_digit(&cps, e, &mut next),
                            Step::Regex(..) => {}
                        }
                    }
                }
            }
            std::mem::swap(out, &mut next);
        }
    }
}

fn split_regex(r: &Regex, chunk: &str, base: usize, out: &mut Vec<(usize, usize)>) {
    let mut last = 0;
    for m in r.find_iter(chunk) {
        let Ok(m) = m else { break };
        if m.start() == m.end() {
            continue;
        }
        if m.start() > last {
            out.push((base + last, base + m.start()));
        }
        out.push((base + m.start(), base + m.end()));
        last = m.end();
    }
    if last < chunk.len() {
        out.push((base + last, base + chunk.len()));
    }
}

fn is_wide_space(c: char) -> bool {
    c as u32 > 0x7F && flag_table()[c as usize] & F_SPACE != 0
}

/// [`split_regex`] on the chunk with non-ASCII white space read as U+000B (offsets mapped back).
fn split_regex_wide(r: &Regex, chunk: &str, base: usize, out: &mut Vec<(usize, usize)>) {
    if !chunk.chars().any(is_wide_space) {
        return split_regex(r, chunk, base, out);
    }
    let mut t = String::with_capacity(chunk.len());
    let mut map = Vec::with_capacity(chunk.len() + 1);
    for (i, c) in chunk.char_indices() {
        if is_wide_space(c) {
            t.push('\u{b}');
            map.push(i);
        } else {
            t.push(c);
            map.extend(i..i + c.len_utf8());
        }
    }
    map.push(chunk.len());
    let mut tmp = Vec::new();
    split_regex(r, &t, 0, &mut tmp);
    out.extend(tmp.into_iter().map(|(a, b)| (base + map[a], base + map[b])));
}

/// Code points of one chunk, with out-of-chunk reads as `None` (regexes never see past a chunk).
struct Cursor<'a> {
    cps: &'a [(u32, u32)],
    end: usize,
    table: &'static [u8],
}

const OUT: u32 = u32::MAX;

impl Cursor<'_> {
    #[inline]
    fn cpt(&self, i: usize) -> u32 {
        self.cps.get(i).map_or(OUT, |c| c.1)
    }
    /// Flags; 0x80 marks "in range" so a chunk edge reads as no flags at all.
    #[inline]
    fn flags(&self, i: usize) -> u8 {
        match self.cps.get(i) {
            Some(&(_, c)) => self.table[c as usize] | 0x80,
            None => 0,
        }
    }
    #[inline]
    fn offset(&self, i: usize) -> usize {
        self.cps.get(i).map_or(self.end, |c| c.0 as usize)
    }
}

struct Emitter<'a> {
    out: &'a mut Vec<(usize, usize)>,
    prev: usize,
}

impl Emitter<'_> {
    #[inline]
    fn add(&mut self, cur: &Cursor, end: usize) -> usize {
        let (a, b) = (cur.offset(self.prev), cur.offset(end));
        if b > a {
            self.out.push((a, b));
        }
        self.prev = end;
        end
    }
}

#[inline]
fn lower(c: u32) -> u32 {
    if (b'A' as u32..=b'Z' as u32).contains(&c) {
        c + 32
    } else {
        c
    }
}

fn contraction_len(cur: &Cursor, pos: usize, fold: bool) -> usize {
    let n = cur.cps.len();
    if cur.cpt(pos) != '\'' as u32 || pos + 1 >= n {
        return 0;
    }
    let f = |c: u32| if fold { lower(c) } else { c };
    let c1 = f(cur.cpt(pos + 1));
    if [b's', b't', b'm', b'd'].iter().any(|&b| c1 == b as u32) {
        return 2;
    }
    if pos + 2 < n {
        let c2 = f(cur.cpt(pos + 2));
        let pair = |a: u8, b: u8| c1 == a as u32 && c2 == b as u32;
        if pair(b'r', b'e') || pair(b'v', b'e') || pair(b'l', b'l') {
            return 3;
        }
    }
    0
}

const LNS: u8 = F_LETTER | F_NUMBER | F_SPACE;

fn split_gpt2(cps: &[(u32, u32)], end: usize, out: &mut Vec<(usize, usize)>) {
    let cur = Cursor {
        cps,
        end,
        table: flag_table(),
    };
    let mut em = Emitter { out, prev: 0 };
    let n = cps.len();
    let mut pos = 0;
    while pos < n {
        let cpt = cur.cpt(pos);
        let flags = cur.flags(pos);
        let cl = contraction_len(&cur, pos, false);
        if cl > 0 {
            pos = em.add(&cur, pos + cl);
            continue;
        }
        let sp = usize::from(cpt == ' ' as u32);
        let flags2 = if sp == 1 { cur.flags(pos + 1) } else { flags };
        if flags2 & F_LETTER != 0 {
            pos += sp;
            while cur.flags(pos) & F_LETTER != 0 {
                pos += 1;
            }
            em.add(&cur, pos);
            continue;
        }
        if flags2 & F_NUMBER != 0 {
            pos += sp;
            while cur.flags(pos) & F_NUMBER != 0 {
                pos += 1;
            }
            em.add(&cur, pos);
            continue;
        }
        if flags2 & LNS == 0 && flags2 != 0 {
            pos += sp;
            loop {
                let f = cur.flags(pos);
                if f & LNS != 0 || f == 0 {
                    break;
                }
                pos += 1;
            }
            em.add(&cur, pos);
            continue;
        }
        let mut nws = 0;
        while cur.flags(pos + nws) & F_SPACE != 0 {
            nws += 1;
        }
        if nws > 1 && cur.cpt(pos + nws) != OUT {
            pos = em.add(&cur, pos + nws - 1);
            continue;
        }
        if nws > 0 {
            pos = em.add(&cur, pos + nws);
            continue;
        }
        pos = em.add(&cur, pos + 1);
    }
}

fn split_llama3(cps: &[(u32, u32)], end: usize, max_digits: usize, out: &mut Vec<(usize, usize)>) {
    let cur = Cursor {
        cps,
        end,
        table: flag_table(),
    };
    let mut em = Emitter { out, prev: 0 };
    let n = cps.len();
    let mut pos = 0;
    while pos < n {
        let cpt = cur.cpt(pos);
        let flags = cur.flags(pos);
        let cl = contraction_len(&cur, pos, true);
        if cl > 0 {
            pos = em.add(&cur, pos + cl);
            continue;
        }
        let is_nl = |c: u32| c == '\r' as u32 || c == '\n' as u32;
        if !(is_nl(cpt) || flags & F_NUMBER != 0)
            && (flags & F_LETTER != 0 || cur.flags(pos + 1) & F_LETTER != 0)
        {
            pos += 1;
            while cur.flags(pos) & F_LETTER != 0 {
                pos += 1;
            }
            em.add(&cur, pos);
            continue;
        }
        if flags & F_NUMBER != 0 {
            let mut ini = pos;
            while cur.flags(pos) & F_NUMBER != 0 {
                pos += 1;
                if pos - ini >= max_digits {
                    em.add(&cur, pos);
                    ini = pos;
                }
            }
            em.add(&cur, pos);
            continue;
        }
        let sp = usize::from(cpt == ' ' as u32);
        let flags2 = if sp == 1 { cur.flags(pos + 1) } else { flags };
        if flags2 & LNS == 0 && flags2 != 0 {
            pos += sp;
            loop {
                let f = cur.flags(pos);
                if f & LNS != 0 || f == 0 {
                    break;
                }
                pos += 1;
            }
            while is_nl(cur.cpt(pos)) {
                pos += 1;
            }
            em.add(&cur, pos);
            continue;
        }
        let mut nws = 0;
        let mut last_nl = 0;
        while cur.flags(pos + nws) & F_SPACE != 0 {
            if is_nl(cur.cpt(pos + nws)) {
                last_nl = pos + nws + 1;
            }
            nws += 1;
        }
        if last_nl > 0 {
            pos = em.add(&cur, last_nl);
            continue;
        }
        if nws > 1 && cur.cpt(pos + nws) != OUT {
            pos = em.add(&cur, pos + nws - 1);
            continue;
        }
        if nws > 0 {
            pos = em.add(&cur, pos + nws);
            continue;
        }
        pos = em.add(&cur, pos + 1);
    }
}

fn split_digit(cps: &[(u32, u32)], end: usize, out: &mut Vec<(usize, usize)>) {
    let cur = Cursor {
        cps,
        end,
        table: flag_table(),
    };
    let mut em = Emitter { out, prev: 0 };
    for pos in 0..cps.len() {
        if cur.flags(pos) & F_NUMBER != 0 {
            em.add(&cur, pos);
            em.add(&cur, pos + 1);
        }
    }
    em.add(&cur, cps.len());
}

/// The regex a hand-written step stands for (tests compare the two).
pub fn reference_regex(step: &Step) -> Option<&'static str> {
    match step {
        Step::Gpt2 => Some(GPT2_RE),
        Step::Llama3 { max_digits: 3 } => Some(LLAMA3_RE),
        Step::Digit => Some(r"\p{N}"),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pieces(pre: &str, text: &str) -> Vec<String> {
        let p = PreTokenizer::for_pre(pre).unwrap();
        let mut v = Vec::new();
        p.split(text, &mut v);
        v.iter().map(|&(a, b)| text[a..b].to_string()).collect()
    }

    fn by_regex(step: Step, text: &str) -> Vec<String> {
        let r = Regex::new(reference_regex(&step).unwrap()).unwrap();
        let mut v = Vec::new();
        split_regex(&r, text, 0, &mut v);
        v.iter().map(|&(a, b)| text[a..b].to_string()).collect()
    }

    const SAMPLES: &[&str] = &[
        "Hello world",
        "  two leading spaces",
        "trailing spaces   ",
        "I'm here, you're there; they'll've DON'T",
        "line one\nline two\n\n  line four\r\n",
        "\ttab\tseparated\tvalues",
        "numbers 1234567 and 3.14159, ٣٤٥",
        "def f(x):\n    return x**2  # comment\n",
        "日本語のテキスト and émojis 🎉🎉!!",
        "a  b   c    ",
        "!!!   ???\n\n\n",
    ];

    #[test]
    fn gpt2_splitter_matches_its_regex() {
        for s in SAMPLES {
            assert_eq!(pieces("gpt-2", s), by_regex(Step::Gpt2, s), "{s:?}");
        }
    }

    #[test]
    fn llama3_splitter_matches_its_regex() {
        for s in SAMPLES {
            assert_eq!(
                pieces("llama-bpe", s),
                by_regex(Step::Llama3 { max_digits: 3 }, s),
                "{s:?}"
            );
        }
    }

    #[test]
    fn gpt4o_splits_camel_case_and_keeps_contractions() {
        assert_eq!(
            pieces("gpt-4o", "HelloWorld don't"),
            vec!["Hello", "World", " don't"]
        );
        assert_eq!(pieces("gpt-4o", "x 12345"), vec!["x", " ", "123", "45"]);
        assert_eq!(
            pieces("tekken", "ÉtéOK 12"),
            vec!["Été", "OK", " ", "1", "2"]
        );
    }

    #[test]
    fn category_free_regexes_see_wide_spaces_as_vertical_tab() {
        // U+2003 lies in deepseek's [ࠀ-一] range, but llama.cpp reads it as U+000B there
        assert_eq!(
            pieces("deepseek-llm", "P \u{2003}x"),
            vec!["P", " ", "\u{2003}x"]
        );
        assert_eq!(pieces("bloom", "a\u{3000}b"), vec!["a", "\u{3000}", "b"]);
    }

    #[test]
    fn smollm_splits_digits_alone() {
        assert_eq!(pieces("smollm", "ab 123"), vec!["ab", " ", "1", "2", "3"]);
        assert_eq!(pieces("qwen2", "x 123"), vec!["x", " ", "1", "2", "3"]);
        assert_eq!(pieces("llama3", "12345"), vec!["123", "45"]);
    }

    #[test]
    fn every_named_pre_builds_and_covers_the_text() {
        for pre in [
            "default",
            "gpt-2",
            "llama3",
            "llama-bpe",
            "smollm",
            "qwen2",
            "deepseek-llm",
            "deepseek-coder",
            "falcon",
            "starcoder",
            "refact",
            "command-r",
            "gpt-4o",
            "tekken",
            "olmo",
            "dbrx",
            "chatglm-bpe",
            "poro-chat",
            "viking",
            "jais",
            "bloom",
        ] {
            for s in SAMPLES {
                let v = pieces(pre, s);
                assert_eq!(v.concat(), *s, "{pre} {s:?}");
                assert!(v.iter().all(|p| !p.is_empty()));
            }
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]
        #[test]
        fn hand_written_splitters_equal_their_regexes(
            s in proptest::collection::vec(proptest::sample::select(vec![
                'a', 'B', 'z', 's', 't', 'r', 'e', 'v', 'l', 'd', 'm', 'S', 'T', 'L', 'é', 'ß', 'Ж', '中',
                '0', '7', '٣', '½', ' ', ' ', ' ', '\t', '\n', '\r', '\u{a0}', '\u{3000}', '\'', '\'',
                '.', ',', '!', '(', '_', '-', '🎉', '\u{301}', '\u{40000}',
            ]), 0..24)
        ) {
            let text: String = s.into_iter().collect();
            proptest::prop_assert_eq!(pieces("gpt-2", &text), by_regex(Step::Gpt2, &text));
            proptest::prop_assert_eq!(pieces("llama-bpe", &text), by_regex(Step::Llama3 { max_digits: 3 }, &text));
        }
    }

    #[test]
    fn unknown_pre_is_a_load_error_naming_it() {
        let e = PreTokenizer::for_pre("no-such-pre").unwrap_err();
        assert!(matches!(e, Error::ModelLoad(_)));
        assert!(e.to_string().contains("no-such-pre"));
    }
}
