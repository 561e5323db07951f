//! The apf guest/host contract (DESIGN §4).
//!
//! Everything a guest and the host must agree on lives here: the per-vCPU shared
//! block, the ENABLE control word, the token format, the SMCCC, vendor-hypervisor,
//! SDEI and PSCI function IDs and return codes, the ESR syndromes of the exceptions
//! the platform raises, the page-ready PPI rules and the boot block the VMM passes to
//! its guest. `guest/include/abi.h` carries the same values for the C guest; the test
//! `tests/header.rs` compares the two so they cannot drift.
//!
//! This crate depends on nothing and does no I/O, so both the interpreter and the
//! hypervisor can use it, and so could a real-KVM backend.

// Only apf-mem needs unsafe code (guest RAM, io_uring); everything else is
// safe Rust, and the compiler keeps it so.
#![forbid(unsafe_code)]
#![no_std]

pub mod addr;
pub mod boot;
pub mod control;
pub mod esr;
pub mod platform;
pub mod ppi;
pub mod psci;
pub mod sdei;
pub mod shared;
pub mod smccc;
pub mod token;

pub use addr::{Gfn, Gpa, PAGE_SHIFT, PAGE_SIZE};
pub use control::{ControlWord, ControlWordError};
pub use shared::ApfSharedData;
pub use token::Token;

/// Outstanding asynchronous page faults per vCPU; also the GFN slot table size.
pub const ASYNC_PF_PER_VCPU: usize = 64;

/// The APF interface version reported by `ASYNC_PF_FUNC_VERSION`: 1.1.0
/// (major in bits 23:16, minor 15:8, revision 7:0). 1.1 adds the separate
/// page-ready channel ([`shared::ApfSharedData::ready_reason`]).
pub const APF_VERSION: u32 = 0x01_01_00;
