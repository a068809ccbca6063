//! sampling (see DESIGN.md §2).
