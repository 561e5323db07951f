//! apf-cpu: the AArch64 interpreter that runs the guest (DESIGN §2–§3).
//!
//! One [`Cpu`] is one vCPU: the A64 integer instruction set (with CRC32, the
//! LSE atomics and LDAPR), the EL0/EL1 exception model, the EL1 system
//! registers and the generic timer, with a decoded-instruction cache. The host
//! (EL2) drives it with [`Cpu::run`] over a [`Bus`] that owns guest memory and
//! the GIC CPU interface, and handles the [`Exit`]s: HVC/SMC, WFI/WFE, stage-2
//! aborts with their real syndromes, timer deadlines, budget and kicks.
//!
//! Decisions worth knowing:
//! - The stage-1 MMU is not implemented: SCTLR_EL1.M is RAZ/WI, so the guest
//!   runs flat and every data access is to Device memory: an unaligned access
//!   takes an alignment fault to EL1 (DFSC 0x21).
//! - FP/SIMD: trapped (EC 0x07) when CPACR_EL1.FPEN traps them, UNDEFINED
//!   otherwise; ID_AA64PFR0_EL1 reports no FP and no AdvSIMD.
//! - Virtual time is the retired-instruction count times a ratio
//!   ([`TimeScale`]), so runs are reproducible.
//! - IC instructions invalidate this vCPU's decode cache only; when another
//!   agent writes a code page the host calls [`Cpu::invalidate_decoded`].

// Only apf-mem needs unsafe code (guest RAM, io_uring); everything else is
// safe Rust, and the compiler keeps it so.
#![forbid(unsafe_code)]

mod bus;
mod cache;
mod cpu;
mod decode;
mod exception;
mod exec;
mod mmu;
mod pstate;
mod ram_bus;
mod sysreg;
mod timer;

pub use apf_abi::esr::{AccessSize, Esr};
pub use bus::{AtomicOp, Bus, BusError, SysRegId};
pub use cpu::{Cpu, CpuConfig, Exit};
pub use exception::Exception;
pub use ram_bus::RamBus;
pub use sysreg::SysReg;
pub use timer::{TimeScale, TimerLines};
