//! A guest's RAM as an NBD export ([`GuestRamSource`]): what a migration's
//! source serves its memory through ([`crate::store::NbdServer`]).

use std::io;
use std::sync::Arc;

use apf_abi::{Gpa, PAGE_SIZE};

use crate::memory::GuestMemory;
use crate::store::ExportSource;

/// A guest's RAM as an export: byte `o` is guest physical address
/// `ram_base + o`. Pages out in the store are brought in to be read; pages
/// never touched read as zeros.
#[derive(Debug)]
pub struct GuestRamSource {
    mem: Arc<GuestMemory>,
}

impl GuestRamSource {
    /// Serves `mem`'s RAM.
    pub fn new(mem: Arc<GuestMemory>) -> GuestRamSource {
        GuestRamSource { mem }
    }
}

impl ExportSource for GuestRamSource {
    fn size(&self) -> u64 {
        self.mem.ram_pages() * PAGE_SIZE
    }

    fn read(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let gpa = self
            .mem
            .ram_base()
            .0
            .checked_add(offset)
            .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
        self.mem
            .read_bytes(Gpa(gpa), buf)
            .map_err(|e| io::Error::other(e.to_string()))
    }
}
