//! Per-vCPU software TLBs and the shootdown that lets pages leave.
//!
//! A TLB maps guest pages to host addresses: a hit is a tag compare and an atomic
//! load or store. Fills happen in [`VcpuTlb::resolve`] (the stage-2 fault path):
//! a read maps the page read-only unless it is already dirty, so the first write to
//! a clean page faults and marks it dirty, as hardware dirty tracking does.
//! While the dirty log is on (`dirty_log.rs`), a page is mapped writable only
//! once its log bit is set too, so the first write after each take faults and
//! logs it; the hit path is unchanged.
//!
//! A vCPU takes part in the shootdown (`shootdown.rs`) by acknowledging a new
//! epoch in [`VcpuTlb::sync`] (flushing its TLB first), or by being parked
//! between [`VcpuTlb::park`] and [`VcpuTlb::unpark`] (which flushes if the epoch
//! moved).

// Loads are narrowed to the access size and page indices to usize: truncation is
// the semantics here.
#![allow(clippy::cast_possible_truncation)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU16, AtomicU32, AtomicU64 as StdAtomicU64};

pub use apf_abi::esr::AccessSize;
use apf_abi::{Gfn, Gpa, PAGE_SHIFT, PAGE_SIZE};

use crate::memory::GuestMemory;
use crate::pager::{Fault, FetchError};
use crate::shootdown::{Shootdown, VcpuSlot};
use crate::sync::Ordering;

const _: () = assert!(
    cfg!(target_endian = "little"),
    "guest memory accesses assume a little-endian host"
);

/// Entries in a TLB (direct-mapped on the low bits of the page number).
pub const TLB_ENTRIES: usize = 8192;

/// A tag no page-aligned address equals.
const INVALID: u64 = u64::MAX;
const OFFSET_MASK: u64 = PAGE_SIZE - 1;

/// The access missed the TLB: call [`VcpuTlb::resolve`], then retry.
///
/// The hit path (`read`, `write`, `fetch_insn`, `compare_exchange*`,
/// `atomic_rmw`) takes the interpreter's raw `u64` address, as apf-cpu's `Bus`
/// does (guest physical: the interpreter translates virtual addresses itself),
/// so the hot path converts nothing. The miss path ([`VcpuTlb::resolve`]) is
/// where the raw address becomes a [`Gpa`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TlbMiss;

/// What [`VcpuTlb::resolve`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Resolve {
    /// The page is mapped now; retry the access.
    Mapped,
    /// The page must be fetched first (this gfn): the APF decision point.
    NeedsFetch(Gfn),
    /// The address is not guest RAM.
    NotRam,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    /// Page address when readable, else INVALID.
    read_tag: u64,
    /// Page address when writable, else INVALID.
    write_tag: u64,
    host: *mut u8,
}

const EMPTY: Entry = Entry {
    read_tag: INVALID,
    write_tag: INVALID,
    host: std::ptr::null_mut(),
};

/// A vCPU's software TLB over guest memory. Not shared: one per vCPU thread.
#[derive(Debug)]
pub struct VcpuTlb {
    entries: Box<[Entry; TLB_ENTRIES]>,
    mem: Arc<GuestMemory>,
    slot: Arc<VcpuSlot>,
    seen: u64,
    parked: bool,
}

// SAFETY: the raw host pointers in `entries` point into the guest RAM mapping,
// which `mem` keeps alive; the TLB is used by one thread at a time (it is not
// Sync), so moving it to the vCPU thread that will own it is sound.
unsafe impl Send for VcpuTlb {}

#[inline]
fn slot_of(gpa: u64) -> usize {
    (gpa >> PAGE_SHIFT) as usize & (TLB_ENTRIES - 1)
}

/// The tag an access of `bytes` at `gpa` must match: the page address, with the
/// alignment bits kept so a misaligned access can never hit.
#[inline]
fn tag_of(gpa: u64, bytes: u64) -> u64 {
    gpa & (!OFFSET_MASK | (bytes - 1))
}

// Defined here, not in memory.rs: the TLB sits above guest memory, which
// need not know it.
impl GuestMemory {
    /// A software TLB for one vCPU thread. It starts unparked.
    pub fn vcpu_tlb(self: &Arc<Self>) -> VcpuTlb {
        VcpuTlb::new(Arc::clone(self))
    }
}

impl VcpuTlb {
    fn new(mem: Arc<GuestMemory>) -> VcpuTlb {
        let (slot, seen) = mem.shootdown().register();
        mem.pager().vcpu_running();
        VcpuTlb {
            entries: Box::new([EMPTY; TLB_ENTRIES]),
            mem,
            slot,
            seen,
            parked: false,
        }
    }

    /// The memory this TLB maps.
    pub fn memory(&self) -> &Arc<GuestMemory> {
        &self.mem
    }

    #[inline]
    fn hit_read(&self, gpa: u64, bytes: u64) -> Option<*mut u8> {
        let e = &self.entries[slot_of(gpa)];
        (e.read_tag == tag_of(gpa, bytes))
            .then(|| e.host.wrapping_add((gpa & OFFSET_MASK) as usize))
    }

    #[inline]
    fn hit_write(&self, gpa: u64, bytes: u64) -> Option<*mut u8> {
        let e = &self.entries[slot_of(gpa)];
        (e.write_tag == tag_of(gpa, bytes))
            .then(|| e.host.wrapping_add((gpa & OFFSET_MASK) as usize))
    }

    /// The host address of page `gpa` (4 KiB aligned) if this TLB maps it now
    /// for reads (`write`: for writes), so that a caller may make the accesses
    /// a hit makes ([`VcpuTlb::read`], [`VcpuTlb::write`]) itself. The address
    /// is valid as a hit is: until this vCPU next calls [`VcpuTlb::sync`] or
    /// [`VcpuTlb::park`].
    pub fn host_page(&self, gpa: u64, write: bool) -> Option<std::ptr::NonNull<u8>> {
        let p = if write {
            self.hit_write(gpa, 1)
        } else {
            self.hit_read(gpa, 1)
        };
        std::ptr::NonNull::new(p?)
    }

    /// Reads a naturally aligned value (a misaligned access always misses).
    #[inline]
    pub fn read(&mut self, gpa: u64, size: AccessSize) -> Result<u64, TlbMiss> {
        let p = self.hit_read(gpa, size.bytes()).ok_or(TlbMiss)?;
        // SAFETY: a hit means `p` lies in a page this vCPU may read (resident until
        // this vCPU acknowledges a shootdown, mapped while `mem` lives) and is
        // aligned to the access size (the tag compare includes the alignment bits).
        Ok(unsafe { load(p, size) })
    }

    /// Writes the low `size` bytes of `value` at a naturally aligned address.
    #[inline]
    pub fn write(&mut self, gpa: u64, size: AccessSize, value: u64) -> Result<(), TlbMiss> {
        let p = self.hit_write(gpa, size.bytes()).ok_or(TlbMiss)?;
        // SAFETY: as in `read`, and a write hit means the page is dirty-tracked
        // (mapped writable only once marked dirty).
        unsafe { store(p, size, value) };
        Ok(())
    }

    /// Fetches the instruction word at a 4-aligned address.
    #[inline]
    pub fn fetch_insn(&mut self, gpa: u64) -> Result<u32, TlbMiss> {
        self.read(gpa, AccessSize::Word).map(|v| v as u32)
    }

    /// Atomically replaces the value at `gpa` with `new` if it equals `old` (both
    /// zero-extended from `size`); returns the previous value either way. Needs a
    /// writable mapping (resolve with `write = true` on a miss).
    pub fn compare_exchange(
        &mut self,
        gpa: u64,
        size: AccessSize,
        old: u64,
        new: u64,
    ) -> Result<u64, TlbMiss> {
        let p = self.hit_write(gpa, size.bytes()).ok_or(TlbMiss)?;
        macro_rules! cas {
            ($t:ty, $a:ty) => {{
                // SAFETY: as in `write`; the pointer is aligned for $a.
                let a = unsafe { <$a>::from_ptr(p.cast::<$t>()) };
                match a.compare_exchange(old as $t, new as $t, Ordering::SeqCst, Ordering::SeqCst) {
                    Ok(v) | Err(v) => u64::from(v),
                }
            }};
        }
        Ok(match size {
            AccessSize::Byte => cas!(u8, AtomicU8),
            AccessSize::Half => cas!(u16, AtomicU16),
            AccessSize::Word => cas!(u32, AtomicU32),
            AccessSize::Double => cas!(u64, StdAtomicU64),
        })
    }

    /// The 16-byte compare-and-swap (CASP, STXP pairs) at a 16-aligned address;
    /// the low half is at `gpa`. Returns the previous value.
    pub fn compare_exchange_pair(
        &mut self,
        gpa: u64,
        old: u128,
        new: u128,
    ) -> Result<u128, TlbMiss> {
        let p = self.hit_write(gpa, 16).ok_or(TlbMiss)?;
        // SAFETY: as in `write`; the tag compare checked 16-byte alignment.
        let a = unsafe { portable_atomic::AtomicU128::from_ptr(p.cast::<u128>()) };
        Ok(
            match a.compare_exchange(old, new, Ordering::SeqCst, Ordering::SeqCst) {
                Ok(v) | Err(v) => v,
            },
        )
    }

    /// Atomically replaces the value `v` at `gpa` with `op(v)` (truncated to
    /// `size`); returns the previous value.
    pub fn atomic_rmw(
        &mut self,
        gpa: u64,
        size: AccessSize,
        op: impl Fn(u64) -> u64,
    ) -> Result<u64, TlbMiss> {
        let p = self.hit_write(gpa, size.bytes()).ok_or(TlbMiss)?;
        macro_rules! rmw {
            ($t:ty, $a:ty) => {{
                // SAFETY: as in `write`; the pointer is aligned for $a.
                let a = unsafe { <$a>::from_ptr(p.cast::<$t>()) };
                match a.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |v| {
                    Some(op(u64::from(v)) as $t)
                }) {
                    Ok(v) | Err(v) => u64::from(v),
                }
            }};
        }
        Ok(match size {
            AccessSize::Byte => rmw!(u8, AtomicU8),
            AccessSize::Half => rmw!(u16, AtomicU16),
            AccessSize::Word => rmw!(u32, AtomicU32),
            AccessSize::Double => rmw!(u64, StdAtomicU64),
        })
    }

    /// The stage-2 fault path after a miss: maps the page if it is resident (a
    /// write to a clean page marks it dirty and maps it writable), rescues it if
    /// it is being evicted, zero-fills it if never touched (no I/O); else says
    /// which page needs a fetch, or that the address is not RAM.
    pub fn resolve(&mut self, gpa: Gpa, write: bool) -> Resolve {
        debug_assert!(!self.parked, "resolve on a parked vCPU");
        let gfn = gpa.gfn();
        match self.mem.pager().fault(gfn, write) {
            Fault::Map { host, writable } => {
                self.map(gpa.0, host, writable);
                Resolve::Mapped
            }
            Fault::NeedsFetch => Resolve::NeedsFetch(gfn),
            Fault::NotRam => Resolve::NotRam,
        }
    }

    /// Fills the entry for `gpa`'s page (at `host`), writable or not.
    fn map(&mut self, gpa: u64, host: *mut u8, writable: bool) {
        let page = gpa & !OFFSET_MASK;
        self.entries[slot_of(gpa)] = Entry {
            read_tag: page,
            write_tag: if writable { page } else { INVALID },
            host,
        };
    }

    /// Brings page `gfn` in on this thread (APF off, or a fallback): joins a fetch
    /// in flight or starts one, and returns once the page is installed (and mapped
    /// in this TLB, so the retried access hits) or the read failed. The vCPU counts
    /// as parked meanwhile, so it never delays a shootdown.
    pub fn fetch_blocking(&mut self, gfn: Gfn) -> Result<(), FetchError> {
        let Some(index) = self.mem.pager().index_of(gfn) else {
            return Err(FetchError::NotRam { gfn });
        };
        let was_parked = self.parked;
        if !was_parked {
            self.park();
        }
        let r = self.mem.pager().fetch_pinned(index);
        if !was_parked {
            self.unpark();
        }
        if r.is_ok() {
            // Pinned, so it is still resident: map it before letting go (a parked
            // caller maps it on its next resolve).
            // (Not through `resolve`: that would count a second fault.)
            if !self.parked {
                let (host, writable) = self.mem.pager().pinned_mapping(index);
                self.map(gfn.gpa().0, host, writable);
            }
            self.mem.pager().unpin(index);
        }
        r
    }

    /// Host-side read from a vCPU thread ([`GuestMemory::read_bytes`] that may
    /// wait for a fetch without delaying shootdowns).
    pub fn read_bytes(&mut self, gpa: Gpa, buf: &mut [u8]) -> Result<(), crate::HostAccessError> {
        let was_parked = self.parked;
        if !was_parked {
            self.park();
        }
        let r = self.mem.read_bytes(gpa, buf);
        if !was_parked {
            self.unpark();
        }
        r
    }

    /// Host-side write from a vCPU thread (see [`VcpuTlb::read_bytes`]).
    pub fn write_bytes(&mut self, gpa: Gpa, buf: &[u8]) -> Result<(), crate::HostAccessError> {
        let was_parked = self.parked;
        if !was_parked {
            self.park();
        }
        let r = self.mem.write_bytes(gpa, buf);
        if !was_parked {
            self.unpark();
        }
        r
    }

    /// Between slices: acknowledges a pending shootdown (flushing the TLB) and
    /// collects finished I/O if nobody else is. Returns whether the TLB was flushed
    /// (pages may have left: anything cached from them must go too).
    pub fn sync(&mut self) -> bool {
        debug_assert!(!self.parked, "sync on a parked vCPU");
        let e = self.mem.shootdown().epoch();
        let flushed = e != self.seen;
        if flushed {
            self.flush();
            self.seen = e;
            self.mem.shootdown().ack(&self.slot, e);
        }
        self.mem.pager().poll_completions();
        flushed
    }

    /// The vCPU stops touching guest memory (halted, or blocked in the host):
    /// shootdowns no longer wait for it.
    pub fn park(&mut self) {
        if self.parked {
            return;
        }
        self.parked = true;
        self.mem.shootdown().park(&self.slot);
        self.mem.pager().vcpu_parked();
    }

    /// The vCPU resumes; its TLB is flushed if a shootdown happened meanwhile.
    /// Returns whether it was.
    pub fn unpark(&mut self) -> bool {
        if !self.parked {
            return false;
        }
        self.parked = false;
        self.mem.pager().vcpu_running();
        let e = self.mem.shootdown().unpark(&self.slot);
        if e == self.seen {
            return false;
        }
        self.flush();
        self.seen = e;
        Shootdown::acked_quietly(&self.slot, e);
        true
    }

    /// Drops every mapping.
    pub fn flush(&mut self) {
        self.entries.fill(EMPTY);
    }
}

impl Drop for VcpuTlb {
    fn drop(&mut self) {
        self.park();
        self.mem.shootdown().unregister(&self.slot);
    }
}

/// # Safety
/// `p` must be valid for reads of `size` bytes and aligned to `size`.
#[inline]
unsafe fn load(p: *mut u8, size: AccessSize) -> u64 {
    match size {
        AccessSize::Byte => {
            // SAFETY: per the caller, `p` is valid and aligned for this type.
            let a = unsafe { AtomicU8::from_ptr(p) };
            u64::from(a.load(Ordering::Relaxed))
        }
        AccessSize::Half => {
            // SAFETY: per the caller, `p` is valid and aligned for this type.
            let a = unsafe { AtomicU16::from_ptr(p.cast()) };
            u64::from(a.load(Ordering::Relaxed))
        }
        AccessSize::Word => {
            // SAFETY: per the caller, `p` is valid and aligned for this type.
            let a = unsafe { AtomicU32::from_ptr(p.cast()) };
            u64::from(a.load(Ordering::Relaxed))
        }
        AccessSize::Double => {
            // SAFETY: per the caller, `p` is valid and aligned for this type.
            let a = unsafe { StdAtomicU64::from_ptr(p.cast()) };
            a.load(Ordering::Relaxed)
        }
    }
}

/// # Safety
/// `p` must be valid for writes of `size` bytes and aligned to `size`.
#[inline]
unsafe fn store(p: *mut u8, size: AccessSize, v: u64) {
    match size {
        AccessSize::Byte => {
            // SAFETY: per the caller, `p` is valid and aligned for this type.
            let a = unsafe { AtomicU8::from_ptr(p) };
            a.store(v as u8, Ordering::Relaxed);
        }
        AccessSize::Half => {
            // SAFETY: per the caller, `p` is valid and aligned for this type.
            let a = unsafe { AtomicU16::from_ptr(p.cast()) };
            a.store(v as u16, Ordering::Relaxed);
        }
        AccessSize::Word => {
            // SAFETY: per the caller, `p` is valid and aligned for this type.
            let a = unsafe { AtomicU32::from_ptr(p.cast()) };
            a.store(v as u32, Ordering::Relaxed);
        }
        AccessSize::Double => {
            // SAFETY: per the caller, `p` is valid and aligned for this type.
            let a = unsafe { StdAtomicU64::from_ptr(p.cast()) };
            a.store(v, Ordering::Relaxed);
        }
    }
}

#[cfg(all(test, not(feature = "shuttle")))]
mod tests {
    use super::*;
    use crate::MemConfig;
    use crate::store::MemStore;

    const BASE: u64 = 0x4000_0000;

    #[test]
    fn a_misaligned_access_never_matches_a_tag() {
        let page = BASE + 3 * PAGE_SIZE;
        assert_eq!(tag_of(page + 8, 8), page);
        assert_eq!(tag_of(page + 0xfff, 1), page);
        assert_eq!(tag_of(page + 4, 4), page);
        assert_ne!(tag_of(page + 4, 8), page, "4 bytes into a double");
        assert_ne!(tag_of(page + 8, 16), page, "a pair needs 16-byte alignment");
        assert_ne!(tag_of(page + 1, 2), page);
        // Direct-mapped: pages TLB_ENTRIES apart share an entry, tags tell them apart.
        let far = page + TLB_ENTRIES as u64 * PAGE_SIZE;
        assert_eq!(slot_of(far), slot_of(page));
        assert_ne!(tag_of(far, 8), tag_of(page, 8));
    }

    fn memory() -> Arc<GuestMemory> {
        let cfg = MemConfig::new(BASE, 16 * PAGE_SIZE, 16 * PAGE_SIZE);
        GuestMemory::new(cfg, Box::new(MemStore::new(16, 2))).unwrap()
    }

    #[test]
    fn a_clean_page_is_mapped_read_only_until_written() {
        let mem = memory();
        let mut tlb = mem.vcpu_tlb();
        let gpa = BASE + PAGE_SIZE + 8;
        assert_eq!(tlb.read(gpa, AccessSize::Double), Err(TlbMiss));
        assert_eq!(tlb.resolve(Gpa(gpa), false), Resolve::Mapped);
        assert_eq!(tlb.read(gpa, AccessSize::Double), Ok(0));
        assert_eq!(
            tlb.write(gpa, AccessSize::Double, 5),
            Err(TlbMiss),
            "clean: read-only"
        );
        assert_eq!(tlb.resolve(Gpa(gpa), true), Resolve::Mapped);
        assert_eq!(tlb.write(gpa, AccessSize::Double, 5), Ok(()));
        assert_eq!(tlb.read(gpa, AccessSize::Word), Ok(5));
        assert_eq!(
            tlb.read(gpa + 4, AccessSize::Double),
            Err(TlbMiss),
            "misaligned"
        );
        assert_eq!(
            tlb.resolve(Gpa(BASE + 16 * PAGE_SIZE), false),
            Resolve::NotRam
        );
        let f = mem.metrics().faults;
        assert_eq!((f.zero_fill, f.write_protect, f.not_ram), (1, 1, 1));
    }

    #[test]
    fn a_shootdown_flushes_on_sync_or_on_unpark() {
        let mem = memory();
        let mut tlb = mem.vcpu_tlb();
        assert_eq!(tlb.resolve(Gpa(BASE), false), Resolve::Mapped);
        assert!(!tlb.sync(), "no shootdown: nothing flushed");
        assert!(tlb.read(BASE, AccessSize::Byte).is_ok());
        // Parked, it does not hold the shootdown up, and flushes on unparking.
        tlb.park();
        mem.shootdown().shoot_down();
        assert!(tlb.unpark());
        assert_eq!(tlb.read(BASE, AccessSize::Byte), Err(TlbMiss));
        assert!(!tlb.unpark(), "not parked: nothing to do");
        // Running, it acknowledges the next epoch in sync.
        assert_eq!(tlb.resolve(Gpa(BASE), false), Resolve::Mapped);
        let epoch = mem.shootdown().epoch();
        let sd = std::thread::spawn({
            let mem = Arc::clone(&mem);
            move || mem.shootdown().shoot_down()
        });
        while mem.shootdown().epoch() == epoch {
            std::thread::yield_now();
        }
        assert!(tlb.sync(), "a shootdown happened: flushed");
        sd.join().unwrap();
        assert_eq!(tlb.read(BASE, AccessSize::Byte), Err(TlbMiss));
    }
}

/// The dirty log seen through a TLB, on one thread: the TLB is parked around
/// each start and take (a running vCPU would have to acknowledge the shootdown
/// from its own thread), as the vCPU loop is whenever it is not in a slice.
#[cfg(all(test, not(feature = "shuttle")))]
mod dirty_log_tests {
    use super::*;
    use crate::store::MemStore;
    use crate::{DirtyPages, MemConfig};

    const BASE: u64 = 0x4000_0000;

    fn memory(pages: u64, budget_pages: u64) -> Arc<GuestMemory> {
        let mut cfg = MemConfig::new(BASE, pages * PAGE_SIZE, budget_pages * PAGE_SIZE);
        cfg.batch_pages = 1;
        GuestMemory::new(cfg, Box::new(MemStore::new(64, 2))).unwrap()
    }

    fn gpa(page: u64) -> u64 {
        BASE + page * PAGE_SIZE
    }

    /// Accesses like the vCPU loop: on a miss, resolve (fetching on this
    /// thread if needed) and retry.
    fn fault_in(tlb: &mut VcpuTlb, at: u64, write: bool) {
        match tlb.resolve(Gpa(at), write) {
            Resolve::Mapped => {}
            Resolve::NeedsFetch(gfn) => tlb.fetch_blocking(gfn).unwrap(),
            Resolve::NotRam => panic!("{at:#x} is RAM"),
        }
    }

    fn write(tlb: &mut VcpuTlb, page: u64, v: u64) {
        while tlb.write(gpa(page), AccessSize::Double, v).is_err() {
            fault_in(tlb, gpa(page), true);
        }
    }

    fn read(tlb: &mut VcpuTlb, page: u64) -> u64 {
        loop {
            if let Ok(v) = tlb.read(gpa(page), AccessSize::Double) {
                return v;
            }
            fault_in(tlb, gpa(page), false);
        }
    }

    fn start(tlb: &mut VcpuTlb) {
        tlb.park();
        tlb.memory().start_dirty_log();
        assert!(tlb.unpark(), "starting shoots down");
    }

    /// The pages taken, by page number from the base.
    fn take(tlb: &mut VcpuTlb) -> Vec<u64> {
        tlb.park();
        let taken: DirtyPages = tlb.memory().take_dirty_log();
        assert!(tlb.unpark(), "taking shoots down");
        let base = Gpa(BASE).gfn().0;
        taken.iter().map(|g| g.0 - base).collect()
    }

    #[test]
    fn a_write_through_the_tlb_after_the_start_is_in_the_next_take() {
        let mem = memory(8, 8);
        let mut tlb = mem.vcpu_tlb();
        write(&mut tlb, 1, 10); // dirty, mapped writable, before the log
        start(&mut tlb);
        // Still dirty, but not logged: a read maps it read-only.
        assert_eq!(read(&mut tlb, 1), 10);
        assert_eq!(tlb.write(gpa(1), AccessSize::Double, 11), Err(TlbMiss));
        write(&mut tlb, 1, 11);
        write(&mut tlb, 2, 20); // zero-filled by a write
        assert_eq!(read(&mut tlb, 3), 0, "a read-only touch");
        assert_eq!(take(&mut tlb), [1, 2]);
        let f = mem.metrics().faults;
        // Pages 1-3 zero-filled; page 1 mapped read-only once, then logged.
        assert_eq!(
            (f.log_dirty, f.zero_fill, f.resident, f.write_protect),
            (1, 3, 1, 0),
            "page 1's write after the start faulted once more: {f:?}"
        );
    }

    #[test]
    fn a_page_written_before_a_take_and_not_after_is_not_in_the_next() {
        let mem = memory(8, 8);
        let mut tlb = mem.vcpu_tlb();
        start(&mut tlb);
        write(&mut tlb, 4, 1);
        write(&mut tlb, 5, 1);
        assert_eq!(take(&mut tlb), [4, 5]);
        // A blocking fetch of a resident page maps it as a fault does:
        // dirty, but read-only until logged again.
        tlb.fetch_blocking(Gpa(gpa(4)).gfn()).unwrap();
        assert_eq!(tlb.read(gpa(4), AccessSize::Double), Ok(1));
        assert_eq!(tlb.write(gpa(4), AccessSize::Double, 9), Err(TlbMiss));
        // The take dropped the writable mappings: the next write faults in again.
        assert_eq!(tlb.write(gpa(5), AccessSize::Double, 2), Err(TlbMiss));
        write(&mut tlb, 5, 2);
        assert_eq!(read(&mut tlb, 4), 1);
        assert_eq!(take(&mut tlb), [5]);
        assert_eq!(take(&mut tlb), [0u64; 0], "nothing written since");
    }

    #[test]
    fn a_host_write_is_logged_and_a_host_read_is_not() {
        let mem = memory(8, 8);
        let mut tlb = mem.vcpu_tlb();
        start(&mut tlb);
        mem.write_bytes(Gpa(gpa(6) + 100), b"host").unwrap();
        // Across a page boundary: both pages.
        mem.write_bytes(Gpa(gpa(2) - 2), b"span").unwrap();
        let mut buf = [0u8; 8];
        mem.read_bytes(Gpa(gpa(7)), &mut buf).unwrap();
        tlb.read_bytes(Gpa(gpa(3)), &mut buf).unwrap();
        assert_eq!(take(&mut tlb), [1, 2, 6]);
        tlb.write_bytes(Gpa(gpa(0)), b"vcpu").unwrap();
        assert_eq!(take(&mut tlb), [0]);
    }

    #[test]
    fn eviction_and_fetching_do_not_log_a_page() {
        // Two frames for four pages: touching them all evicts (the dirty ones
        // are written to the store) and reading them again fetches.
        let mem = memory(4, 2);
        let mut tlb = mem.vcpu_tlb();
        for page in 0..4 {
            write(&mut tlb, page, 100 + page);
        }
        start(&mut tlb);
        let read_before = mem.metrics().io.pages_read;
        for _ in 0..2 {
            for page in 0..4 {
                assert_eq!(read(&mut tlb, page), 100 + page);
                tlb.sync();
            }
        }
        let m = mem.metrics();
        assert!(
            m.io.pages_read > read_before && m.evict.written > 0,
            "pages were evicted and fetched back: {m:?}"
        );
        assert_eq!(take(&mut tlb), [0u64; 0]);
        // A write to a fetched (clean) page is logged as any other.
        write(&mut tlb, 2, 7);
        assert_eq!(take(&mut tlb), [2]);
    }

    #[test]
    fn a_write_fault_while_a_take_waits_for_this_vcpu_is_in_the_next_take() {
        let mem = memory(8, 8);
        let mut tlb = mem.vcpu_tlb();
        start(&mut tlb);
        let epoch = mem.shootdown().epoch();
        let taker = std::thread::spawn({
            let mem = Arc::clone(&mem);
            move || mem.take_dirty_log()
        });
        // The take has cleared the log and waits for this vCPU's sync; the
        // slice goes on meanwhile, and faults page 3 in writable.
        while mem.shootdown().epoch() == epoch {
            std::thread::yield_now();
        }
        write(&mut tlb, 3, 1);
        assert!(tlb.sync(), "the take's shootdown flushes");
        let base = Gpa(BASE).gfn().0;
        let taken: Vec<u64> = taker.join().unwrap().iter().map(|g| g.0 - base).collect();
        assert_eq!(taken, [0u64; 0], "page 3 was logged after the clear");
        // So the flush dropped its writable entry, and this write, after the
        // take returned, is logged for the next one.
        assert_eq!(tlb.write(gpa(3), AccessSize::Double, 2), Err(TlbMiss));
        write(&mut tlb, 3, 2);
        assert_eq!(take(&mut tlb), [3]);
    }

    #[test]
    fn a_stopped_log_maps_dirty_pages_writable_and_logs_nothing() {
        let mem = memory(8, 8);
        let mut tlb = mem.vcpu_tlb();
        start(&mut tlb);
        write(&mut tlb, 1, 1);
        mem.stop_dirty_log();
        assert!(!mem.dirty_log_on());
        write(&mut tlb, 2, 1);
        assert_eq!(take(&mut tlb), [1], "what was logged before the stop");
        // No log: a dirty page read maps writable, as before any log.
        assert_eq!(read(&mut tlb, 1), 1);
        assert_eq!(tlb.write(gpa(1), AccessSize::Double, 3), Ok(()));
        assert_eq!(take(&mut tlb), [0u64; 0]);
        start(&mut tlb);
        assert_eq!(take(&mut tlb), [0u64; 0], "starting empties the log");
    }
}
