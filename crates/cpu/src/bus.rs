//! The boundary between a vCPU and everything outside it: guest memory (through
//! the host's stage-2), MMIO, and the system registers the CPU does not own.

use std::ptr::NonNull;

pub use apf_abi::esr::AccessSize;

/// Why an access through the [`Bus`] did not complete.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BusError {
    /// The page is not mapped at stage 2: the CPU exits with
    /// [`Exit::Stage2Abort`](crate::Exit::Stage2Abort) and the instruction can be retried.
    Stage2Fault,
    /// Nothing is there, or the page could not be read: the CPU takes a synchronous
    /// external abort to EL1.
    ExternalAbort,
}

/// The read-modify-write operations of the LSE atomics (and SWP).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AtomicOp {
    /// LDADD: `old + operand`.
    Add,
    /// LDCLR: `old & !operand`.
    Clear,
    /// LDEOR: `old ^ operand`.
    Eor,
    /// LDSET: `old | operand`.
    Set,
    /// LDSMAX: signed maximum at the access size.
    SignedMax,
    /// LDSMIN: signed minimum at the access size.
    SignedMin,
    /// LDUMAX: unsigned maximum.
    UnsignedMax,
    /// LDUMIN: unsigned minimum.
    UnsignedMin,
    /// SWP: `operand`.
    Swap,
}

impl AtomicOp {
    /// The value the operation stores, given the old memory value and the operand
    /// (both zero-extended from `size`). The result is truncated to `size`.
    pub fn apply(self, size: AccessSize, old: u64, operand: u64) -> u64 {
        let bits = size.bytes() * 8;
        let mask = if bits == 64 {
            u64::MAX
        } else {
            (1u64 << bits) - 1
        };
        let signed = |v: u64| -> i64 {
            let shift = 64 - bits;
            // Reinterpreting the bits is the point: sign-extend from `bits`.
            #[allow(clippy::cast_possible_wrap)]
            let s = (v << shift) as i64;
            s >> shift
        };
        let (old, operand) = (old & mask, operand & mask);
        let new = match self {
            AtomicOp::Add => old.wrapping_add(operand),
            AtomicOp::Clear => old & !operand,
            AtomicOp::Eor => old ^ operand,
            AtomicOp::Set => old | operand,
            AtomicOp::SignedMax => {
                if signed(old) >= signed(operand) {
                    old
                } else {
                    operand
                }
            }
            AtomicOp::SignedMin => {
                if signed(old) <= signed(operand) {
                    old
                } else {
                    operand
                }
            }
            AtomicOp::UnsignedMax => old.max(operand),
            AtomicOp::UnsignedMin => old.min(operand),
            AtomicOp::Swap => operand,
        };
        new & mask
    }
}

/// Maintenance one vCPU broadcasts to the others ([`Bus::broadcast`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Broadcast {
    /// Drop cached stage-1 translations (every TLBI …IS form; dropping all of
    /// them is always allowed).
    Tlb,
    /// Drop the decoded instructions of the guest-physical page holding this
    /// address (IC IVAU, which the architecture broadcasts).
    CodePage(u64),
    /// Drop every decoded instruction (IC IALLUIS).
    AllCode,
}

/// A system register named by its MRS/MSR encoding (op0, op1, CRn, CRm, op2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SysRegId {
    /// op0 (2 bits; 2 or 3 for registers, 1 for SYS instructions).
    pub op0: u8,
    /// op1 (3 bits).
    pub op1: u8,
    /// CRn (4 bits).
    pub crn: u8,
    /// CRm (4 bits).
    pub crm: u8,
    /// op2 (3 bits).
    pub op2: u8,
}

impl SysRegId {
    /// The register with this encoding.
    pub const fn new(op0: u8, op1: u8, crn: u8, crm: u8, op2: u8) -> SysRegId {
        SysRegId {
            op0,
            op1,
            crn,
            crm,
            op2,
        }
    }

    /// Decodes bits 20:5 of an MRS/MSR/SYS instruction.
    pub const fn from_instruction(insn: u32) -> SysRegId {
        SysRegId {
            op0: ((insn >> 19) & 3) as u8,
            op1: ((insn >> 16) & 7) as u8,
            crn: ((insn >> 12) & 0xF) as u8,
            crm: ((insn >> 8) & 0xF) as u8,
            op2: ((insn >> 5) & 7) as u8,
        }
    }

    /// The encoding in the layout ESR_ELx uses for a trapped MSR/MRS (EC 0x18):
    /// op0 21:20, op2 19:17, op1 16:14, CRn 13:10, CRm 4:1.
    pub const fn trap_iss(self) -> u64 {
        ((self.op0 as u64 & 3) << 20)
            | ((self.op2 as u64 & 7) << 17)
            | ((self.op1 as u64 & 7) << 14)
            | ((self.crn as u64 & 0xF) << 10)
            | ((self.crm as u64 & 0xF) << 1)
    }
}

/// Guest memory, MMIO and foreign system registers, as one vCPU sees them.
///
/// Implemented by the host per vCPU. The CPU is generic over it so the calls
/// inline. Addresses are guest physical: the CPU does its stage-1 translation
/// itself, and reads table descriptors with [`Bus::read`] (doubleword). Every
/// data access the CPU makes is naturally aligned to its size (unaligned
/// guest accesses to Normal memory are split into smaller ones).
pub trait Bus {
    /// Fetches the instruction word at `addr` (4-aligned).
    fn fetch(&mut self, addr: u64) -> Result<u32, BusError>;
    /// Reads `size` bytes at `addr`, zero-extended.
    fn read(&mut self, addr: u64, size: AccessSize) -> Result<u64, BusError>;
    /// Writes the low `size` bytes of `value` at `addr`.
    fn write(&mut self, addr: u64, size: AccessSize, value: u64) -> Result<(), BusError>;
    /// Atomically (against other vCPUs) replaces the value at `addr` with `new` if
    /// it equals `old`. Returns the previous value either way.
    fn compare_exchange(
        &mut self,
        addr: u64,
        size: AccessSize,
        old: u64,
        new: u64,
    ) -> Result<u64, BusError>;
    /// The 16-byte form of [`Bus::compare_exchange`] (CASP and STXP of two X
    /// registers); `addr` is 16-aligned, the low half is at `addr`.
    fn compare_exchange_pair(&mut self, addr: u64, old: u128, new: u128) -> Result<u128, BusError>;
    /// Atomically applies `op` with `operand` to the value at `addr` (see
    /// [`AtomicOp::apply`]) and returns the previous value.
    fn atomic_rmw(
        &mut self,
        addr: u64,
        size: AccessSize,
        op: AtomicOp,
        operand: u64,
    ) -> Result<u64, BusError>;
    /// Reads a system register the CPU does not own (the GIC CPU interface).
    /// `None` makes the MRS UNDEFINED.
    fn sysreg_read(&mut self, reg: SysRegId) -> Option<u64>;
    /// Writes a system register the CPU does not own. `false` makes the MSR
    /// UNDEFINED. The CPU checks [`Bus::kicked`] right after every such access, so a
    /// host whose write changes this vCPU's interrupt line can kick to be told.
    fn sysreg_write(&mut self, reg: SysRegId, value: u64) -> bool;
    /// Whether the host wants `run` to return ([`Exit::Kicked`](crate::Exit::Kicked)).
    /// Checked at least once per basic block.
    fn kicked(&self) -> bool;
    /// This vCPU performed maintenance the architecture broadcasts to the inner
    /// shareable domain (and has applied it to itself). Before this returns, no
    /// other vCPU may still use what it invalidates: each must have applied it
    /// ([`Cpu::flush_tlb`](crate::Cpu::flush_tlb),
    /// [`Cpu::invalidate_decoded`](crate::Cpu::invalidate_decoded); doing more is
    /// always allowed). Returns `true` if this vCPU must drop its whole TLB and
    /// decoded code before its next instruction (others' broadcasts reached it
    /// while it waited). A single-vCPU bus has nobody to tell.
    fn broadcast(&mut self, op: Broadcast) -> bool {
        let _ = op;
        false
    }

    /// RAM page `pa` (4 KiB aligned) for compiled code to read (`write`: and
    /// write) with host loads and stores until this run ends, or None to keep
    /// its accesses on [`Bus::read`] and [`Bus::write`]. Asked only after an
    /// access to the page went through those (so it faulted in, and for a
    /// write, dirty tracking saw it). Default: None.
    fn host_page(&mut self, pa: u64, write: bool) -> Option<HostPage> {
        let _ = (pa, write);
        None
    }
}

/// A guest RAM page in host memory, for compiled code's direct loads and stores.
#[derive(Debug, Clone, Copy)]
pub struct HostPage {
    start: NonNull<u8>,
}

impl HostPage {
    /// The page that starts at `start`.
    ///
    /// # Safety
    ///
    /// `start` is the first of 4096 bytes of host memory that hold the guest
    /// page [`Bus::host_page`] was asked for. Until the [`Cpu::run`] that
    /// asked returns, those bytes stay mapped and hold that page, this vCPU may
    /// read them (and write them, if asked for writing) with naturally aligned
    /// host loads and stores of 1 to 8 bytes, and any other thread accesses
    /// them only with atomic operations.
    ///
    /// [`Cpu::run`]: crate::Cpu::run
    #[allow(unsafe_code)]
    pub unsafe fn new(start: NonNull<u8>) -> HostPage {
        HostPage { start }
    }

    /// The page's host address.
    pub(crate) fn addr(self) -> u64 {
        self.start.as_ptr() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signed_min_max_use_the_access_size() {
        // 0x80 is -128 as a byte, so it is the minimum, not the maximum.
        assert_eq!(
            AtomicOp::SignedMax.apply(AccessSize::Byte, 0x80, 0x01),
            0x01
        );
        assert_eq!(
            AtomicOp::SignedMin.apply(AccessSize::Byte, 0x80, 0x01),
            0x80
        );
        assert_eq!(
            AtomicOp::UnsignedMax.apply(AccessSize::Byte, 0x80, 0x01),
            0x80
        );
        assert_eq!(
            AtomicOp::SignedMin.apply(AccessSize::Double, 1, u64::MAX),
            u64::MAX
        );
    }

    #[test]
    fn results_are_truncated_to_the_size() {
        assert_eq!(AtomicOp::Add.apply(AccessSize::Half, 0xFFFF, 2), 1);
        assert_eq!(
            AtomicOp::Clear.apply(AccessSize::Word, 0xFFFF_FFFF, 0xF),
            0xFFFF_FFF0
        );
        assert_eq!(AtomicOp::Swap.apply(AccessSize::Byte, 0, 0x1FF), 0xFF);
    }

    #[test]
    fn trap_iss_places_each_field() {
        // MRS x?, CNTVCT_EL0 = (3, 3, 14, 0, 2)
        let id = SysRegId::new(3, 3, 14, 0, 2);
        assert_eq!(
            id.trap_iss(),
            (3 << 20) | (2 << 17) | (3 << 14) | (14 << 10)
        );
        let insn = 0xD53B_E040; // mrs x0, cntvct_el0
        assert_eq!(SysRegId::from_instruction(insn), id);
    }
}
