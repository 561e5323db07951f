//! apf-vm: a VM built from a configuration (DESIGN §3).

pub mod config;
mod ram;
mod run;
pub mod workload;

pub use ram::MemRam;
pub use run::{
    GUEST_IMAGE, ProcessOutcome, ProgressFn, RunEnd, RunOptions, RunProgress, VmError, VmRun,
    boot_block, open_store, run_image, run_workloads,
};
