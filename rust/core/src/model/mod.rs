//! model (see DESIGN.md §2).
