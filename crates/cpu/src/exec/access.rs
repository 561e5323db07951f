//! The data-access path: every load and store takes its address from a base
//! register, is checked for alignment and goes to the bus, and a failure
//! becomes a stage-2 exit or an abort to EL1. Stage-1 translation belongs here:
//! it gives the address the bus sees and the memory type the alignment check
//! depends on. Besides `load` and `store`, the bus is called directly by
//! `atomic` and by the page probe of `store_pair`.

use apf_abi::esr::{AccessSize, AccessSyndrome, Esr, ec, fsc};

use crate::Cpu;
use crate::bus::{Bus, BusError};
use crate::cpu::Flow;
use crate::decode::reg;
use crate::exception::AccessInfo;
use crate::sysreg::raw_rt;

/// The syndrome of a single-register access without writeback (ISV = 1).
#[inline]
pub(super) fn single(
    t: u8,
    size: AccessSize,
    sign: bool,
    sixty_four: bool,
    ar: bool,
    write: bool,
) -> AccessInfo {
    AccessInfo {
        syndrome: Some(AccessSyndrome {
            size,
            sign_extend: sign,
            srt: raw_rt(t) as u8,
            sixty_four,
            acquire_release: ar,
        }),
        write,
    }
}

/// The syndrome of an access ISV = 0 describes (pairs, writeback, exclusives, atomics).
#[inline]
pub(super) fn no_syndrome(write: bool) -> AccessInfo {
    AccessInfo {
        syndrome: None,
        write,
    }
}

impl Cpu {
    /// The base register of an access, with the SP alignment check.
    #[inline(always)]
    pub(super) fn base(&mut self, n: u8) -> Result<u64, Flow> {
        let b = self.r(n);
        if n == reg::SP && b & 0xF != 0 && self.sp_alignment_checked() {
            self.sync_exception(Esr::new(ec::SP_ALIGNMENT, 0), None);
            return Err(Flow::Trap);
        }
        Ok(b)
    }

    /// The flow for a failed data access at `addr`.
    #[cold]
    pub(super) fn access_fault(&mut self, e: BusError, addr: u64, info: AccessInfo) -> Flow {
        match e {
            BusError::Stage2Fault => {
                Flow::Fault(self.stage2_exit(Cpu::stage2_data_syndrome(info), addr))
            }
            BusError::ExternalAbort => {
                self.data_abort_el1(addr, info.write, fsc::SYNC_EXTERNAL);
                Flow::Trap
            }
        }
    }

    /// Alignment check: with the stage-1 MMU off every access is to Device
    /// memory, where an unaligned access faults.
    #[inline(always)]
    pub(super) fn aligned(&mut self, addr: u64, bytes: u64, write: bool) -> Result<(), Flow> {
        if addr & (bytes - 1) != 0 {
            self.alignment_fault(addr, write);
            return Err(Flow::Trap);
        }
        Ok(())
    }

    #[cold]
    fn alignment_fault(&mut self, addr: u64, write: bool) {
        self.data_abort_el1(addr, write, fsc::ALIGNMENT);
    }

    #[inline(always)]
    pub(super) fn load<B: Bus>(
        &mut self,
        bus: &mut B,
        addr: u64,
        size: AccessSize,
        info: AccessInfo,
    ) -> Result<u64, Flow> {
        self.aligned(addr, size.bytes(), false)?;
        bus.read(addr, size)
            .map_err(|e| self.access_fault(e, addr, info))
    }

    #[inline(always)]
    pub(super) fn store<B: Bus>(
        &mut self,
        bus: &mut B,
        addr: u64,
        size: AccessSize,
        v: u64,
        info: AccessInfo,
    ) -> Result<(), Flow> {
        self.aligned(addr, size.bytes(), true)?;
        bus.write(addr, size, v)
            .map_err(|e| self.access_fault(e, addr, info))?;
        self.cache.stored(addr, size.bytes());
        Ok(())
    }
}
