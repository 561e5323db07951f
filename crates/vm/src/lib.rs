//! apf-vm: a VM built from a configuration (DESIGN §3).

pub mod config;
mod ram;
mod run;
pub mod workload;

pub use ram::MemRam;
pub use run::{
    GUEST_IMAGE, Live, Observer, ProcessOutcome, RunEnd, RunOptions, VmError, VmRun, boot_block,
    run_image, run_image_observed, run_workloads, run_workloads_observed,
};
