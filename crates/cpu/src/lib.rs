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
//! - Stage-1 MMU (`mmu`): 4 KiB granule, 48-bit VAs in two ranges (TTBR0/1
//!   by VA bit 55, T0SZ/T1SZ clamped to 16..39, EPD0/1, TBI0/1 for data),
//!   40-bit PAs (an output address beyond IPS or 40 bits is an address size
//!   fault), AP/APTable, UXN/PXN/XNTable, WXN, AF (no hardware update: AF = 0
//!   faults), nG with 8- or 16-bit ASIDs (TCR.AS, TCR.A1), MAIR Device vs
//!   Normal. EL1 never executes a page EL0 can write. The bus stays
//!   physical: descriptors are `Bus::read` doublewords. With SCTLR_EL1.M = 0
//!   every access is to Device memory, as before: that branch comes first.
//! - The TLB is direct-mapped (2048 pages, blocks cached per page), tagged
//!   with the ASID; TTBR writes only change the current ASID, TCR/MAIR/SCTLR
//!   writes flush it. TLBI by VA drops the page under every ASID; the
//!   inner-shareable forms also call [`Bus::broadcast`]. FEAT_TLBIRANGE
//!   and FEAT_TLBIOS are not advertised, so their TLBIs are UNDEFINED.
//! - Normal memory takes unaligned and page-crossing loads and stores (single
//!   and pair): both pages are translated, and for stores probed, before any
//!   effect, then the bytes go to the bus one by one. Device memory,
//!   exclusives and atomics must be aligned (DFSC 0x21), and so must
//!   everything with SCTLR_EL1.A.
//! - LDTR/STTR are checked with EL0 permissions; there is no PAN or UAO.
//! - AT S1E{0,1}{R,W} write PAR_EL1; a stage-2 fault on their walk exits like
//!   a walk for an access (S1PTW, CM = 1). DC ZVA zeroes 64 bytes (Normal
//!   memory only); the other DC operations are no-ops. IC IVAU invalidates
//!   the decoded copy of the page its VA translates to.
//! - SCTLR_EL1: C and I are stored only; M, A, SA, SA0, UMA, DZE, UCT, UCI,
//!   nTWI, nTWE and WXN are honoured; the rest is RES0/RES1.
//! - Debug registers (DBGB/W{V,C}R<n>, MDSCR, OSDLR, ...) are RAZ/WI, with the
//!   OS lock modelled; the PMU registers Linux touches are RAZ/WI at EL1 even
//!   though ID_AA64DFR0_EL1.PMUVer = 0.
//! - FP/SIMD: trapped (EC 0x07) when CPACR_EL1.FPEN traps them, UNDEFINED
//!   otherwise; ID_AA64PFR0_EL1 reports no FP and no AdvSIMD.
//! - Virtual time is the retired-instruction count times a ratio
//!   ([`TimeScale`]), so runs are reproducible.
//! - IC instructions invalidate this vCPU's decode cache only; when another
//!   agent writes a code page the host calls [`Cpu::invalidate_decoded`].

// Unsafe code lives in `jit` (calling generated code, which reads and writes
// the `Cpu` and guest RAM) and in the two vouches for host pages
// (`HostPage::new`, `RamBus`). Anywhere else it fails the build.
#![deny(unsafe_code)]

mod bus;
mod cache;
mod cpu;
mod decode;
mod exception;
mod exec;
mod jit;
mod mmu;
mod pstate;
mod ram_bus;
mod sysreg;
mod timer;

pub use apf_abi::esr::{AccessSize, Esr};
pub use bus::{AtomicOp, Broadcast, Bus, BusError, HostPage, SysRegId};
pub use cpu::{Cpu, CpuConfig, CpuState, CpuStateError, Engine, Exit, PstateState};
pub use exception::Exception;
pub use ram_bus::RamBus;
pub use sysreg::{SysReg, SysRegsState};
pub use timer::{TimeScale, TimerLines, TimerState};
