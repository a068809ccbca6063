//! tokenizer (see DESIGN.md §2).
