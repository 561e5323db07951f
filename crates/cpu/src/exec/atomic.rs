//! Exclusives (LDXR/STXR and pairs), the LSE atomics and compare-and-swap.
//! Each is one block of up to 16 bytes: a register or a pair of them, joined
//! little-endian.

use apf_abi::esr::AccessSize;

use super::access::no_syndrome;
use super::size_mask;
use crate::Cpu;
use crate::bus::{AtomicOp, Bus};
use crate::cpu::{Flow, Monitor};
use crate::exception::AccessInfo;

/// The size of an exclusive or compare-and-swap: one register or two.
#[inline]
fn block_bytes(size: AccessSize, pair: bool) -> u64 {
    if pair { 2 * size.bytes() } else { size.bytes() }
}

/// Two registers as the block a pair accesses: `lo` at the lower address.
#[inline]
fn join(lo: u64, hi: u64, size: AccessSize) -> u128 {
    let m = size_mask(size);
    u128::from(lo & m) | (u128::from(hi & m) << (size.bytes() * 8))
}

/// A block back into two registers (the second is zero for a single one).
#[inline]
fn split(block: u128, size: AccessSize) -> (u64, u64) {
    let m = size_mask(size);
    (block as u64 & m, (block >> (size.bytes() * 8)) as u64 & m)
}

impl Cpu {
    /// The virtual and physical address of an exclusive or atomic access of
    /// `bytes`: the base register, aligned to the whole access (pairs
    /// included) in every memory type, and translated for a read or a write.
    #[inline]
    fn atomic_target<B: Bus>(
        &mut self,
        bus: &mut B,
        n: u8,
        bytes: u64,
        write: bool,
    ) -> Result<(u64, u64), Flow> {
        let va = self.base(n)?;
        self.aligned(va, bytes, write)?;
        if !self.mmu_on() {
            return Ok((va, va));
        }
        let t = self.translate_data(bus, va, no_syndrome(write))?;
        Ok((va, t.pa))
    }

    /// Reads the `bytes` (up to 16) at `addr` as one block. The bus has no
    /// 16-byte read, so sixteen bytes take two (an exclusive load need not be
    /// single-copy atomic: the store-exclusive compares the whole block).
    fn read_block<B: Bus>(
        &mut self,
        bus: &mut B,
        (va, pa): (u64, u64),
        bytes: u64,
        info: AccessInfo,
    ) -> Result<u128, Flow> {
        if bytes <= 8 {
            let size = AccessSize::from_bytes(bytes).unwrap_or(AccessSize::Double);
            return bus
                .read(pa, size)
                .map(u128::from)
                .map_err(|e| self.access_fault(e, va, pa, info));
        }
        // 16-aligned, so both halves are on one page.
        let (high_va, high) = (va.wrapping_add(8), pa.wrapping_add(8));
        let lo = bus
            .read(pa, AccessSize::Double)
            .map_err(|e| self.access_fault(e, va, pa, info))?;
        let hi = bus
            .read(high, AccessSize::Double)
            .map_err(|e| self.access_fault(e, high_va, high, info))?;
        Ok(u128::from(lo) | (u128::from(hi) << 64))
    }

    /// Replaces the `bytes` (up to 16) at `addr` with `new` if they equal
    /// `old`, atomically against other vCPUs; returns the previous value.
    fn swap_block<B: Bus>(
        &mut self,
        bus: &mut B,
        (va, addr): (u64, u64),
        bytes: u64,
        old: u128,
        new: u128,
    ) -> Result<u128, Flow> {
        let prev = if bytes == 16 {
            bus.compare_exchange_pair(addr, old, new)
        } else {
            let size = AccessSize::from_bytes(bytes).unwrap_or(AccessSize::Double);
            bus.compare_exchange(addr, size, old as u64, new as u64)
                .map(u128::from)
        }
        .map_err(|e| self.access_fault(e, va, addr, no_syndrome(true)))?;
        if prev == old {
            self.cache.stored(addr, bytes);
        }
        Ok(prev)
    }

    /// LDXR and LDXP. For a single register `t2` is the sink.
    pub(super) fn load_exclusive<B: Bus>(
        &mut self,
        bus: &mut B,
        t: u8,
        t2: u8,
        n: u8,
        size: AccessSize,
        pair: bool,
    ) -> Flow {
        let bytes = block_bytes(size, pair);
        let target = match self.atomic_target(bus, n, bytes, false) {
            Ok(a) => a,
            Err(f) => return f,
        };
        let value = match self.read_block(bus, target, bytes, no_syndrome(false)) {
            Ok(v) => v,
            Err(f) => return f,
        };
        // The monitor holds the physical address, as hardware's does.
        self.monitor = Some(Monitor {
            addr: target.1,
            bytes,
            value,
        });
        let (first, second) = split(value, size);
        self.w(t, first);
        self.w(t2, second);
        Flow::Next
    }

    /// STXR and STXP. For a single register `t2` is the zero register.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn store_exclusive<B: Bus>(
        &mut self,
        bus: &mut B,
        s: u8,
        t: u8,
        t2: u8,
        n: u8,
        size: AccessSize,
        pair: bool,
    ) -> Flow {
        let bytes = block_bytes(size, pair);
        let target = match self.atomic_target(bus, n, bytes, true) {
            Ok(a) => a,
            Err(f) => return f,
        };
        let new = join(self.r(t), self.r(t2), size);
        let success = match self.monitor {
            Some(mon) if mon.addr == target.1 && mon.bytes == bytes => {
                match self.swap_block(bus, target, bytes, mon.value, new) {
                    Ok(prev) => prev == mon.value,
                    Err(f) => return f,
                }
            }
            _ => false,
        };
        self.monitor = None;
        self.w(s, u64::from(!success));
        Flow::Next
    }

    /// CAS and CASP: `s` and `t` are raw register numbers, even for a pair.
    pub(super) fn compare_and_swap<B: Bus>(
        &mut self,
        bus: &mut B,
        s: u8,
        t: u8,
        n: u8,
        size: AccessSize,
        pair: bool,
    ) -> Flow {
        let bytes = block_bytes(size, pair);
        let target = match self.atomic_target(bus, n, bytes, true) {
            Ok(a) => a,
            Err(f) => return f,
        };
        let second = |r: u8| if pair { self.r_raw(r + 1) } else { 0 };
        let old = join(self.r_raw(s), second(s), size);
        let new = join(self.r_raw(t), second(t), size);
        match self.swap_block(bus, target, bytes, old, new) {
            Ok(prev) => {
                let (first, second) = split(prev, size);
                self.w_raw(s, first);
                if pair {
                    self.w_raw(s + 1, second);
                }
                Flow::Next
            }
            Err(f) => f,
        }
    }

    /// LDADD..LDUMIN and SWP.
    #[inline(always)]
    pub(super) fn atomic_rmw<B: Bus>(
        &mut self,
        bus: &mut B,
        s: u8,
        t: u8,
        n: u8,
        size: AccessSize,
        op: AtomicOp,
    ) -> Flow {
        let (va, addr) = match self.atomic_target(bus, n, size.bytes(), true) {
            Ok(a) => a,
            Err(f) => return f,
        };
        let operand = self.r(s) & size_mask(size);
        match bus.atomic_rmw(addr, size, op, operand) {
            Ok(old) => {
                self.cache.stored(addr, size.bytes());
                self.w(t, old);
                Flow::Next
            }
            Err(e) => self.access_fault(e, va, addr, no_syndrome(true)),
        }
    }
}
