//! What the run loop needs from guest memory: the vCPU's stage-2 view (a software
//! TLB with a fault path) and the fetch pipeline. `apf-vm` implements it over
//! `apf-mem`; the hypervisor does not depend on the memory system's crate.

use apf_cpu::AccessSize;
use std::fmt;

/// The access missed this vCPU's stage-2 TLB: resolve, then retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RamMiss;

/// What the stage-2 fault path found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RamResolve {
    /// The page is mapped now: retry the access.
    Mapped,
    /// The page must be read back first.
    NeedsFetch(u64),
    /// Not guest RAM.
    NotRam,
}

/// What starting an asynchronous fetch did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FetchStarted {
    /// A read is in flight (new or joined): its completion will arrive.
    InFlight,
    /// The page came back meanwhile: no completion will arrive.
    Resident,
    /// Not guest RAM: no completion will arrive.
    NotRam,
}

/// A page could not be read back; the guest access that needed it gets an
/// external abort. Carries the memory system's message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageLost(pub String);

impl fmt::Display for PageLost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One vCPU's view of guest RAM.
pub trait GuestRam {
    /// TLB hit path: read.
    fn read(&mut self, gpa: u64, size: AccessSize) -> Result<u64, RamMiss>;
    /// TLB hit path: write.
    fn write(&mut self, gpa: u64, size: AccessSize, value: u64) -> Result<(), RamMiss>;
    /// TLB hit path: instruction fetch.
    fn fetch_insn(&mut self, gpa: u64) -> Result<u32, RamMiss>;
    /// Atomic compare-and-exchange on a writable page; returns the old value.
    fn compare_exchange(
        &mut self,
        gpa: u64,
        size: AccessSize,
        old: u64,
        new: u64,
    ) -> Result<u64, RamMiss>;
    /// 16-byte compare-and-exchange; returns the old value.
    fn compare_exchange_pair(&mut self, gpa: u64, old: u128, new: u128) -> Result<u128, RamMiss>;
    /// Atomic read-modify-write with `op`; returns the old value.
    fn atomic_rmw(
        &mut self,
        gpa: u64,
        size: AccessSize,
        op: &dyn Fn(u64) -> u64,
    ) -> Result<u64, RamMiss>;
    /// The stage-2 fault path.
    fn resolve(&mut self, gpa: u64, write: bool) -> RamResolve;
    /// Starts an asynchronous fetch whose completion carries `cookie` to this vCPU's
    /// APF completion port.
    fn start_fetch(&mut self, gfn: u64, cookie: u64) -> FetchStarted;
    /// Reads a page back on this thread.
    fn fetch_blocking(&mut self, gfn: u64) -> Result<(), PageLost>;
    /// Host-side read of guest memory (faults the page in if needed).
    fn host_read(&mut self, gpa: u64, buf: &mut [u8]) -> Result<(), PageLost>;
    /// Host-side write of guest memory (faults the page in if needed).
    fn host_write(&mut self, gpa: u64, buf: &[u8]) -> Result<(), PageLost>;
    /// Between slices: acknowledge TLB shootdowns. Returns true if mappings were
    /// dropped: a page may have left, so the decoded-instruction cache must go too.
    fn sync(&mut self) -> bool;
    /// The vCPU stops using its TLB (halted, off): it never delays a shootdown.
    fn park(&mut self);
    /// The vCPU uses its TLB again; true if mappings were dropped meanwhile.
    fn unpark(&mut self) -> bool;
}
