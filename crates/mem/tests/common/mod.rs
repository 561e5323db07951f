//! Helpers shared by the integration tests: a vCPU-like accessor that handles TLB
//! misses the way the hypervisor's run loop does.
#![allow(dead_code)]

use apf_abi::Gpa;
use apf_mem::{AccessSize, FetchError, Resolve, VcpuTlb};

/// Guest RAM base used by the tests (QEMU virt's).
pub const BASE: u64 = 0x4000_0000;

/// Why a test access failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessFail {
    NotRam,
    Fetch(FetchError),
}

fn fault_in(tlb: &mut VcpuTlb, gpa: u64, write: bool) -> Result<(), AccessFail> {
    match tlb.resolve(Gpa(gpa), write) {
        Resolve::Mapped => Ok(()),
        Resolve::NotRam => Err(AccessFail::NotRam),
        Resolve::NeedsFetch(gfn) => {
            assert_eq!(gfn, Gpa(gpa).gfn());
            tlb.fetch_blocking(gfn).map_err(AccessFail::Fetch)
        }
    }
}

/// Reads like a vCPU: on a miss, resolve (fetching synchronously) and retry.
pub fn read(tlb: &mut VcpuTlb, gpa: u64, size: AccessSize) -> Result<u64, AccessFail> {
    loop {
        if let Ok(v) = tlb.read(gpa, size) {
            return Ok(v);
        }
        fault_in(tlb, gpa, false)?;
    }
}

/// Writes like a vCPU.
pub fn write(tlb: &mut VcpuTlb, gpa: u64, size: AccessSize, v: u64) -> Result<(), AccessFail> {
    loop {
        if tlb.write(gpa, size, v).is_ok() {
            return Ok(());
        }
        fault_in(tlb, gpa, true)?;
    }
}
