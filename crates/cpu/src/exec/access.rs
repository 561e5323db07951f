//! The data-access path: every load and store takes its address from a base
//! register, is translated by the stage-1 MMU when SCTLR_EL1.M is set, is
//! checked for alignment against the memory type, and goes to the bus; a
//! failure becomes a stage-2 exit or an abort to EL1. Besides `load`, `store`
//! and `store_block`, the bus is called by `atomic` (with addresses from
//! `atomic_target`) and by the page probe of `store_pair` (MMU off).
//!
//! With the MMU off every access is to Device memory, so it must be aligned,
//! and that branch comes first and is what it always was. With the MMU on,
//! Normal memory takes unaligned and page-crossing accesses: both pages are
//! translated before anything happens, then the bytes go one by one.

use apf_abi::esr::{AccessSize, AccessSyndrome, Esr, ec, fsc};

use crate::Cpu;
use crate::bus::{Bus, BusError};
use crate::cpu::Flow;
use crate::decode::reg;
use crate::exception::AccessInfo;
use crate::mmu::{AccessKind, Fault, Translation};
use crate::sysreg::{SCTLR_A, SCTLR_M, raw_rt};

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
        unprivileged: false,
    }
}

/// The syndrome of an access ISV = 0 describes (pairs, writeback, exclusives, atomics).
#[inline]
pub(super) fn no_syndrome(write: bool) -> AccessInfo {
    AccessInfo {
        syndrome: None,
        write,
        unprivileged: false,
    }
}

/// What the access path needs to know about an access: whether it writes
/// and which EL's permissions apply, cheaply; and, only on a fault, the full
/// [`AccessInfo`] (packing the syndrome costs as much as the access itself).
pub(super) trait Access: Copy {
    fn write(self) -> bool;
    fn unprivileged(self) -> bool;
    fn info(self) -> AccessInfo;
}

impl Access for AccessInfo {
    #[inline(always)]
    fn write(self) -> bool {
        self.write
    }
    #[inline(always)]
    fn unprivileged(self) -> bool {
        self.unprivileged
    }
    #[inline(always)]
    fn info(self) -> AccessInfo {
        self
    }
}

/// The physical address of byte `va` of an access that starts at `start`
/// (translated to `first`) and may continue on the next page (`second`).
#[inline]
fn byte_pa(va: u64, start: u64, first: Translation, second: Translation) -> u64 {
    if (va ^ start) >> 12 == 0 {
        first.pa.wrapping_add(va.wrapping_sub(start))
    } else {
        (second.pa & !0xFFF) | (va & 0xFFF)
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

    /// Whether the stage-1 MMU is on.
    #[inline(always)]
    pub(super) fn mmu_on(&self) -> bool {
        self.sys.sctlr_el1 & SCTLR_M != 0
    }

    /// The flow for a failed bus access at physical `pa` (virtual `va`).
    #[cold]
    pub(super) fn access_fault(&mut self, e: BusError, va: u64, pa: u64, info: AccessInfo) -> Flow {
        match e {
            BusError::Stage2Fault => {
                let exit = self.stage2_exit(Cpu::stage2_data_syndrome(info), va, pa);
                self.fault_exit(exit)
            }
            BusError::ExternalAbort => {
                self.data_abort_el1(va, info.write, fsc::SYNC_EXTERNAL);
                Flow::Trap
            }
        }
    }

    /// The flow for a failed stage-1 translation of data address `va`.
    #[cold]
    pub(super) fn translation_fault(&mut self, f: Fault, va: u64, info: AccessInfo) -> Flow {
        match f {
            Fault::WalkStage2 { ipa, .. } => {
                let exit = self.stage2_exit(Cpu::stage2_walk_data_syndrome(false), va, ipa);
                self.fault_exit(exit)
            }
            _ => {
                self.data_abort_el1(va, info.write, f.status());
                Flow::Trap
            }
        }
    }

    /// Translates data address `va` (MMU on) with the permissions `info` asks for.
    #[inline(always)]
    pub(super) fn translate_data<B: Bus>(
        &mut self,
        bus: &mut B,
        va: u64,
        info: impl Access,
    ) -> Result<Translation, Flow> {
        let kind = if info.write() {
            AccessKind::Write
        } else {
            AccessKind::Read
        };
        let el0 = info.unprivileged() || self.pstate.el == 0;
        self.translate(bus, va, kind, el0)
            .map_err(|f| self.translation_fault(f, va, info.info()))
    }

    /// Alignment check for an access whose alignment does not depend on the
    /// memory type: with the MMU off (all Device), exclusives and atomics.
    #[inline(always)]
    pub(super) fn aligned(&mut self, addr: u64, bytes: u64, write: bool) -> Result<(), Flow> {
        if addr & (bytes - 1) != 0 {
            self.alignment_fault(addr, write);
            return Err(Flow::Trap);
        }
        Ok(())
    }

    #[cold]
    pub(super) fn alignment_fault(&mut self, addr: u64, write: bool) {
        self.data_abort_el1(addr, write, fsc::ALIGNMENT);
    }

    #[inline(always)]
    pub(super) fn load<B: Bus>(
        &mut self,
        bus: &mut B,
        addr: u64,
        size: AccessSize,
        info: impl Access,
    ) -> Result<u64, Flow> {
        if !self.mmu_on() {
            self.aligned(addr, size.bytes(), false)?;
            return bus
                .read(addr, size)
                .map_err(|e| self.access_fault(e, addr, addr, info.info()));
        }
        if addr & (size.bytes() - 1) != 0 {
            // Only the low `size` bytes are set.
            #[allow(clippy::cast_possible_truncation)]
            return self
                .load_block(bus, addr, size.bytes(), size.bytes(), info)
                .map(|v| v as u64);
        }
        let t = self.translate_data(bus, addr, info)?;
        bus.read(t.pa, size)
            .map_err(|e| self.access_fault(e, addr, t.pa, info.info()))
    }

    #[inline(always)]
    pub(super) fn store<B: Bus>(
        &mut self,
        bus: &mut B,
        addr: u64,
        size: AccessSize,
        v: u64,
        info: impl Access,
    ) -> Result<(), Flow> {
        if !self.mmu_on() {
            self.aligned(addr, size.bytes(), true)?;
            bus.write(addr, size, v)
                .map_err(|e| self.access_fault(e, addr, addr, info.info()))?;
            self.cache.stored_aligned(addr, size.bytes());
            return Ok(());
        }
        if addr & (size.bytes() - 1) != 0 {
            return self.store_block(bus, addr, size.bytes(), size.bytes(), u128::from(v), info);
        }
        let t = self.translate_data(bus, addr, info)?;
        bus.write(t.pa, size, v)
            .map_err(|e| self.access_fault(e, addr, t.pa, info.info()))?;
        // Aligned: the PA has the VA's page offset.
        self.cache.stored_aligned(t.pa, size.bytes());
        Ok(())
    }

    /// Translates the `len` bytes at `va` (MMU on) for an access made of
    /// elements of `elem` bytes: both pages when it crosses one, and the
    /// alignment check that depends on the memory type. Returns the
    /// translations of the first and the last byte.
    fn translate_block<B: Bus>(
        &mut self,
        bus: &mut B,
        va: u64,
        len: u64,
        elem: u64,
        info: impl Access,
    ) -> Result<(Translation, Translation), Flow> {
        let unaligned = va & (elem - 1) != 0;
        // SCTLR.A faults before translation; Device memory needs the type.
        if unaligned && self.sys.sctlr_el1 & SCTLR_A != 0 {
            self.alignment_fault(va, info.write());
            return Err(Flow::Trap);
        }
        let first = self.translate_data(bus, va, info)?;
        let last = va.wrapping_add(len - 1);
        let second = if (va ^ last) >> 12 != 0 {
            let page = (va | 0xFFF).wrapping_add(1);
            self.translate_data(bus, page, info)?
        } else {
            first
        };
        if unaligned && (first.device || second.device) {
            self.alignment_fault(va, info.write());
            return Err(Flow::Trap);
        }
        Ok((first, second))
    }

    /// Reads `len` (up to 16) bytes at `va` with the MMU on, made of elements of
    /// `elem` bytes, in any alignment the memory type allows; little-endian.
    #[cold]
    pub(super) fn load_block<B: Bus>(
        &mut self,
        bus: &mut B,
        va: u64,
        len: u64,
        elem: u64,
        info: impl Access,
    ) -> Result<u128, Flow> {
        let (first, second) = self.translate_block(bus, va, len, elem, info)?;
        let mut value = 0u128;
        for k in 0..len {
            let at = va.wrapping_add(k);
            let pa = byte_pa(at, va, first, second);
            let byte = bus
                .read(pa, AccessSize::Byte)
                .map_err(|e| self.access_fault(e, at, pa, info.info()))?;
            value |= u128::from(byte) << (8 * k);
        }
        Ok(value)
    }

    /// Writes the low `len` (up to 16) bytes of `value` at `va` with the MMU on,
    /// made of elements of `elem` bytes, in any alignment the memory type
    /// allows. Nothing is written unless both pages are there: a page-crossing
    /// store first reads a byte of each page, in address order, so a stage-2
    /// fault exits before any effect. (A page the host maps read-only would
    /// pass the probe and fault on the write after the first page was
    /// written; the retry writes the same bytes again, and apf's host maps
    /// guest RAM read-write, so the guest cannot tell.)
    pub(super) fn store_block<B: Bus>(
        &mut self,
        bus: &mut B,
        va: u64,
        len: u64,
        elem: u64,
        value: u128,
        info: impl Access,
    ) -> Result<(), Flow> {
        let (first, second) = self.translate_block(bus, va, len, elem, info)?;
        let last = va.wrapping_add(len - 1);
        let crosses = (va ^ last) >> 12 != 0;
        if crosses {
            for (at, pa) in [(va, first.pa), (last & !0xFFF, second.pa & !0xFFF)] {
                if let Err(e) = bus.read(pa, AccessSize::Byte) {
                    return Err(self.access_fault(e, at, pa, info.info()));
                }
            }
        }
        if va & (elem - 1) == 0 {
            // Aligned elements never cross a page: one bus access each.
            let size = AccessSize::from_bytes(elem).unwrap_or(AccessSize::Double);
            for k in 0..len / elem {
                let at = va.wrapping_add(k * elem);
                let pa = byte_pa(at, va, first, second);
                // One element's bytes.
                #[allow(clippy::cast_possible_truncation)]
                let part = (value >> (8 * k * elem)) as u64;
                bus.write(pa, size, part)
                    .map_err(|e| self.access_fault(e, at, pa, info.info()))?;
            }
        } else {
            for k in 0..len {
                let at = va.wrapping_add(k);
                let pa = byte_pa(at, va, first, second);
                #[allow(clippy::cast_possible_truncation)]
                let byte = (value >> (8 * k)) as u64 & 0xFF;
                bus.write(pa, AccessSize::Byte, byte)
                    .map_err(|e| self.access_fault(e, at, pa, info.info()))?;
            }
        }
        let first_len = if crosses { 0x1000 - (va & 0xFFF) } else { len };
        self.cache.stored(first.pa, first_len);
        if crosses {
            self.cache.stored(second.pa & !0xFFF, len - first_len);
        }
        Ok(())
    }
}
