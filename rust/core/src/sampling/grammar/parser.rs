//! GBNF parser (llama.cpp's grammar syntax): `name ::= alternatives` rules, `|`, groups,
//! `*` `+` `?` `{m}` `{m,}` `{m,n}`, "literals", [classes] with ranges and `^` negation, `.`,
//! escapes (\x.. \u.... \U........ \t \n \r \\ \" \[ \] \-), `#` comments. A newline ends a rule
//! except inside parentheses or after `|`. Errors carry line and column.
//!
//! Hostile input is bounded: nesting depth, repetition counts (as llama.cpp: at most 2000, a
//! larger upper bound means unbounded) and the total size of the expanded grammar are capped, and
//! left recursion (which would make matching loop forever) is rejected after parsing.

use std::collections::HashMap;

use crate::{Error, Result};

pub const MAX_REPETITION: u64 = 2000;
const MAX_NESTING: usize = 200;
const MAX_ELEMENTS: usize = 2_000_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Elem {
    /// End of a rule's last alternative.
    End,
    /// End of one alternative (another follows).
    Alt,
    /// Reference to a rule by id.
    Ref(u32),
    /// Match one code point against a character class (by id).
    Chars(u32),
}

impl Elem {
    pub fn is_end(self) -> bool {
        matches!(self, Elem::End | Elem::Alt)
    }
}

/// A set of code points: ranges, possibly negated (`.` is a negated empty set).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct CharClass {
    pub negated: bool,
    pub ranges: Vec<(u32, u32)>,
}

impl CharClass {
    #[inline]
    pub fn matches(&self, c: u32) -> bool {
        let inside = self.ranges.iter().any(|&(lo, hi)| lo <= c && c <= hi);
        inside != self.negated
    }

    /// Whether no code point at all matches (`[]`, or a negation of every code point).
    pub fn matches_nothing(&self) -> bool {
        let mut r: Vec<(u32, u32)> = self
            .ranges
            .iter()
            .copied()
            .filter(|&(lo, hi)| lo <= hi)
            .collect();
        if !self.negated {
            return r.is_empty();
        }
        r.sort_unstable();
        let mut next = 0u32; // the first code point not yet covered
        for (lo, hi) in r {
            if lo > next {
                return false;
            }
            next = next.max(hi.saturating_add(1));
        }
        next > 0x10FFFF
    }

    /// Whether some code point in [lo, hi] matches.
    pub fn intersects(&self, lo: u32, hi: u32) -> bool {
        if self.negated {
            !self.ranges.iter().any(|&(a, b)| a <= lo && hi <= b)
        } else {
            self.ranges.iter().any(|&(a, b)| a <= hi && lo <= b)
        }
    }
}

/// A parsed grammar: rules as element sequences (alternatives separated by `Alt`, the last
/// terminated by `End`).
#[derive(Clone, Debug)]
pub struct ParsedGrammar {
    pub rules: Vec<Vec<Elem>>,
    pub names: Vec<String>,
    pub classes: Vec<CharClass>,
    pub root: u32,
    pub generated_from: Vec<Option<String>>,
}

struct Parser<'a> {
    src: &'a [u8],
    text: &'a str,
    pos: usize,
    symbols: HashMap<String, u32>,
    names: Vec<String>,
    rules: Vec<Option<Vec<Elem>>>,
    /// Where each rule was first referenced, for "undefined rule" errors.
    first_ref: Vec<usize>,
    classes: Vec<CharClass>,
    class_ids: HashMap<CharClass, u32>,
    depth: usize,
    n_elems: usize,
    /// For rules synthesized from groups and repetitions: the user's rule they came from.
    generated_from: Vec<Option<String>>,
}

fn show_char(c: u32) -> String {
    match char::from_u32(c) {
        Some(ch) if !ch.is_control() && ch != ' ' => ch.to_string(),
        _ => format!("\\x{{{c:X}}}"),
    }
}

fn is_word(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'-' || c == b'_'
}

pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text.as_bytes()[..offset];
    let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
    let line_start = before
        .iter()
        .rposition(|&b| b == b'\n')
        .map(|p| p + 1)
        .unwrap_or(0);
    let col = String::from_utf8_lossy(&before[line_start..])
        .chars()
        .count()
        + 1;
    (line, col)
}

pub fn grammar_error(text: &str, offset: usize, msg: &str) -> Error {
    let (line, col) = line_col(text, offset);
    Error::Grammar(format!(
        "Failed to parse grammar: {msg} at line {line}, column {col}"
    ))
}

impl<'a> Parser<'a> {
    fn err(&self, msg: &str) -> Error {
        grammar_error(self.text, self.pos, msg)
    }

    fn peek(&self) -> u8 {
        self.src.get(self.pos).copied().unwrap_or(0)
    }

    fn peek_at(&self, k: usize) -> u8 {
        self.src.get(self.pos + k).copied().unwrap_or(0)
    }

    fn at_end(&self) -> bool {
        self.pos >= self.src.len()
    }

    fn skip_space(&mut self, newline_ok: bool) {
        while !self.at_end() {
            match self.peek() {
                b' ' | b'\t' => self.pos += 1,
                b'#' => {
                    while !self.at_end() && self.peek() != b'\n' && self.peek() != b'\r' {
                        self.pos += 1;
                    }
                }
                b'\r' | b'\n' if newline_ok => self.pos += 1,
                _ => break,
            }
        }
    }

    fn symbol(&mut self, name: &str) -> u32 {
        if let Some(&id) = self.symbols.get(name) {
            return id;
        }
        let id = self.names.len() as u32;
        self.symbols.insert(name.to_string(), id);
        self.names.push(name.to_string());
        self.rules.push(None);
        self.first_ref.push(self.pos);
        id
    }

    fn fresh_symbol(&mut self, base: &str) -> u32 {
        let name = format!("{base}_{}", self.names.len());
        let id = self.symbol(&name);
        self.generated_from.resize(self.names.len(), None);
        self.generated_from[id as usize] = Some(base.to_string());
        id
    }

    fn class_id(&mut self, c: CharClass) -> u32 {
        if let Some(&id) = self.class_ids.get(&c) {
            return id;
        }
        let id = self.classes.len() as u32;
        self.classes.push(c.clone());
        self.class_ids.insert(c, id);
        id
    }

    fn count(&mut self, n: usize) -> Result<()> {
        self.n_elems += n;
        if self.n_elems > MAX_ELEMENTS {
            return Err(self.err("grammar too large after expanding repetitions"));
        }
        Ok(())
    }

    fn set_rule(&mut self, id: u32, rule: Vec<Elem>) -> Result<()> {
        self.count(rule.len())?;
        self.rules[id as usize] = Some(rule);
        Ok(())
    }

    fn parse_name(&mut self) -> Result<&'a str> {
        let start = self.pos;
        while is_word(self.peek()) {
            self.pos += 1;
        }
        if start == self.pos {
            return Err(self.err("expecting name"));
        }
        Ok(&self.text[start..self.pos])
    }

    fn parse_int(&mut self) -> Result<u64> {
        let start = self.pos;
        while self.peek().is_ascii_digit() {
            self.pos += 1;
        }
        if start == self.pos {
            return Err(self.err("expecting an integer"));
        }
        // Saturate absurdly long numbers; the repetition limits reject them right after.
        Ok(self.text[start..self.pos]
            .parse::<u64>()
            .unwrap_or(u64::MAX))
    }

    fn parse_hex(&mut self, n: usize) -> Result<u32> {
        let mut v: u32 = 0;
        for _ in 0..n {
            let c = self.peek();
            let d = match c {
                b'0'..=b'9' => c - b'0',
                b'a'..=b'f' => c - b'a' + 10,
                b'A'..=b'F' => c - b'A' + 10,
                _ => return Err(self.err(&format!("expecting {n} hex chars"))),
            };
            v = (v << 4) | d as u32;
            self.pos += 1;
        }
        Ok(v)
    }

    fn parse_char(&mut self) -> Result<u32> {
        if self.at_end() {
            return Err(self.err("unexpected end of input"));
        }
        if self.peek() == b'\\' {
            let e = self.peek_at(1);
            self.pos += 2;
            return match e {
                b'x' => self.parse_hex(2),
                b'u' => self.parse_hex(4),
                b'U' => self.parse_hex(8),
                b't' => Ok('\t' as u32),
                b'r' => Ok('\r' as u32),
                b'n' => Ok('\n' as u32),
                b'\\' | b'"' | b'[' | b']' | b'-' => Ok(e as u32),
                _ => {
                    self.pos -= 2;
                    Err(self.err("unknown escape"))
                }
            };
        }
        // The text is a &str, so this is a valid UTF-8 sequence.
        let ch = self.text[self.pos..]
            .chars()
            .next()
            .ok_or_else(|| self.err("unexpected end of input"))?;
        self.pos += ch.len_utf8();
        Ok(ch as u32)
    }

    fn parse_alternates(&mut self, rule_name: &str, rule_id: u32, nested: bool) -> Result<()> {
        let mut rule = Vec::new();
        self.parse_sequence(rule_name, &mut rule, nested)?;
        while self.peek() == b'|' {
            rule.push(Elem::Alt);
            self.pos += 1;
            self.skip_space(true);
            self.parse_sequence(rule_name, &mut rule, nested)?;
        }
        rule.push(Elem::End);
        self.set_rule(rule_id, rule)
    }

    fn repeat(
        &mut self,
        rule_name: &str,
        rule: &mut Vec<Elem>,
        last_start: usize,
        min: u64,
        max: Option<u64>,
    ) -> Result<()> {
        if last_start == rule.len() {
            return Err(self.err("expecting preceding item to */+/?/{"));
        }
        let item: Vec<Elem> = rule[last_start..].to_vec();
        // The item is emitted min times inline, then the optional part as right-recursive rules:
        // S{m,}  -> S..S R,  R ::= S R |
        // S{m,n} -> S..S R(n-m),  R(1) ::= S |,  R(k) ::= S R(k-1) |
        let copies = (min as usize).saturating_sub(1);
        self.count(copies.saturating_mul(item.len()))?;
        if min == 0 {
            rule.truncate(last_start);
        } else {
            for _ in 1..min {
                rule.extend_from_slice(&item);
            }
        }
        match max {
            None => {
                let r = self.fresh_symbol(rule_name);
                let mut body = item.clone();
                body.push(Elem::Ref(r));
                body.push(Elem::Alt);
                body.push(Elem::End);
                self.set_rule(r, body)?;
                rule.push(Elem::Ref(r));
            }
            Some(max) => {
                let n_opt = max - min;
                let mut last: Option<u32> = None;
                for _ in 0..n_opt {
                    let r = self.fresh_symbol(rule_name);
                    let mut body = item.clone();
                    if let Some(prev) = last {
                        body.push(Elem::Ref(prev));
                    }
                    body.push(Elem::Alt);
                    body.push(Elem::End);
                    self.set_rule(r, body)?;
                    last = Some(r);
                }
                if let Some(r) = last {
                    rule.push(Elem::Ref(r));
                }
            }
        }
        Ok(())
    }

    fn parse_sequence(
        &mut self,
        rule_name: &str,
        rule: &mut Vec<Elem>,
        nested: bool,
    ) -> Result<()> {
        let mut last_start = rule.len();
        while !self.at_end() {
            let c = self.peek();
            if c == b'"' {
                let open = self.pos;
                self.pos += 1;
                last_start = rule.len();
                while self.peek() != b'"' {
                    if self.at_end() {
                        return Err(grammar_error(
                            self.text,
                            open,
                            "unterminated string literal",
                        ));
                    }
                    let ch = self.parse_char()?;
                    let id = self.class_id(CharClass {
                        negated: false,
                        ranges: vec![(ch, ch)],
                    });
                    rule.push(Elem::Chars(id));
                    self.count(1)?;
                }
                self.pos += 1;
                self.skip_space(nested);
            } else if c == b'[' {
                let open = self.pos;
                self.pos += 1;
                let mut cls = CharClass {
                    negated: false,
                    ranges: Vec::new(),
                };
                if self.peek() == b'^' {
                    self.pos += 1;
                    cls.negated = true;
                }
                while self.peek() != b']' {
                    if self.at_end() {
                        return Err(grammar_error(
                            self.text,
                            open,
                            "unterminated character class",
                        ));
                    }
                    let range_at = self.pos;
                    let lo = self.parse_char()?;
                    let mut hi = lo;
                    if self.peek() == b'-' && self.peek_at(1) != b']' {
                        self.pos += 1;
                        if self.at_end() {
                            return Err(self.err("unexpected end of input in character class"));
                        }
                        hi = self.parse_char()?;
                    }
                    // A reversed range matches nothing: the grammar could never be followed.
                    if hi < lo {
                        return Err(grammar_error(
                            self.text,
                            range_at,
                            &format!(
                                "character range {}-{} is reversed (it matches no character)",
                                show_char(lo),
                                show_char(hi)
                            ),
                        ));
                    }
                    cls.ranges.push((lo, hi));
                }
                if cls.matches_nothing() {
                    return Err(grammar_error(
                        self.text,
                        open,
                        "character class matches no character",
                    ));
                }
                self.pos += 1;
                last_start = rule.len();
                let id = self.class_id(cls);
                rule.push(Elem::Chars(id));
                self.count(1)?;
                self.skip_space(nested);
            } else if is_word(c) {
                let name = self.parse_name()?;
                let id = self.symbol(name);
                self.skip_space(nested);
                last_start = rule.len();
                rule.push(Elem::Ref(id));
                self.count(1)?;
            } else if c == b'(' {
                if self.depth >= MAX_NESTING {
                    return Err(self.err("groups nested too deeply"));
                }
                self.pos += 1;
                self.skip_space(true);
                let sub = self.fresh_symbol(rule_name);
                self.depth += 1;
                self.parse_alternates(rule_name, sub, true)?;
                self.depth -= 1;
                last_start = rule.len();
                rule.push(Elem::Ref(sub));
                self.count(1)?;
                if self.peek() != b')' {
                    return Err(self.err("expecting ')'"));
                }
                self.pos += 1;
                self.skip_space(nested);
            } else if c == b'.' {
                last_start = rule.len();
                let id = self.class_id(CharClass {
                    negated: true,
                    ranges: Vec::new(),
                });
                rule.push(Elem::Chars(id));
                self.count(1)?;
                self.pos += 1;
                self.skip_space(nested);
            } else if c == b'*' || c == b'+' || c == b'?' {
                let at = self.pos;
                self.pos += 1;
                self.skip_space(nested);
                let (min, max) = match c {
                    b'*' => (0, None),
                    b'+' => (1, None),
                    _ => (0, Some(1)),
                };
                let save = self.pos;
                self.pos = at;
                self.repeat(rule_name, rule, last_start, min, max)?;
                self.pos = save;
            } else if c == b'{' {
                let at = self.pos;
                self.pos += 1;
                self.skip_space(nested);
                if !self.peek().is_ascii_digit() {
                    return Err(self.err("expecting an integer"));
                }
                let min = self.parse_int()?;
                self.skip_space(nested);
                let mut max = Some(min);
                if self.peek() == b'}' {
                    self.pos += 1;
                } else if self.peek() == b',' {
                    self.pos += 1;
                    self.skip_space(nested);
                    max = None;
                    if self.peek().is_ascii_digit() {
                        max = Some(self.parse_int()?);
                        self.skip_space(nested);
                    }
                    if self.peek() != b'}' {
                        return Err(self.err("expecting '}'"));
                    }
                    self.pos += 1;
                } else {
                    return Err(self.err("expecting ',' or '}'"));
                }
                self.skip_space(nested);
                let save = self.pos;
                self.pos = at;
                if min > MAX_REPETITION {
                    return Err(self.err(&format!(
                        "repetition count {min} exceeds the limit of {MAX_REPETITION}"
                    )));
                }
                if let Some(m) = max {
                    if m < min {
                        return Err(self.err("repetition maximum is smaller than its minimum"));
                    }
                    if m > MAX_REPETITION {
                        max = None;
                    }
                }
                self.repeat(rule_name, rule, last_start, min, max)?;
                self.pos = save;
            } else {
                break;
            }
        }
        Ok(())
    }

    fn parse_rule(&mut self) -> Result<()> {
        let name = self.parse_name()?;
        let id = self.symbol(name);
        self.skip_space(false);
        if !(self.peek() == b':' && self.peek_at(1) == b':' && self.peek_at(2) == b'=') {
            return Err(self.err("expecting ::="));
        }
        self.pos += 3;
        self.skip_space(true);
        self.parse_alternates(name, id, false)?;
        match self.peek() {
            b'\r' => {
                self.pos += if self.peek_at(1) == b'\n' { 2 } else { 1 };
            }
            b'\n' => self.pos += 1,
            _ if self.at_end() => {}
            _ => return Err(self.err("expecting newline or end")),
        }
        self.skip_space(true);
        Ok(())
    }
}

pub fn parse(text: &str) -> Result<ParsedGrammar> {
    let mut p = Parser {
        src: text.as_bytes(),
        text,
        pos: 0,
        symbols: HashMap::new(),
        names: Vec::new(),
        rules: Vec::new(),
        first_ref: Vec::new(),
        classes: Vec::new(),
        class_ids: HashMap::new(),
        depth: 0,
        n_elems: 0,
        generated_from: Vec::new(),
    };
    p.skip_space(true);
    while !p.at_end() {
        p.parse_rule()?;
    }
    for (id, r) in p.rules.iter().enumerate() {
        if r.is_none() {
            return Err(grammar_error(
                text,
                p.first_ref[id],
                &format!("undefined rule identifier '{}'", p.names[id]),
            ));
        }
    }
    let mut generated_from = std::mem::take(&mut p.generated_from);
    generated_from.resize(p.names.len(), None);
    let root = *p.symbols.get("root").ok_or_else(|| {
        Error::Grammar("Failed to parse grammar: grammar does not contain a 'root' rule".into())
    })?;
    let g = ParsedGrammar {
        rules: p.rules.into_iter().map(|r| r.unwrap_or_default()).collect(),
        names: p.names,
        classes: p.classes,
        root,
        generated_from,
    };
    check_left_recursion(&g)?;
    check_root_can_finish(&g)?;
    Ok(g)
}

/// Reject a grammar whose root derives no finite string (every alternative eventually needs a
/// rule that never ends, like `root ::= "a" root`): no output could ever complete it, so the
/// end of generation would never be allowed and the output would never be a match.
fn check_root_can_finish(g: &ParsedGrammar) -> Result<()> {
    let n = g.rules.len();
    let mut finite = vec![false; n];
    loop {
        let mut changed = false;
        for (r, rule) in g.rules.iter().enumerate() {
            if finite[r] {
                continue;
            }
            let mut alt_ok = true;
            for &e in rule {
                match e {
                    Elem::Alt | Elem::End => {
                        if alt_ok {
                            finite[r] = true;
                            changed = true;
                            break;
                        }
                        alt_ok = true;
                    }
                    Elem::Chars(c) => alt_ok &= !g.classes[c as usize].matches_nothing(),
                    Elem::Ref(s) => alt_ok &= finite[s as usize],
                }
            }
        }
        if !changed {
            break;
        }
    }
    if finite[g.root as usize] {
        return Ok(());
    }
    Err(Error::Grammar(
        "Failed to parse grammar: rule 'root' can never be completed (each of its alternatives \
         recurses forever or needs a rule that does), so no output could match it"
            .into(),
    ))
}

/// Reject left recursion (direct, indirect, or through rules that can match the empty string):
/// the matcher's rule expansion would never terminate on it.
fn check_left_recursion(g: &ParsedGrammar) -> Result<()> {
    let n = g.rules.len();
    let mut nullable = vec![false; n];
    loop {
        let mut changed = false;
        for (r, rule) in g.rules.iter().enumerate() {
            if nullable[r] {
                continue;
            }
            let mut alt_nullable = true;
            for &e in rule {
                match e {
                    Elem::Alt | Elem::End => {
                        if alt_nullable {
                            nullable[r] = true;
                            changed = true;
                            break;
                        }
                        alt_nullable = true;
                    }
                    Elem::Chars(_) => alt_nullable = false,
                    Elem::Ref(s) => alt_nullable &= nullable[s as usize],
                }
            }
        }
        if !changed {
            break;
        }
    }
    // Edges r -> s when s can start r (after only nullable elements).
    let mut edges: Vec<Vec<u32>> = vec![Vec::new(); n];
    for (r, rule) in g.rules.iter().enumerate() {
        let mut open = true;
        for &e in rule {
            match e {
                Elem::Alt | Elem::End => open = true,
                Elem::Chars(_) => open = false,
                Elem::Ref(s) => {
                    if open {
                        edges[r].push(s);
                        open = nullable[s as usize];
                    }
                }
            }
        }
    }
    // Iterative DFS with colors (0 new, 1 on stack, 2 done).
    let mut color = vec![0u8; n];
    for start in 0..n {
        if color[start] != 0 {
            continue;
        }
        let mut stack: Vec<(usize, usize)> = vec![(start, 0)];
        color[start] = 1;
        while let Some(&mut (r, ref mut i)) = stack.last_mut() {
            if *i < edges[r].len() {
                let s = edges[r][*i] as usize;
                *i += 1;
                match color[s] {
                    0 => {
                        color[s] = 1;
                        stack.push((s, 0));
                    }
                    1 => {
                        return Err(Error::Grammar(format!(
                            "Failed to parse grammar: left recursion detected for rule {}",
                            display_name(g, s)
                        )))
                    }
                    _ => {}
                }
            } else {
                color[r] = 2;
                stack.pop();
            }
        }
    }
    Ok(())
}

/// Generated rule names are "<parent>_<n>"; report the user's rule name.
fn display_name(g: &ParsedGrammar, id: usize) -> String {
    match &g.generated_from[id] {
        Some(base) => format!("'{base}' (in one of its groups or repetitions)"),
        None => format!("'{}'", g.names[id]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_basic() {
        let g = parse("root ::= \"a\" [b-d]* | x{2,3}\nx ::= [^\\n] # comment\n").unwrap();
        assert_eq!(g.names[g.root as usize], "root");
    }

    #[test]
    fn errors_have_positions() {
        let e = parse("root ::= \"a\"\nfoo ::= \"b\" ]\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 2, column 13"), "{e}");
        let e = parse("root ::= (\"b\"\n").unwrap_err().to_string();
        assert!(e.contains("expecting ')'"), "{e}");
        let e = parse("root ::= bar\n").unwrap_err().to_string();
        assert!(e.contains("undefined rule identifier 'bar'"), "{e}");
        let e = parse("root ::= root \"a\" | \"b\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("left recursion"), "{e}");
        let e = parse("root ::= \"a\"{3000}\n").unwrap_err().to_string();
        assert!(e.contains("limit"), "{e}");
        assert!(parse("foo ::= \"a\"\n").is_err());
        assert!(parse("root ::= [a\n").is_err());
        assert!(parse("root ::= \"\\q\"\n").is_err());
    }

    #[test]
    fn deep_nesting_is_an_error() {
        let s = format!(
            "root ::= {}\"a\"{}\n",
            "(".repeat(100_000),
            ")".repeat(100_000)
        );
        assert!(parse(&s).is_err());
    }

    #[test]
    fn unsatisfiable_grammars_are_errors() {
        for (g, want) in [
            ("root ::= [z-a]\n", "reversed"),
            ("root ::= \"ab\" [z-a]\n", "line 1, column 16"),
            ("root ::= []\n", "matches no character"),
            (
                "root ::= \"x\" | [^\\x00-\\U0010FFFF]\n",
                "matches no character",
            ),
            ("root ::= \"a\" root\n", "never be completed"),
            (
                "root ::= x\nx ::= \"a\" y\ny ::= \"b\" x\n",
                "never be completed",
            ),
        ] {
            let e = parse(g).unwrap_err().to_string();
            assert!(e.contains(want), "{g:?}: {e}");
        }
        // Recursion with a way out is fine, and so are negated classes with holes.
        assert!(parse("root ::= \"a\" root | \"b\"\n").is_ok());
        assert!(parse("root ::= [^\\x00-\\x10] [a-a] [^]\n").is_ok());
        assert!(parse("root ::= \"\" | x\nx ::= \"a\" x\n").is_ok());
    }

    #[test]
    fn nullable_left_recursion() {
        assert!(parse("root ::= a* \na ::= \"\" | \"x\"\n").is_err());
        assert!(parse("root ::= \"\"\nx ::= \"a\"\n").is_ok());
    }
}
