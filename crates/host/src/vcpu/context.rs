//! The vCPU as the firmware and the APF engine see it: its registers, its SDEI
//! state, its guest memory and the machine it belongs to.
//!
//! The run loop owns a [`VcpuContext`] beside its [`ApfEngine`](crate::apf::ApfEngine),
//! so the engine and what it acts on are split borrows of the vCPU: the context
//! is built once, not per call. The fuzz target `firmware_calls` and the SMCCC
//! tests use the same context over [`PlainRegs`](crate::regs::PlainRegs) and
//! [`FlatRam`], so they drive the production adapters.

use crate::apf::{ApfVcpu, GuestMemoryError, SdeiCancelError, SdeiInjectError};
use crate::machine::Machine;
use crate::regs::GuestRegs;
use crate::sdei::SdeiVcpu;
use crate::smccc::FirmwareVcpu;
use apf_abi::Gpa;
use apf_cpu::{Cpu, SysReg};
use std::sync::Arc;

/// Guest RAM as the host reads and writes it (not through stage 2): all the
/// engine needs of guest memory is its shared block. The run loop's is the
/// vCPU's `VcpuTlb` (`ram.rs`); tests and fuzzing use [`FlatRam`].
pub trait HostAccess {
    /// Reads `buf.len()` bytes at `gpa`; false if any of them is not guest RAM.
    fn host_read(&mut self, gpa: u64, buf: &mut [u8]) -> bool;
    /// Writes `buf` at `gpa`; false if any of it is not guest RAM.
    fn host_write(&mut self, gpa: u64, buf: &[u8]) -> bool;
}

/// Guest RAM as a byte vector at `base`: for tests and fuzzing.
#[derive(Debug, Clone)]
pub struct FlatRam {
    /// The guest-physical address of `bytes[0]`.
    pub base: u64,
    /// The RAM.
    pub bytes: Vec<u8>,
}

impl FlatRam {
    fn range(&self, gpa: u64, len: usize) -> Option<std::ops::Range<usize>> {
        let start = usize::try_from(gpa.checked_sub(self.base)?).ok()?;
        let end = start.checked_add(len)?;
        (end <= self.bytes.len()).then_some(start..end)
    }
}

impl HostAccess for FlatRam {
    fn host_read(&mut self, gpa: u64, buf: &mut [u8]) -> bool {
        self.range(gpa, buf.len())
            .map(|r| buf.copy_from_slice(&self.bytes[r]))
            .is_some()
    }
    fn host_write(&mut self, gpa: u64, buf: &[u8]) -> bool {
        self.range(gpa, buf.len())
            .map(|r| self.bytes[r].copy_from_slice(buf))
            .is_some()
    }
}

/// One vCPU's registers (`C`), SDEI state and guest memory (`M`), with the
/// machine whose GIC takes its PPI line and whose registry records its APF
/// shared block.
#[derive(Debug)]
pub struct VcpuContext<C, M> {
    /// The vCPU's index (its MPIDR affinity, its GIC redistributor).
    pub index: usize,
    /// The registers: the interpreter's CPU, or [`PlainRegs`](crate::regs::PlainRegs).
    pub cpu: C,
    /// The SDEI state.
    pub sdei: SdeiVcpu,
    /// Guest memory.
    pub ram: M,
    /// The machine.
    pub machine: Arc<Machine>,
}

impl<C: GuestRegs, M: HostAccess> ApfVcpu for VcpuContext<C, M> {
    fn exception_level(&self) -> u8 {
        self.cpu.el()
    }
    fn sdei_running(&self) -> bool {
        self.sdei.is_running()
    }
    fn sdei_deliverable(&self, event: u32) -> bool {
        self.sdei.can_inject(event)
    }
    fn sdei_inject(&mut self, event: u32) -> Result<(), SdeiInjectError> {
        self.sdei.inject(event)
    }
    fn sdei_cancel(&mut self, event: u32) -> Result<(), SdeiCancelError> {
        self.sdei.cancel(event)
    }
    fn set_ppi_level(&mut self, intid: u32, level: bool) {
        // The engine only uses the PPI the control API validated.
        let _ = self.machine.gic.set_ppi_level(self.index, intid, level);
    }
    // The engine's addresses come raw from the guest's control word (`apf-abi`
    // keeps the wire format as `u64`); they become a `Gpa` here, at the machine.
    fn claim_shared_block(&mut self, gpa: u64, len: u64) -> bool {
        self.machine.claim_shared_block(self.index, Gpa(gpa), len)
    }
    fn release_shared_block(&mut self, gpa: u64) {
        self.machine.release_shared_block(self.index, Gpa(gpa));
    }
    fn read_u32(&mut self, gpa: u64) -> Result<u32, GuestMemoryError> {
        let mut b = [0u8; 4];
        if !self.ram.host_read(gpa, &mut b) {
            return Err(GuestMemoryError { gpa });
        }
        Ok(u32::from_le_bytes(b))
    }
    fn write_u32(&mut self, gpa: u64, value: u32) -> Result<(), GuestMemoryError> {
        if !self.ram.host_write(gpa, &value.to_le_bytes()) {
            return Err(GuestMemoryError { gpa });
        }
        Ok(())
    }
}

impl<C: GuestRegs, M: HostAccess> FirmwareVcpu for VcpuContext<C, M> {
    type Regs = C;
    fn regs_and_sdei(&mut self) -> (&mut C, &mut SdeiVcpu) {
        (&mut self.cpu, &mut self.sdei)
    }
}

/// The interpreter's CPU for SDEI dispatch, SMCCC returns and PSCI entry.
impl GuestRegs for Cpu {
    fn x(&self, n: usize) -> u64 {
        Cpu::x(self, n)
    }
    fn set_x(&mut self, n: usize, v: u64) {
        Cpu::set_x(self, n, v);
    }
    fn pc(&self) -> u64 {
        Cpu::pc(self)
    }
    fn set_pc(&mut self, pc: u64) {
        Cpu::set_pc(self, pc);
    }
    fn pstate(&self) -> u64 {
        Cpu::pstate(self)
    }
    fn set_pstate(&mut self, v: u64) {
        Cpu::set_pstate(self, v);
    }
    fn elr_el1(&self) -> u64 {
        self.sysreg(SysReg::ElrEl1)
    }
    fn set_elr_el1(&mut self, v: u64) {
        self.set_sysreg(SysReg::ElrEl1, v);
    }
    fn spsr_el1(&self) -> u64 {
        self.sysreg(SysReg::SpsrEl1)
    }
    fn set_spsr_el1(&mut self, v: u64) {
        self.set_sysreg(SysReg::SpsrEl1, v);
    }
    fn el(&self) -> u8 {
        Cpu::el(self)
    }
}
