//! apf-vm: a VM built from a configuration (DESIGN §3).

// Only apf-mem needs unsafe code (guest RAM, io_uring); everything else is
// safe Rust, and the compiler keeps it so.
#![forbid(unsafe_code)]

pub mod config;
mod ram;
mod run;
pub mod workload;

pub use ram::MemRam;
pub use run::{
    ErrorClass, GUEST_IMAGE, Live, Observer, ProcessOutcome, RunEnd, RunOptions, VmError, VmRun,
    boot_block, open_store, run_image, run_image_observed, run_workloads, run_workloads_observed,
};
