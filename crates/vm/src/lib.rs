//! apf-vm: a VM built from a configuration (DESIGN §3).

pub mod config;
pub mod workload;
