//! apf-vm: see DESIGN.md §3.

pub mod workload;
