//! `apf-mem` as the hypervisor's [`GuestRam`]: one vCPU's TLB, and the sink that
//! turns a fetch completion into an APF completion and a kick.

use apf_cpu::AccessSize;
use apf_host::apf::{CompletionPort, ItemHandle};
use apf_host::vcpu::{FetchStarted, GuestRam, PageLost, RamMiss, RamResolve};
use apf_host::waker::VcpuWaker;
use apf_mem::{FetchError, FetchSink, FetchStart, Resolve, VcpuTlb};
use std::sync::Arc;

/// Completes the APF work item a fetch belongs to, and kicks its vCPU if the
/// completion was taken (not a duplicate, not for a drained item).
#[derive(Debug)]
pub struct ApfFetchSink {
    port: Arc<CompletionPort>,
    waker: Arc<VcpuWaker>,
}

impl FetchSink for ApfFetchSink {
    fn fetch_done(&self, cookie: u64, result: Result<(), FetchError>) {
        if let Some(handle) = ItemHandle::from_cookie(cookie)
            && self.port.complete(handle, result.is_ok())
        {
            self.waker.kick();
        }
    }
}

/// One vCPU's guest RAM.
pub struct MemRam {
    tlb: VcpuTlb,
    sink: Arc<dyn FetchSink>,
}

impl std::fmt::Debug for MemRam {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemRam")
            .field("tlb", &self.tlb)
            .finish_non_exhaustive()
    }
}

impl MemRam {
    /// The RAM view of a vCPU whose APF completions go to `port` and kicks to `waker`.
    pub fn new(tlb: VcpuTlb, port: Arc<CompletionPort>, waker: Arc<VcpuWaker>) -> MemRam {
        MemRam {
            tlb,
            sink: Arc::new(ApfFetchSink { port, waker }),
        }
    }
}

fn lost(e: impl std::fmt::Display) -> PageLost {
    PageLost(e.to_string())
}

impl GuestRam for MemRam {
    #[inline]
    fn read(&mut self, gpa: u64, size: AccessSize) -> Result<u64, RamMiss> {
        self.tlb.read(gpa, size).map_err(|_| RamMiss)
    }

    #[inline]
    fn write(&mut self, gpa: u64, size: AccessSize, value: u64) -> Result<(), RamMiss> {
        self.tlb.write(gpa, size, value).map_err(|_| RamMiss)
    }

    #[inline]
    fn fetch_insn(&mut self, gpa: u64) -> Result<u32, RamMiss> {
        self.tlb.fetch_insn(gpa).map_err(|_| RamMiss)
    }

    fn compare_exchange(
        &mut self,
        gpa: u64,
        size: AccessSize,
        old: u64,
        new: u64,
    ) -> Result<u64, RamMiss> {
        self.tlb
            .compare_exchange(gpa, size, old, new)
            .map_err(|_| RamMiss)
    }

    fn compare_exchange_pair(&mut self, gpa: u64, old: u128, new: u128) -> Result<u128, RamMiss> {
        self.tlb
            .compare_exchange_pair(gpa, old, new)
            .map_err(|_| RamMiss)
    }

    fn atomic_rmw(
        &mut self,
        gpa: u64,
        size: AccessSize,
        op: &dyn Fn(u64) -> u64,
    ) -> Result<u64, RamMiss> {
        self.tlb.atomic_rmw(gpa, size, op).map_err(|_| RamMiss)
    }

    fn resolve(&mut self, gpa: u64, write: bool) -> RamResolve {
        match self.tlb.resolve(gpa, write) {
            Resolve::Mapped => RamResolve::Mapped,
            Resolve::NeedsFetch(gfn) => RamResolve::NeedsFetch(gfn),
            Resolve::NotRam => RamResolve::NotRam,
        }
    }

    fn start_fetch(&mut self, gfn: u64, cookie: u64) -> FetchStarted {
        match self
            .tlb
            .memory()
            .start_fetch(gfn, Arc::clone(&self.sink), cookie)
        {
            FetchStart::Started | FetchStart::Joined => FetchStarted::InFlight,
            FetchStart::AlreadyResident => FetchStarted::Resident,
            FetchStart::NotRam => FetchStarted::NotRam,
        }
    }

    fn fetch_blocking(&mut self, gfn: u64) -> Result<(), PageLost> {
        self.tlb.fetch_blocking(gfn).map_err(lost)
    }

    fn host_read(&mut self, gpa: u64, buf: &mut [u8]) -> Result<(), PageLost> {
        self.tlb.read_bytes(gpa, buf).map_err(lost)
    }

    fn host_write(&mut self, gpa: u64, buf: &[u8]) -> Result<(), PageLost> {
        self.tlb.write_bytes(gpa, buf).map_err(lost)
    }

    fn sync(&mut self) -> bool {
        self.tlb.sync()
    }

    fn park(&mut self) {
        self.tlb.park();
    }

    fn unpark(&mut self) -> bool {
        self.tlb.unpark()
    }
}
