//! The direct-page table: guest pages compiled code reads and writes with host
//! loads and stores.
//!
//! An entry is filled after the interpreter has done an access (so the access
//! was allowed at this EL, and apf-mem's TLB has the page), from
//! [`Bus::host_page`](crate::Bus::host_page), by the run loop
//! (`Cpu::fill_direct`), keyed by the virtual page. It holds only what that
//! access allowed:
//! - a read entry lets reads of the page through, a write entry writes too
//!   (the access was a write: the stage-1 and apf-mem's dirty tracking saw it);
//! - never a write entry for a page holding decoded code, so a store never
//!   skips the decode cache's check;
//! - never Device memory.
//!
//! Every entry is forgotten when a run starts (a host page is valid only until
//! the run ends), when the decode cache takes in a new code page, and on
//! everything that changes what a virtual address may reach: SCTLR, TCR, MAIR
//! and TTBR writes, every TLBI, and (MMU on) a change of exception level.

use crate::bus::HostPage;

/// Entries in the table (direct-mapped on the low bits of the page number).
pub(crate) const DIRECT_PAGES: usize = 256;

/// One page: its tags hold the page address, or [`DirectPage::NONE`].
/// Compiled code compares a tag with the access's address masked to the page
/// and its alignment bits, so a misaligned access always misses.
#[derive(Debug, Clone, Copy)]
#[repr(C)]
pub(super) struct DirectPage {
    read_tag: u64,
    write_tag: u64,
    /// The host address of the page minus its guest address.
    addend: u64,
    _pad: u64,
}

// emit.rs indexes the table with a shift of 5 and reads these offsets.
const _: () = assert!(size_of::<DirectPage>() == 32);
const _: () = assert!(std::mem::offset_of!(DirectPage, read_tag) == 0);
const _: () = assert!(std::mem::offset_of!(DirectPage, write_tag) == 8);
const _: () = assert!(std::mem::offset_of!(DirectPage, addend) == 16);

impl DirectPage {
    /// A tag no access matches: page addresses are 4 KiB aligned.
    const NONE: u64 = u64::MAX;
    const EMPTY: DirectPage = DirectPage {
        read_tag: DirectPage::NONE,
        write_tag: DirectPage::NONE,
        addend: 0,
        _pad: 0,
    };
}

/// The table, boxed so that compiled code finds it through one pointer.
#[derive(Debug)]
pub(crate) struct DirectPages {
    table: Box<[DirectPage; DIRECT_PAGES]>,
    /// Whether any entry was filled since the last flush (so that a vCPU that
    /// never runs compiled code never clears the table).
    filled: bool,
}

impl DirectPages {
    /// The offset of the table's pointer in this struct.
    pub(super) const TABLE: usize = std::mem::offset_of!(DirectPages, table);

    pub(crate) fn new() -> DirectPages {
        DirectPages {
            table: Box::new([DirectPage::EMPTY; DIRECT_PAGES]),
            filled: false,
        }
    }

    /// Forgets every page.
    pub(crate) fn flush(&mut self) {
        if self.filled {
            self.table.fill(DirectPage::EMPTY);
            self.filled = false;
        }
    }

    /// Lets compiled code read (`write`: and write) the guest page at `page`
    /// (4 KiB aligned) through `host`, until the next flush.
    pub(crate) fn insert(&mut self, page: u64, host: HostPage, write: bool) {
        self.filled = true;
        let addend = host.addr().wrapping_sub(page);
        #[allow(clippy::cast_possible_truncation)]
        let e = &mut self.table[(page >> 12) as usize & (DIRECT_PAGES - 1)];
        if e.addend != addend || e.read_tag != page {
            *e = DirectPage::EMPTY;
            e.addend = addend;
        }
        e.read_tag = page;
        if write {
            e.write_tag = page;
        }
    }
}
