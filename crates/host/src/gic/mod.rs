//! A GICv3 interrupt controller, the subset a single-security-state guest at EL1
//! uses (Arm IHI 0069): the distributor, one redistributor per vCPU at the QEMU
//! `virt` addresses, and each vCPU's CPU interface (the ICC_* system registers).
//!
//! Models: affinity routing only (GICD_CTLR.ARE and DS read as one), group 1
//! interrupts, SGIs (ICC_SGI1R_EL1, to a target list or to all other PEs), PPIs,
//! and SPIs 32..=63 (ITLinesNumber 1: enough for the UART) routed by
//! GICD_IROUTER; level and edge semantics; 5 priority bits (32 levels), the
//! priority mask, the binary point (ICC_BPR1_EL1), running priority and
//! preemption through the active priorities register (ICC_AP1R0_EL1); IAR/EOIR
//! with active and active-and-pending states, EOImode 0 and 1 (with ICC_DIR_EL1);
//! the spurious INTID 1023.
//!
//! Leaves out: group 0 (FIQs; a group-0 interrupt is never signalled, and the
//! group-0 ICC registers are UNDEFINED), LPIs and the ITS, 1-of-N SPI routing
//! (GICD_TYPER.No1N = 1), extended SPI/PPI ranges, the legacy (ARE = 0)
//! interface, ICC_CTLR_EL1.CBPR (reads as 0), NMIs, and the redistributor's
//! power handshake: GICR_WAKER.ProcessorSleep is stored and reflected in
//! ChildrenAsleep but does not gate forwarding (QEMU's model does the same, and
//! images written against it must run here too). Reserved registers inside the
//! GIC frames read as zero and ignore writes, as the architecture requires.
//!
//! # Sharing between threads
//!
//! [`Gic`] is shared (`Arc`) by every vCPU thread: other threads raise SGIs and
//! SPIs, and any vCPU may write any redistributor through MMIO. Its state is
//! atomic words only ([`Word`]), so nothing takes a lock. Each vCPU thread owns
//! its [`GicCpuInterface`] (priority mask, binary point, active priorities:
//! state no other PE can reach). After any change that may alter a vCPU's
//! interrupt line — an interrupt becoming pending, enabled, deactivated or
//! re-prioritised — the GIC *kicks* that vCPU through the [`Kick`] it
//! connected, and the vCPU re-evaluates [`GicCpuInterface::irq_line`]. A
//! CPU-interface register is accessed only by its own vCPU, which compares its
//! line after the access itself (and ends its slice only if the line moved). A kick follows the state change, so a vCPU
//! that clears its kick flag and then reads the state cannot miss one; a halted
//! vCPU is woken by it.

mod bank;
mod cpu_interface;
mod distributor;
mod redistributor;
mod state;
mod word;

pub use bank::IrqBankState;
pub use cpu_interface::{GicCpuInterface, IccReg};
pub use state::{GicState, GicStateError, IccState, RedistributorState};
pub use word::Word;

use crate::regs::affinity_of;
use apf_abi::platform::{GICD_BASE, GICD_SIZE, GICR_BASE, GICR_STRIDE};
use apf_abi::ppi::{PPI_FIRST, PPI_LAST};
pub use bank::PRIORITY_MASK;
use bank::{Bank, bits};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, OnceLock};
use thiserror::Error;

/// The INTID IAR and HPPIR return when there is nothing to acknowledge.
pub const INTID_SPURIOUS: u32 = 1023;
/// INTIDs this GIC implements: SGIs 0..16, PPIs 16..32, SPIs 32..64.
pub const INTID_LIMIT: u32 = 64;
/// First SPI INTID.
pub const SPI_FIRST: u32 = 32;
/// The most vCPUs the affinity layout (16 per cluster, 256 clusters) names.
pub const MAX_VCPUS: usize = 4096;

/// GICD_CTLR.EnableGrp0.
const CTLR_ENABLE_GRP0: u64 = 1 << 0;
/// GICD_CTLR.EnableGrp1.
const CTLR_ENABLE_GRP1: u64 = 1 << 1;
/// GICD_CTLR.ARE: affinity routing, always on.
const CTLR_ARE: u64 = 1 << 4;
/// GICD_CTLR.DS: one security state, always.
const CTLR_DS: u64 = 1 << 6;
/// GICD_IIDR and GICR_IIDR: implementer Arm (JEP106 0x43B), as QEMU's and
/// KVM's GIC models report, so guests' drivers take their GICv3 paths.
const IIDR: u64 = 0x43B;
/// GICD_PIDR2 and GICR_PIDR2: ArchRev 3 (GICv3).
const PIDR2: u64 = 0x3B;
/// Offset of the PIDR2 register in a frame.
const PIDR2_OFFSET: u64 = 0xFFE8;

/// How the GIC wakes a vCPU whose interrupt line may have changed.
pub trait Kick: Send + Sync {
    /// Make the vCPU re-evaluate its interrupt line (and leave a halt).
    fn kick(&self);
}

impl Kick for crate::waker::VcpuWaker {
    fn kick(&self) {
        crate::waker::VcpuWaker::kick(self);
    }
}

/// An interrupt input a device drives.
pub trait IrqLine: Send + Sync {
    /// Drives the line high or low.
    fn set_level(&self, high: bool);
}

/// Why a GIC could not be built.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum GicNewError {
    /// More vCPUs than the affinity layout can name.
    #[error("{0} vCPUs requested, a GIC here serves at most {MAX_VCPUS}")]
    TooManyVcpus(usize),
}

/// Why a vCPU's kick could not be connected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum ConnectError {
    /// No such vCPU.
    #[error("no vCPU {vcpu}: the GIC serves {vcpus}")]
    NoSuchVcpu {
        /// The index asked for.
        vcpu: usize,
        /// vCPUs the GIC serves.
        vcpus: usize,
    },
    /// The vCPU already has a kick.
    #[error("vCPU {0} is already connected")]
    AlreadyConnected(usize),
}

/// Why a PPI line could not be driven.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum PpiLevelError {
    /// No such vCPU.
    #[error("no vCPU {vcpu}: the GIC serves {vcpus}")]
    NoSuchVcpu {
        /// The index asked for.
        vcpu: usize,
        /// vCPUs the GIC serves.
        vcpus: usize,
    },
    /// Not a PPI.
    #[error("INTID {0} is not a PPI ({PPI_FIRST}..={PPI_LAST})")]
    NotAPpi(u32),
}

/// Why an SPI line could not be made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum SpiLineError {
    /// Not an SPI this GIC implements.
    #[error("INTID {0} is not an SPI of this GIC ({SPI_FIRST}..{INTID_LIMIT})")]
    NotAnSpi(u32),
}

/// Why a CPU interface could not be made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum CpuInterfaceError {
    /// No such vCPU.
    #[error("no vCPU {vcpu}: the GIC serves {vcpus}")]
    NoSuchVcpu {
        /// The index asked for.
        vcpu: usize,
        /// vCPUs the GIC serves.
        vcpus: usize,
    },
}

/// One vCPU's redistributor.
#[derive(Debug)]
struct Redistributor<W> {
    /// GICR_WAKER.ProcessorSleep.
    sleep: W,
    /// SGIs (bits 0..16, always edge-triggered) and PPIs (bits 16..32).
    bank: Bank<W>,
}

/// The GIC: distributor and redistributors, shared by all vCPU threads.
pub struct Gic<W: Word = AtomicU64> {
    /// GICD_CTLR's writable bits (EnableGrp0, EnableGrp1).
    ctlr: W,
    /// SPIs 32..64 as bank bits 0..32.
    spis: Bank<W>,
    /// GICD_IROUTER<32..64>: the affinity each SPI is routed to.
    routes: [W; 32],
    redists: Box<[Redistributor<W>]>,
    kicks: Box<[OnceLock<Arc<dyn Kick>>]>,
}

impl<W: Word> std::fmt::Debug for Gic<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gic")
            .field("vcpus", &self.redists.len())
            .field("ctlr", &self.ctlr.get())
            .finish_non_exhaustive()
    }
}

impl Gic {
    /// A GIC at reset for `vcpus` vCPUs.
    pub fn new(vcpus: usize) -> Result<Gic, GicNewError> {
        Gic::new_generic(vcpus)
    }
}

impl<W: Word> Gic<W> {
    /// [`Gic::new`] over another word type (the model-checked tests use
    /// shuttle's atomics).
    pub fn new_generic(vcpus: usize) -> Result<Gic<W>, GicNewError> {
        if vcpus > MAX_VCPUS {
            return Err(GicNewError::TooManyVcpus(vcpus));
        }
        Ok(Gic {
            ctlr: W::new(0),
            spis: Bank::new(0),
            routes: std::array::from_fn(|_| W::new(0)),
            redists: (0..vcpus)
                .map(|_| Redistributor {
                    sleep: W::new(1),
                    bank: Bank::new(0xFFFF),
                })
                .collect(),
            kicks: (0..vcpus).map(|_| OnceLock::new()).collect(),
        })
    }

    /// The number of vCPUs (redistributors).
    pub fn vcpus(&self) -> usize {
        self.redists.len()
    }

    /// Connects vCPU `vcpu`'s kick. Until it is connected, changes to its
    /// interrupt state are recorded but nobody is told.
    pub fn connect(&self, vcpu: usize, kick: Arc<dyn Kick>) -> Result<(), ConnectError> {
        let slot = self.kicks.get(vcpu).ok_or(ConnectError::NoSuchVcpu {
            vcpu,
            vcpus: self.vcpus(),
        })?;
        slot.set(kick)
            .map_err(|_| ConnectError::AlreadyConnected(vcpu))
    }

    fn kick(&self, vcpu: usize) {
        if let Some(k) = self.kicks.get(vcpu).and_then(OnceLock::get) {
            k.kick();
        }
    }

    fn kick_all(&self) {
        (0..self.vcpus()).for_each(|v| self.kick(v));
    }

    /// The vCPU SPI bank bit `bit` is routed to, if it is one of ours.
    fn spi_target(&self, bit: u32) -> Option<usize> {
        let route = self.routes[bit as usize % 32].get();
        (0..self.vcpus()).find(|&v| affinity_of(v) == route)
    }

    /// Drives PPI `intid`'s line on vCPU `vcpu` (the timer, the APF page-ready
    /// PPI). A level-sensitive PPI is pending while the line is high; an
    /// edge-triggered one latches on each rising edge.
    pub fn set_ppi_level(&self, vcpu: usize, intid: u32, high: bool) -> Result<(), PpiLevelError> {
        let redist = self.redists.get(vcpu).ok_or(PpiLevelError::NoSuchVcpu {
            vcpu,
            vcpus: self.vcpus(),
        })?;
        if !(PPI_FIRST..=PPI_LAST).contains(&intid) {
            return Err(PpiLevelError::NotAPpi(intid));
        }
        redist.bank.set_level(intid, high);
        self.kick(vcpu);
        Ok(())
    }

    /// Whether PPI `intid`'s line on vCPU `vcpu` is high (what drives it, not
    /// whether it is pending): lets a test check a line against its driver.
    pub fn ppi_level(&self, vcpu: usize, intid: u32) -> bool {
        (PPI_FIRST..=PPI_LAST).contains(&intid)
            && self.redists.get(vcpu).is_some_and(|r| r.bank.level(intid))
    }

    fn set_spi_level(&self, bit: u32, high: bool) {
        self.spis.set_level(bit, high);
        if let Some(target) = self.spi_target(bit) {
            self.kick(target);
        }
    }

    /// Handles a write of `value` to ICC_SGI1R_EL1 by vCPU `sender`: latches
    /// the SGI on every target whose copy of it is group 1.
    ///
    /// Targets are the target list in cluster Aff3.Aff2.Aff1 (this platform's
    /// PEs have Aff3 = Aff2 = 0 and Aff0 < 16, so RS must be 0 to name any), or
    /// with IRM every PE but the sender.
    fn send_sgi(&self, sender: usize, value: u64) {
        let intid = field(value, 24, 4);
        let irm = value >> 40 & 1 != 0;
        let deliver = |target: usize| {
            let bank = &self.redists[target].bank;
            if bank.is_group1(intid) {
                bank.set_pending(intid);
                self.kick(target);
            }
        };
        if irm {
            (0..self.vcpus()).filter(|&v| v != sender).for_each(deliver);
            return;
        }
        let target_list = value & 0xFFFF;
        let aff1 = field(value, 16, 8) as usize;
        let aff2 = (value >> 32) & 0xFF;
        let rs = (value >> 44) & 0xF;
        let aff3 = (value >> 48) & 0xFF;
        if aff2 != 0 || aff3 != 0 || rs != 0 {
            return;
        }
        bits(target_list)
            .map(|aff0| aff1 * crate::regs::CPUS_PER_CLUSTER + aff0 as usize)
            .filter(|&v| v < self.vcpus())
            .for_each(deliver);
    }

    /// Deactivates `intid` on behalf of vCPU `vcpu` (EOI in EOImode 0, or DIR).
    /// A deactivation by vCPU `vcpu`'s own CPU interface. That vCPU compares its
    /// line after the access itself, so only another vCPU an SPI is routed to
    /// is kicked.
    fn deactivate(&self, vcpu: usize, intid: u32) {
        if intid < SPI_FIRST {
            self.redists[vcpu].bank.deactivate(intid);
        } else if intid < INTID_LIMIT {
            let bit = intid - SPI_FIRST;
            self.spis.deactivate(bit);
            if let Some(target) = self.spi_target(bit).filter(|&t| t != vcpu) {
                self.kick(target);
            }
        }
    }

    /// MMIO read of `size` bytes at guest-physical `addr`. `None` when `addr`
    /// is outside the GIC's frames or the access has a size or alignment the
    /// register does not support: the caller injects an external abort.
    pub fn mmio_read(&self, addr: u64, size: usize) -> Option<u64> {
        match self.frame(addr)? {
            Frame::Distributor(off) => self.dist_read(off, size),
            Frame::Redistributor(vcpu, off) => self.redist_read(vcpu, off, size),
        }
    }

    /// MMIO write; `false` as for [`Gic::mmio_read`]'s `None`.
    pub fn mmio_write(&self, addr: u64, size: usize, value: u64) -> bool {
        match self.frame(addr) {
            Some(Frame::Distributor(off)) => self.dist_write(off, size, value),
            Some(Frame::Redistributor(vcpu, off)) => self.redist_write(vcpu, off, size, value),
            None => false,
        }
    }

    fn frame(&self, addr: u64) -> Option<Frame> {
        if let Some(off) = addr.checked_sub(GICD_BASE).filter(|&o| o < GICD_SIZE) {
            return Some(Frame::Distributor(off));
        }
        let off = addr.checked_sub(GICR_BASE)?;
        let vcpu = usize::try_from(off / GICR_STRIDE)
            .ok()
            .filter(|&v| v < self.vcpus())?;
        Some(Frame::Redistributor(vcpu, off % GICR_STRIDE))
    }
}

enum Frame {
    Distributor(u64),
    Redistributor(usize, u64),
}

/// Bits `shift..shift + width` of a register value (`width` ≤ 32).
#[allow(clippy::cast_possible_truncation)] // masked to at most 32 bits first
fn field(value: u64, shift: u32, width: u32) -> u32 {
    ((value >> shift) & ((1u64 << width) - 1)) as u32
}

/// A 32-bit register access: 4 bytes, aligned.
fn is_word(off: u64, size: usize) -> bool {
    size == 4 && off.is_multiple_of(4)
}

/// An access to a byte-accessible register array: 1 byte, or an aligned word.
fn is_byte_or_word(off: u64, size: usize) -> bool {
    size == 1 || is_word(off, size)
}

/// An access to a 64-bit register: the whole register or either aligned half.
fn is_double_or_word(off: u64, size: usize) -> bool {
    (size == 8 && off.is_multiple_of(8)) || is_word(off, size)
}

/// An SPI's input line, for a device model to drive.
pub struct SpiLine<W: Word = AtomicU64> {
    gic: Arc<Gic<W>>,
    bit: u32,
}

impl<W: Word> std::fmt::Debug for SpiLine<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpiLine")
            .field("intid", &(self.bit + SPI_FIRST))
            .finish()
    }
}

impl<W: Word> SpiLine<W> {
    /// The line of SPI `intid` (32..64).
    pub fn new(gic: Arc<Gic<W>>, intid: u32) -> Result<SpiLine<W>, SpiLineError> {
        if !(SPI_FIRST..INTID_LIMIT).contains(&intid) {
            return Err(SpiLineError::NotAnSpi(intid));
        }
        Ok(SpiLine {
            gic,
            bit: intid - SPI_FIRST,
        })
    }
}

impl<W: Word> IrqLine for SpiLine<W> {
    fn set_level(&self, high: bool) {
        self.gic.set_spi_level(self.bit, high);
    }
}
