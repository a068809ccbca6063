//! Grammar-constrained sampling: GBNF parser, matcher and the vocabulary trie.
pub mod matcher;
pub mod parser;
pub mod trie;

pub use matcher::{Grammar, Matcher};
pub use trie::TokenTrie;
