//! apf-vm: a VM built from a configuration (DESIGN §3).

// Only apf-mem needs unsafe code (guest RAM, io_uring); everything else is
// safe Rust, and the compiler keeps it so.
#![forbid(unsafe_code)]

mod boot;
pub mod config;
mod error;
pub mod linux;
mod linux_run;
pub mod migrate;
mod monitor;
mod run;
pub mod snapshot;
mod store;
pub mod workload;

/// How a flat image's vCPUs run guest code ([`RunOptions::engine`]).
pub use apf_cpu::Engine;
pub use boot::{ProcessOutcome, boot_block};
pub use error::{ErrorClass, MigrateError, VmError};
pub use linux::LinuxGuest;
pub use linux_run::{run_linux, run_linux_observed};
pub use monitor::{Live, Observer};
pub use run::{
    GUEST_IMAGE, RunEnd, RunOptions, VmRun, run_image, run_image_observed, run_workloads,
    run_workloads_observed,
};
pub use store::open_store;
