//! The host mapping that holds guest RAM.
//!
//! One anonymous `MAP_NORESERVE` mapping of the whole configured size: only pages
//! that were touched cost host memory, and [`GuestRam::discard`] really gives pages
//! back (`MADV_DONTNEED`; the next touch sees zeros). Transparent huge pages are
//! turned off for it so that discarding 4 KiB really frees 4 KiB.
//!
//! Guest memory is shared by every vCPU thread, the I/O (which reads and writes it
//! directly) and host-side accessors, so nothing here hands out `&[u8]`: accesses
//! go through raw pointers with atomic operations.

use std::io;
use std::ptr::NonNull;

use apf_abi::PAGE_SIZE;

/// Bytes in a page, as a `usize`.
pub(crate) const PAGE: usize = 4096;
const _: () = assert!(PAGE as u64 == PAGE_SIZE);

/// The guest RAM mapping.
#[derive(Debug)]
pub(crate) struct GuestRam {
    base: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain memory owned by this value; every access through it
// is by raw pointer with atomic operations or by the kernel (I/O, madvise), so
// sharing the pointer between threads is sound.
unsafe impl Send for GuestRam {}
// SAFETY: as for Send: no method hands out references to the memory.
unsafe impl Sync for GuestRam {}

impl GuestRam {
    /// Maps `len` bytes (a multiple of the page size) of zeroed memory.
    pub(crate) fn new(len: usize) -> io::Result<GuestRam> {
        debug_assert!(len > 0 && len.is_multiple_of(PAGE));
        // SAFETY: a fresh anonymous mapping; no existing memory is affected.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let base =
            NonNull::new(p.cast::<u8>()).ok_or_else(|| io::Error::other("mmap returned null"))?;
        let ram = GuestRam { base, len };
        // Huge pages would make one touched 4 KiB page cost 2 MiB and a discard
        // free nothing; failure only costs memory, so it is not an error.
        // SAFETY: the range is our own mapping.
        let _ = unsafe { libc::madvise(p, len, libc::MADV_NOHUGEPAGE) };
        Ok(ram)
    }

    /// The host address of page `index` (below `pages()`).
    #[inline]
    pub(crate) fn page_ptr(&self, index: usize) -> *mut u8 {
        debug_assert!(index < self.len / PAGE);
        self.base.as_ptr().wrapping_add(index * PAGE)
    }

    /// Pages in the mapping.
    pub(crate) fn pages(&self) -> usize {
        self.len / PAGE
    }

    /// Gives `count` pages from `first` back to the host; they read as zero after.
    /// The caller guarantees nothing maps or accesses them meanwhile.
    pub(crate) fn discard(&self, first: usize, count: usize) -> io::Result<()> {
        debug_assert!(first + count <= self.pages());
        // SAFETY: the range lies within our mapping; discarding anonymous private
        // memory only replaces its contents with zeros.
        let r = unsafe {
            libc::madvise(
                self.page_ptr(first).cast::<libc::c_void>(),
                count * PAGE,
                libc::MADV_DONTNEED,
            )
        };
        if r == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    /// Pages of the mapping the kernel holds in host memory now (`mincore`).
    pub(crate) fn host_resident_pages(&self) -> io::Result<u64> {
        let mut vec = vec![0u8; self.pages()];
        // SAFETY: the range is our mapping and `vec` has one byte per page.
        let r = unsafe {
            libc::mincore(
                self.base.as_ptr().cast::<libc::c_void>(),
                self.len,
                vec.as_mut_ptr(),
            )
        };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(vec.iter().map(|b| u64::from(b & 1)).sum())
    }
}

impl Drop for GuestRam {
    fn drop(&mut self) {
        // SAFETY: unmapping our own mapping; nothing refers to it once we are dropped
        // (owners keep GuestRam alive as long as any TLB or I/O may use it).
        unsafe {
            libc::munmap(self.base.as_ptr().cast::<libc::c_void>(), self.len);
        }
    }
}

/// Copies `dst.len()` bytes out of shared memory at `src` with byte-wise atomic
/// loads (other threads may be writing it).
///
/// # Safety
/// `src..src+dst.len()` must be valid, mapped memory for the duration.
pub(crate) unsafe fn copy_from_shared(src: *const u8, dst: &mut [u8]) {
    for (i, d) in dst.iter_mut().enumerate() {
        let p = src.wrapping_add(i).cast_mut();
        // SAFETY: in bounds per the caller; AtomicU8 has the alignment of u8.
        let a = unsafe { std::sync::atomic::AtomicU8::from_ptr(p) };
        *d = a.load(std::sync::atomic::Ordering::Relaxed);
    }
}

/// Copies `src` into shared memory at `dst` with byte-wise atomic stores.
///
/// # Safety
/// `dst..dst+src.len()` must be valid, mapped, writable memory for the duration.
pub(crate) unsafe fn copy_to_shared(src: &[u8], dst: *mut u8) {
    for (i, s) in src.iter().enumerate() {
        let p = dst.wrapping_add(i);
        // SAFETY: in bounds per the caller; AtomicU8 has the alignment of u8.
        let a = unsafe { std::sync::atomic::AtomicU8::from_ptr(p) };
        a.store(*s, std::sync::atomic::Ordering::Relaxed);
    }
}
