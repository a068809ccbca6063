//! A byte trie over the vocabulary's token pieces, built once per vocabulary, so the grammar
//! filter walks shared prefixes once instead of re-matching every token from its first byte.

/// Pieces longer than this are checked one by one (bounds the filter's recursion depth).
pub const MAX_TRIE_DEPTH: usize = 256;

#[derive(Debug, Default)]
pub struct TokenTrie {
    child_start: Vec<u32>,
    edges: Vec<(u8, u32)>,
    tok_start: Vec<u32>,
    tokens: Vec<u32>,
    /// Tokens too long for the trie.
    pub long_tokens: Vec<u32>,
}

impl TokenTrie {
    /// Build from token pieces; tokens for which `skip` is true (end-of-generation tokens, empty
    /// pieces) are left out.
    pub fn build(pieces: &[Vec<u8>], skip: impl Fn(u32) -> bool) -> Self {
        let mut children: Vec<Vec<(u8, u32)>> = vec![Vec::new()];
        let mut ends: Vec<Vec<u32>> = vec![Vec::new()];
        let mut long_tokens = Vec::new();
        for (id, piece) in pieces.iter().enumerate() {
            let id = id as u32;
            if piece.is_empty() || skip(id) {
                continue;
            }
            if piece.len() > MAX_TRIE_DEPTH {
                long_tokens.push(id);
                continue;
            }
            let mut node = 0usize;
            for &b in piece {
                let next = match children[node].iter().find(|(c, _)| *c == b) {
                    Some(&(_, n)) => n as usize,
                    None => {
                        let n = children.len();
                        children.push(Vec::new());
                        ends.push(Vec::new());
                        children[node].push((b, n as u32));
                        n
                    }
                };
                node = next;
            }
            ends[node].push(id);
        }
        let mut t = TokenTrie { long_tokens, ..Default::default() };
        t.child_start.reserve(children.len() + 1);
        t.tok_start.reserve(children.len() + 1);
        for (mut ch, en) in children.into_iter().zip(ends) {
            ch.sort_unstable();
            t.child_start.push(t.edges.len() as u32);
            t.edges.extend(ch);
            t.tok_start.push(t.tokens.len() as u32);
            t.tokens.extend(en);
        }
        t.child_start.push(t.edges.len() as u32);
        t.tok_start.push(t.tokens.len() as u32);
        t
    }

    pub fn n_nodes(&self) -> usize {
        self.child_start.len().saturating_sub(1)
    }

    #[inline]
    pub fn children(&self, node: u32) -> &[(u8, u32)] {
        let n = node as usize;
        &self.edges[self.child_start[n] as usize..self.child_start[n + 1] as usize]
    }

    #[inline]
    pub fn tokens_at(&self, node: u32) -> &[u32] {
        let n = node as usize;
        &self.tokens[self.tok_start[n] as usize..self.tok_start[n + 1] as usize]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_prefixes() {
        let pieces: Vec<Vec<u8>> = vec![b"ab".to_vec(), b"a".to_vec(), b"abc".to_vec(), b"".to_vec(), b"b".to_vec()];
        let t = TokenTrie::build(&pieces, |_| false);
        // root, a, ab, abc, b
        assert_eq!(t.n_nodes(), 5);
        let a = t.children(0)[0];
        assert_eq!(a.0, b'a');
        assert_eq!(t.tokens_at(a.1), &[1]);
    }
}
