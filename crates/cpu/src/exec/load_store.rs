//! The load and store instructions: single register (immediate, register
//! offset, literal), pairs, and load-acquire/store-release.

use std::sync::atomic::{Ordering, fence};

use apf_abi::esr::AccessSize;

use super::access::{Access, no_syndrome, single};
use super::alu::extended;
use super::{sext, size_mask};
use crate::Cpu;
use crate::bus::Bus;
use crate::cpu::Flow;
use crate::decode::{Extend, LoadExt, Writeback};
use crate::exception::AccessInfo;

/// The value a load writes to its register.
#[inline]
fn loaded(v: u64, size: AccessSize, ext: LoadExt) -> u64 {
    match ext {
        LoadExt::Zero => v,
        LoadExt::Sign32 => sext(v, (size.bytes() * 8) as u32) & 0xFFFF_FFFF,
        LoadExt::Sign64 => sext(v, (size.bytes() * 8) as u32),
    }
}

fn load_info(t: u8, size: AccessSize, ext: LoadExt, wb: Writeback) -> AccessInfo {
    if wb != Writeback::None {
        return no_syndrome(false);
    }
    let sixty_four = match ext {
        LoadExt::Zero => size == AccessSize::Double,
        LoadExt::Sign32 => false,
        LoadExt::Sign64 => true,
    };
    single(t, size, ext != LoadExt::Zero, sixty_four, false, false)
}

fn store_info(t: u8, size: AccessSize, wb: Writeback) -> AccessInfo {
    if wb != Writeback::None {
        return no_syndrome(true);
    }
    single(t, size, false, size == AccessSize::Double, false, true)
}

/// A single-register load or store (immediate, register offset, literal),
/// described by its fields so that the syndrome is built only on a fault.
#[derive(Debug, Clone, Copy)]
struct Single {
    t: u8,
    size: AccessSize,
    /// `None` for a store.
    load: Option<LoadExt>,
    wb: Writeback,
    unprivileged: bool,
}

impl Access for Single {
    #[inline(always)]
    fn write(self) -> bool {
        self.load.is_none()
    }
    #[inline(always)]
    fn unprivileged(self) -> bool {
        self.unprivileged
    }
    // Inline, each fault path builds the syndrome itself from the fields it
    // has; out of line, the fields were packed into one argument on every
    // access, faulting or not.
    #[inline(always)]
    fn info(self) -> AccessInfo {
        let info = match self.load {
            Some(ext) => load_info(self.t, self.size, ext, self.wb),
            None => store_info(self.t, self.size, self.wb),
        };
        AccessInfo {
            unprivileged: self.unprivileged,
            ..info
        }
    }
}

impl Cpu {
    /// A load with an immediate offset: LDR (unsigned offset, pre- or
    /// post-indexed), LDUR and LDTR.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    pub(super) fn load_immediate<B: Bus>(
        &mut self,
        bus: &mut B,
        t: u8,
        n: u8,
        offset: i32,
        size: AccessSize,
        ext: LoadExt,
        wb: Writeback,
        unprivileged: bool,
    ) -> Flow {
        let base = match self.base(n) {
            Ok(b) => b,
            Err(f) => return f,
        };
        let moved = base.wrapping_add(i64::from(offset) as u64);
        let addr = if wb == Writeback::Post { base } else { moved };
        let info = Single {
            t,
            size,
            load: Some(ext),
            wb,
            unprivileged,
        };
        let v = match self.load(bus, addr, size, info) {
            Ok(v) => v,
            Err(f) => return f,
        };
        // Rt == Rn with writeback: writeback suppressed (a permitted outcome).
        if wb != Writeback::None && t != n {
            self.w(n, moved);
        }
        self.w(t, loaded(v, size, ext));
        Flow::Next
    }

    /// A store with an immediate offset: STR (unsigned offset, pre- or
    /// post-indexed), STUR and STTR.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    pub(super) fn store_immediate<B: Bus>(
        &mut self,
        bus: &mut B,
        t: u8,
        n: u8,
        offset: i32,
        size: AccessSize,
        wb: Writeback,
        unprivileged: bool,
    ) -> Flow {
        let base = match self.base(n) {
            Ok(b) => b,
            Err(f) => return f,
        };
        let moved = base.wrapping_add(i64::from(offset) as u64);
        let addr = if wb == Writeback::Post { base } else { moved };
        // Rt == Rn with writeback stores the original value (a permitted outcome).
        let v = self.r(t);
        let info = Single {
            t,
            size,
            load: None,
            wb,
            unprivileged,
        };
        if let Err(f) = self.store(bus, addr, size, v, info) {
            return f;
        }
        if wb != Writeback::None {
            self.w(n, moved);
        }
        Flow::Next
    }

    /// LDR (register): the offset register extended and shifted.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    pub(super) fn load_register_offset<B: Bus>(
        &mut self,
        bus: &mut B,
        t: u8,
        n: u8,
        m: u8,
        ext: Extend,
        shift: u8,
        size: AccessSize,
        sign: LoadExt,
    ) -> Flow {
        let base = match self.base(n) {
            Ok(b) => b,
            Err(f) => return f,
        };
        let addr = base.wrapping_add(extended(self.r(m), ext, shift));
        let info = Single {
            t,
            size,
            load: Some(sign),
            wb: Writeback::None,
            unprivileged: false,
        };
        match self.load(bus, addr, size, info) {
            Ok(v) => {
                self.w(t, loaded(v, size, sign));
                Flow::Next
            }
            Err(f) => f,
        }
    }

    /// STR (register): the offset register extended and shifted.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    pub(super) fn store_register_offset<B: Bus>(
        &mut self,
        bus: &mut B,
        t: u8,
        n: u8,
        m: u8,
        ext: Extend,
        shift: u8,
        size: AccessSize,
    ) -> Flow {
        let base = match self.base(n) {
            Ok(b) => b,
            Err(f) => return f,
        };
        let addr = base.wrapping_add(extended(self.r(m), ext, shift));
        let v = self.r(t);
        match self.store(
            bus,
            addr,
            size,
            v,
            Single {
                t,
                size,
                load: None,
                wb: Writeback::None,
                unprivileged: false,
            },
        ) {
            Ok(()) => Flow::Next,
            Err(f) => f,
        }
    }

    /// LDR (literal) and LDRSW (literal): PC-relative.
    #[inline(always)]
    pub(super) fn load_literal<B: Bus>(
        &mut self,
        bus: &mut B,
        t: u8,
        offset: i32,
        size: AccessSize,
        ext: LoadExt,
    ) -> Flow {
        let addr = self.pc.wrapping_add(i64::from(offset) as u64);
        match self.load(
            bus,
            addr,
            size,
            Single {
                t,
                size,
                load: Some(ext),
                wb: Writeback::None,
                unprivileged: false,
            },
        ) {
            Ok(v) => {
                self.w(t, loaded(v, size, ext));
                Flow::Next
            }
            Err(f) => f,
        }
    }

    /// LDAR, LDLAR, LDAPR.
    #[inline(always)]
    pub(super) fn load_acquire<B: Bus>(
        &mut self,
        bus: &mut B,
        t: u8,
        n: u8,
        size: AccessSize,
    ) -> Flow {
        let addr = match self.base(n) {
            Ok(b) => b,
            Err(f) => return f,
        };
        // Ordered accesses must be aligned in Normal memory too.
        if let Err(f) = self.aligned(addr, size.bytes(), false) {
            return f;
        }
        let info = single(t, size, false, size == AccessSize::Double, true, false);
        match self.load(bus, addr, size, info) {
            Ok(v) => {
                fence(Ordering::Acquire);
                self.w(t, v);
                Flow::Next
            }
            Err(f) => f,
        }
    }

    /// STLR, STLLR.
    #[inline(always)]
    pub(super) fn store_release<B: Bus>(
        &mut self,
        bus: &mut B,
        t: u8,
        n: u8,
        size: AccessSize,
    ) -> Flow {
        let addr = match self.base(n) {
            Ok(b) => b,
            Err(f) => return f,
        };
        if let Err(f) = self.aligned(addr, size.bytes(), true) {
            return f;
        }
        fence(Ordering::Release);
        let info = single(t, size, false, size == AccessSize::Double, true, true);
        match self.store(bus, addr, size, self.r(t) & size_mask(size), info) {
            Ok(()) => Flow::Next,
            Err(f) => f,
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn load_pair<B: Bus>(
        &mut self,
        bus: &mut B,
        t: u8,
        t2: u8,
        n: u8,
        offset: i32,
        size: AccessSize,
        sign: bool,
        wb: Writeback,
    ) -> Flow {
        let base = match self.base(n) {
            Ok(b) => b,
            Err(f) => return f,
        };
        let moved = base.wrapping_add(i64::from(offset) as u64);
        let addr = if wb == Writeback::Post { base } else { moved };
        let info = no_syndrome(false);
        let first = match self.load(bus, addr, size, info) {
            Ok(v) => v,
            Err(f) => return f,
        };
        let second = match self.load(bus, addr.wrapping_add(size.bytes()), size, info) {
            Ok(v) => v,
            Err(f) => return f,
        };
        let ext = if sign { LoadExt::Sign64 } else { LoadExt::Zero };
        // Rn == Rt or Rt2 with writeback: writeback suppressed (a permitted outcome).
        if wb != Writeback::None && t != n && t2 != n {
            self.w(n, moved);
        }
        self.w(t, loaded(first, size, ext));
        self.w(t2, loaded(second, size, ext));
        Flow::Next
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn store_pair<B: Bus>(
        &mut self,
        bus: &mut B,
        t: u8,
        t2: u8,
        n: u8,
        offset: i32,
        size: AccessSize,
        wb: Writeback,
    ) -> Flow {
        let base = match self.base(n) {
            Ok(b) => b,
            Err(f) => return f,
        };
        let moved = base.wrapping_add(i64::from(offset) as u64);
        let addr = if wb == Writeback::Post { base } else { moved };
        let second_addr = addr.wrapping_add(size.bytes());
        let info = no_syndrome(true);
        let (v1, v2) = (self.r(t) & size_mask(size), self.r(t2) & size_mask(size));
        if self.mmu_on() {
            let block = u128::from(v1) | (u128::from(v2) << (8 * size.bytes()));
            let len = 2 * size.bytes();
            if let Err(f) = self.store_block(bus, addr, len, size.bytes(), block, info) {
                return f;
            }
            if wb != Writeback::None {
                self.w(n, moved);
            }
            return Flow::Next;
        }
        if let Err(f) = self.aligned(addr, size.bytes(), true) {
            return f;
        }
        // A pair that crosses a page: probe both pages with reads first, in
        // address order, so a fault on the second cannot leave the first written.
        if second_addr & 0xFFF == 0 {
            for probe in [addr, second_addr] {
                if let Err(e) = bus.read(probe, size) {
                    return self.access_fault(e, probe, probe, info);
                }
            }
        }
        if let Err(f) = self.store(bus, addr, size, v1, info) {
            return f;
        }
        if let Err(f) = self.store(bus, second_addr, size, v2, info) {
            return f;
        }
        if wb != Writeback::None {
            self.w(n, moved);
        }
        Flow::Next
    }
}
