//! apf-cpu: see DESIGN.md §3.
