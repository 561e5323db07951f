//! apf-mem: see DESIGN.md §3.
