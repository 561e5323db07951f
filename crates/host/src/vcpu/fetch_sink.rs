//! The run loop's side of the seam with `apf-mem`, in one place: guest RAM is
//! the vCPU's [`VcpuTlb`], used directly in mem's own vocabulary ([`TlbMiss`],
//! [`Resolve`], [`FetchStart`], [`FetchError`]); what is left to glue is the
//! sink that turns a finished fetch into an APF completion and a kick, and the
//! engine's [`HostAccess`] over the TLB.
//!
//! [`TlbMiss`]: apf_mem::TlbMiss
//! [`Resolve`]: apf_mem::Resolve
//! [`FetchStart`]: apf_mem::FetchStart

use super::context::HostAccess;
use crate::apf::{CompletionPort, ItemHandle};
use crate::waker::VcpuWaker;
use apf_abi::Gpa;
use apf_mem::{FetchError, FetchSink, VcpuTlb};
use std::sync::Arc;

/// Completes the APF work item a fetch belongs to, and kicks its vCPU if the
/// completion was taken (not a duplicate, not for a drained item).
#[derive(Debug)]
pub(crate) struct ApfFetchSink {
    pub(crate) port: Arc<CompletionPort>,
    pub(crate) waker: Arc<VcpuWaker>,
}

impl FetchSink for ApfFetchSink {
    fn fetch_done(&self, cookie: u64, result: Result<(), FetchError>) {
        // A failed read completes the item as failed: the engine sends the
        // guest's next fault on that page down the synchronous path, where a page
        // still lost becomes an external abort (traced with its reason there).
        if let Err(error) = &result {
            tracing::debug!(target: "apf", cookie, %error, "asynchronous fetch failed");
        }
        if let Some(handle) = ItemHandle::from_cookie(cookie)
            && self.port.complete(handle, result.is_ok())
        {
            self.waker.kick();
        }
    }
}

/// The engine's view of the vCPU's RAM (its shared block): host-side accesses
/// that park the vCPU while they may wait for a fetch. The engine's raw `u64`
/// (from the guest's control word) becomes a [`Gpa`] here.
impl HostAccess for VcpuTlb {
    fn host_read(&mut self, gpa: u64, buf: &mut [u8]) -> bool {
        self.read_bytes(Gpa(gpa), buf).is_ok()
    }
    fn host_write(&mut self, gpa: u64, buf: &[u8]) -> bool {
        self.write_bytes(Gpa(gpa), buf).is_ok()
    }
}
