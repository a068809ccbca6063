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
    /// Per node (preorder): the byte on the edge into it, its depth, and the end of its subtree
    /// (exclusive), for the flat walk that skips a dead subtree in one step.
    pub byte_in: Vec<u8>,
    pub depth: Vec<u16>,
    pub subtree_end: Vec<u32>,
    pub max_depth: usize,
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
        // Lay nodes out in depth-first preorder so a walk reads the arrays front to back.
        for ch in children.iter_mut() {
            ch.sort_unstable();
        }
        let n = children.len();
        let mut order = Vec::with_capacity(n);
        let mut stack = vec![0u32];
        while let Some(x) = stack.pop() {
            order.push(x);
            for &(_, c) in children[x as usize].iter().rev() {
                stack.push(c);
            }
        }
        let mut new_id = vec![0u32; n];
        for (i, &old) in order.iter().enumerate() {
            new_id[old as usize] = i as u32;
        }
        let mut t = TokenTrie {
            long_tokens,
            ..Default::default()
        };
        t.child_start.reserve(n + 1);
        t.tok_start.reserve(n + 1);
        for &old in &order {
            t.child_start.push(t.edges.len() as u32);
            t.edges.extend(
                children[old as usize]
                    .iter()
                    .map(|&(b, c)| (b, new_id[c as usize])),
            );
            t.tok_start.push(t.tokens.len() as u32);
            t.tokens.extend_from_slice(&ends[old as usize]);
        }
        t.child_start.push(t.edges.len() as u32);
        t.tok_start.push(t.tokens.len() as u32);
        t.byte_in = vec![0; n];
        t.depth = vec![0; n];
        for i in 0..n {
            let d = t.depth[i];
            for k in t.child_start[i] as usize..t.child_start[i + 1] as usize {
                let (b, c) = t.edges[k];
                t.byte_in[c as usize] = b;
                t.depth[c as usize] = d + 1;
            }
        }
        t.max_depth = t.depth.iter().copied().max().unwrap_or(0) as usize;
        // subtree ends: in preorder a node's subtree is followed by the next node whose depth is
        // not greater; compute right to left with a stack of open nodes.
        t.subtree_end = vec![n as u32; n];
        let mut open: Vec<u32> = Vec::new();
        for i in 0..n {
            while let Some(&top) = open.last() {
                if t.depth[top as usize] >= t.depth[i] {
                    t.subtree_end[top as usize] = i as u32;
                    open.pop();
                } else {
                    break;
                }
            }
            open.push(i as u32);
        }
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
        let pieces: Vec<Vec<u8>> = vec![
            b"ab".to_vec(),
            b"a".to_vec(),
            b"abc".to_vec(),
            b"".to_vec(),
            b"b".to_vec(),
        ];
        let t = TokenTrie::build(&pieces, |_| false);
        // root, a, ab, abc, b
        assert_eq!(t.n_nodes(), 5);
        let a = t.children(0)[0];
        assert_eq!(a.0, b'a');
        assert_eq!(t.tokens_at(a.1), &[1]);
    }
}
