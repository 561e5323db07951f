//! A page-aligned buffer for the stores' unit tests.

use std::ptr::NonNull;

use super::IoBuf;

/// 4096 aligned bytes inside an 8192-byte box.
pub(crate) struct Page(Box<[u8; 8192]>);

impl Page {
    /// Every byte `fill`.
    pub(crate) fn new(fill: u8) -> Page {
        Page(Box::new([fill; 8192]))
    }

    /// The aligned page, for a request.
    pub(crate) fn buf(&mut self) -> IoBuf {
        let p = self.0.as_mut_ptr();
        let aligned = p.wrapping_add(p.align_offset(4096));
        // SAFETY: 4096 aligned, 4096 bytes inside the 8192-byte box, used by
        // one request at a time in the tests, which wait for it.
        unsafe { IoBuf::new(NonNull::new(aligned).expect("non-null")) }
    }

    /// The aligned page's bytes.
    pub(crate) fn bytes(&mut self) -> &mut [u8] {
        let off = self.0.as_ptr().align_offset(4096);
        &mut self.0[off..off + 4096]
    }
}
