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
    /// A pidfd of this process for `process_madvise`, which discards many
    /// scattered runs in one call with one TLB flush (Linux 6.15+ for
    /// MADV_DONTNEED); `None` where the kernel refuses it.
    pidfd: Option<std::os::fd::OwnedFd>,
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
        let mut ram = GuestRam {
            base,
            len,
            pidfd: None,
        };
        ram.pidfd = ram.probe_process_madvise();
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

    /// Gives back many runs `(first, count)` of pages, with as few system calls
    /// (and TLB flushes) as the kernel allows.
    pub(crate) fn discard_runs(&self, runs: &[(usize, usize)]) -> io::Result<()> {
        let Some(fd) = &self.pidfd else {
            return runs
                .iter()
                .try_for_each(|&(first, count)| self.discard(first, count));
        };
        for chunk in runs.chunks(1024) {
            let iov: Vec<libc::iovec> = chunk
                .iter()
                .map(|&(first, count)| libc::iovec {
                    iov_base: self.page_ptr(first).cast(),
                    iov_len: count * PAGE,
                })
                .collect();
            let want: usize = iov.iter().map(|v| v.iov_len).sum();
            let done = self.process_madvise(fd, &iov)?;
            if done != want {
                // A partial advice: finish run by run.
                chunk
                    .iter()
                    .try_for_each(|&(first, count)| self.discard(first, count))?;
            }
        }
        Ok(())
    }

    fn process_madvise(&self, fd: &std::os::fd::OwnedFd, iov: &[libc::iovec]) -> io::Result<usize> {
        use std::os::fd::AsRawFd;
        // SAFETY: every iovec lies within our own mapping; MADV_DONTNEED on
        // anonymous private memory only replaces its contents with zeros.
        let r = unsafe {
            libc::syscall(
                libc::SYS_process_madvise,
                fd.as_raw_fd(),
                iov.as_ptr(),
                iov.len(),
                libc::MADV_DONTNEED,
                0u32,
            )
        };
        usize::try_from(r).map_err(|_| io::Error::last_os_error())
    }

    /// Opens a pidfd and checks that `process_madvise(MADV_DONTNEED)` works on
    /// this kernel (on the mapping's first page, which is untouched yet).
    fn probe_process_madvise(&self) -> Option<std::os::fd::OwnedFd> {
        use std::os::fd::FromRawFd;
        // SAFETY: pidfd_open on our own pid; no memory is passed.
        let pid = std::process::id();
        // SAFETY: pidfd_open on our own pid; no memory is passed.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0u32) };
        let fd = i32::try_from(fd).ok().filter(|&fd| fd >= 0)?;
        // SAFETY: `fd` was just returned by pidfd_open and is owned by nobody else.
        let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
        let iov = [libc::iovec {
            iov_base: self.page_ptr(0).cast(),
            iov_len: PAGE,
        }];
        (self.process_madvise(&fd, &iov).ok() == Some(PAGE)).then_some(fd)
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
