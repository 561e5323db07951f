//! apf-vm: see DESIGN.md §3.
