//! apf-host: see DESIGN.md §3.
