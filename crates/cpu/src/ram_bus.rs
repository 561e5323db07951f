//! A plain RAM [`Bus`] for tests and benchmarks: byte vectors at guest physical
//! addresses, pages that answer "stage-2 fault", and a table of foreign system
//! registers. Single-threaded: its "atomics" are atomic only because nothing
//! else can see the memory.

use std::collections::{HashMap, HashSet};
use std::ptr::NonNull;

use crate::bus::{AccessSize, AtomicOp, Bus, BusError, HostPage, SysRegId};

#[derive(Debug)]
struct Region {
    base: u64,
    bytes: Vec<u8>,
}

/// RAM regions plus test hooks; see the module documentation.
#[derive(Debug, Default)]
pub struct RamBus {
    regions: Vec<Region>,
    unmapped_pages: HashSet<u64>,
    /// Foreign system registers: readable and writable; anything else is UNDEFINED.
    pub sysregs: HashMap<SysRegId, u64>,
    /// What [`Bus::kicked`] answers.
    pub kick: bool,
}

impl RamBus {
    /// An empty bus: every access is an external abort.
    pub fn new() -> RamBus {
        RamBus::default()
    }

    /// A bus with one zeroed region of `len` bytes at `base`.
    pub fn with_region(base: u64, len: usize) -> RamBus {
        let mut bus = RamBus::new();
        bus.add_region(base, len);
        bus
    }

    /// Adds a zeroed region of `len` bytes at `base`. Regions must not overlap;
    /// the first one added is searched first.
    pub fn add_region(&mut self, base: u64, len: usize) {
        self.regions.push(Region {
            base,
            bytes: vec![0; len],
        });
    }

    /// Makes the 4 KiB page holding `addr` answer [`BusError::Stage2Fault`] (or
    /// mapped again, with `unmapped = false`).
    pub fn set_unmapped(&mut self, addr: u64, unmapped: bool) {
        if unmapped {
            self.unmapped_pages.insert(addr >> 12);
        } else {
            self.unmapped_pages.remove(&(addr >> 12));
        }
    }

    /// The bytes `[addr, addr + len)`, if they lie inside one region.
    pub fn slice(&self, addr: u64, len: usize) -> Option<&[u8]> {
        self.regions.iter().find_map(|r| {
            let off = usize::try_from(addr.checked_sub(r.base)?).ok()?;
            r.bytes.get(off..off.checked_add(len)?)
        })
    }

    /// Mutable form of [`RamBus::slice`].
    pub fn slice_mut(&mut self, addr: u64, len: usize) -> Option<&mut [u8]> {
        self.regions.iter_mut().find_map(|r| {
            let off = usize::try_from(addr.checked_sub(r.base)?).ok()?;
            r.bytes.get_mut(off..off.checked_add(len)?)
        })
    }

    /// Copies `bytes` to `addr`; `false` if they do not fit in one region.
    pub fn load(&mut self, addr: u64, bytes: &[u8]) -> bool {
        match self.slice_mut(addr, bytes.len()) {
            Some(dst) => {
                dst.copy_from_slice(bytes);
                true
            }
            None => false,
        }
    }

    /// Writes instruction words from `addr` on; `false` if they do not fit.
    pub fn load_words(&mut self, addr: u64, words: &[u32]) -> bool {
        let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
        self.load(addr, &bytes)
    }

    #[inline(always)]
    fn locate(&mut self, addr: u64, len: usize) -> Result<&mut [u8], BusError> {
        if !self.unmapped_pages.is_empty() && self.unmapped_pages.contains(&(addr >> 12)) {
            return Err(BusError::Stage2Fault);
        }
        for r in &mut self.regions {
            let off = addr.wrapping_sub(r.base);
            if off < r.bytes.len() as u64 {
                // `off` is below a usize length, so it fits.
                #[allow(clippy::cast_possible_truncation)]
                let off = off as usize;
                return r
                    .bytes
                    .get_mut(off..off + len)
                    .ok_or(BusError::ExternalAbort);
            }
        }
        Err(BusError::ExternalAbort)
    }

    #[inline(always)]
    fn get(&mut self, addr: u64, size: AccessSize) -> Result<u64, BusError> {
        let b = self.locate(addr, len_of(size))?;
        Ok(match size {
            AccessSize::Byte => u64::from(b[0]),
            AccessSize::Half => u64::from(u16::from_le_bytes([b[0], b[1]])),
            AccessSize::Word => u64::from(u32::from_le_bytes([b[0], b[1], b[2], b[3]])),
            AccessSize::Double => {
                u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
            }
        })
    }

    #[inline(always)]
    fn put(&mut self, addr: u64, size: AccessSize, value: u64) -> Result<(), BusError> {
        let dst = self.locate(addr, len_of(size))?;
        let bytes = value.to_le_bytes();
        match size {
            AccessSize::Byte => dst[0] = bytes[0],
            AccessSize::Half => dst[..2].copy_from_slice(&bytes[..2]),
            AccessSize::Word => dst[..4].copy_from_slice(&bytes[..4]),
            AccessSize::Double => dst[..8].copy_from_slice(&bytes),
        }
        Ok(())
    }
}

fn len_of(size: AccessSize) -> usize {
    match size {
        AccessSize::Byte => 1,
        AccessSize::Half => 2,
        AccessSize::Word => 4,
        AccessSize::Double => 8,
    }
}

impl Bus for RamBus {
    #[inline]
    fn fetch(&mut self, addr: u64) -> Result<u32, BusError> {
        let w = self.get(addr, AccessSize::Word)?;
        // A word read is 32 bits wide.
        #[allow(clippy::cast_possible_truncation)]
        Ok(w as u32)
    }

    #[inline(always)]
    fn read(&mut self, addr: u64, size: AccessSize) -> Result<u64, BusError> {
        self.get(addr, size)
    }

    fn host_page(&mut self, pa: u64, _write: bool) -> Option<HostPage> {
        if self.unmapped_pages.contains(&(pa >> 12)) {
            return None;
        }
        let page = NonNull::new(self.slice_mut(pa, 4096)?.as_mut_ptr())?;
        // SAFETY: the 4096 bytes are this bus's own, in a region that is
        // never resized; the run that asked holds `&mut self` until it
        // returns, so nothing else reads, writes, unmaps or frees them.
        #[allow(unsafe_code)]
        Some(unsafe { HostPage::new(page) })
    }

    #[inline(always)]
    fn write(&mut self, addr: u64, size: AccessSize, value: u64) -> Result<(), BusError> {
        self.put(addr, size, value)
    }

    fn compare_exchange(
        &mut self,
        addr: u64,
        size: AccessSize,
        old: u64,
        new: u64,
    ) -> Result<u64, BusError> {
        let cur = self.get(addr, size)?;
        if cur == old {
            self.put(addr, size, new)?;
        }
        Ok(cur)
    }

    fn compare_exchange_pair(&mut self, addr: u64, old: u128, new: u128) -> Result<u128, BusError> {
        let lo = self.get(addr, AccessSize::Double)?;
        let hi = self.get(addr.wrapping_add(8), AccessSize::Double)?;
        let cur = (u128::from(hi) << 64) | u128::from(lo);
        if cur == old {
            // Splitting the pair into its two doublewords.
            #[allow(clippy::cast_possible_truncation)]
            let (new_lo, new_hi) = (new as u64, (new >> 64) as u64);
            self.put(addr, AccessSize::Double, new_lo)?;
            self.put(addr.wrapping_add(8), AccessSize::Double, new_hi)?;
        }
        Ok(cur)
    }

    fn atomic_rmw(
        &mut self,
        addr: u64,
        size: AccessSize,
        op: AtomicOp,
        operand: u64,
    ) -> Result<u64, BusError> {
        let old = self.get(addr, size)?;
        self.put(addr, size, op.apply(size, old, operand))?;
        Ok(old)
    }

    fn sysreg_read(&mut self, reg: SysRegId) -> Option<u64> {
        self.sysregs.get(&reg).copied()
    }

    fn sysreg_write(&mut self, reg: SysRegId, value: u64) -> bool {
        match self.sysregs.get_mut(&reg) {
            Some(v) => {
                *v = value;
                true
            }
            None => false,
        }
    }

    #[inline]
    fn kicked(&self) -> bool {
        self.kick
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accesses_outside_regions_are_external_aborts() {
        let mut bus = RamBus::with_region(0x1000, 0x1000);
        assert_eq!(
            bus.read(0x0FFF, AccessSize::Byte),
            Err(BusError::ExternalAbort)
        );
        assert_eq!(
            bus.read(0x2000, AccessSize::Byte),
            Err(BusError::ExternalAbort)
        );
        // A doubleword straddling the end does not fit.
        assert_eq!(
            bus.read(0x1FFC, AccessSize::Double),
            Err(BusError::ExternalAbort)
        );
        bus.write(0x1FF8, AccessSize::Double, 0x1122_3344_5566_7788)
            .unwrap();
        assert_eq!(bus.read(0x1FF8, AccessSize::Word), Ok(0x5566_7788));
    }

    #[test]
    fn unmapped_pages_fault_at_stage_2() {
        let mut bus = RamBus::with_region(0, 0x4000);
        bus.set_unmapped(0x2345, true);
        assert_eq!(
            bus.read(0x2000, AccessSize::Word),
            Err(BusError::Stage2Fault)
        );
        assert_eq!(bus.read(0x3000, AccessSize::Word), Ok(0));
        bus.set_unmapped(0x2000, false);
        assert_eq!(bus.read(0x2000, AccessSize::Word), Ok(0));
    }

    #[test]
    fn pair_compare_exchange_is_little_endian() {
        let mut bus = RamBus::with_region(0, 0x100);
        let new = (2u128 << 64) | 1;
        assert_eq!(bus.compare_exchange_pair(0x10, 0, new), Ok(0));
        assert_eq!(bus.read(0x10, AccessSize::Double), Ok(1));
        assert_eq!(bus.read(0x18, AccessSize::Double), Ok(2));
        assert_eq!(bus.compare_exchange_pair(0x10, 0, 5), Ok(new));
        assert_eq!(bus.read(0x10, AccessSize::Double), Ok(1));
    }
}
