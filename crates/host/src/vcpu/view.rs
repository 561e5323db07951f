//! Adapters: the CPU as the firmware services' [`GuestRegs`], and the vCPU as the
//! APF engine's [`ApfVcpu`].

use super::ram::GuestRam;
use crate::apf::{ApfVcpu, GuestMemoryError, SdeiCancelError, SdeiInjectError};
use crate::machine::Machine;
use crate::regs::GuestRegs;
use crate::sdei::SdeiVcpu;
use apf_cpu::{Cpu, SysReg};

/// The CPU's registers for SDEI dispatch, SMCCC returns and PSCI entry.
pub(crate) struct CpuRegs<'a>(pub(crate) &'a mut Cpu);

impl GuestRegs for CpuRegs<'_> {
    fn x(&self, n: usize) -> u64 {
        self.0.x(n)
    }
    fn set_x(&mut self, n: usize, v: u64) {
        self.0.set_x(n, v);
    }
    fn pc(&self) -> u64 {
        self.0.pc()
    }
    fn set_pc(&mut self, pc: u64) {
        self.0.set_pc(pc);
    }
    fn pstate(&self) -> u64 {
        self.0.pstate()
    }
    fn set_pstate(&mut self, v: u64) {
        self.0.set_pstate(v);
    }
    fn elr_el1(&self) -> u64 {
        self.0.sysreg(SysReg::ElrEl1)
    }
    fn set_elr_el1(&mut self, v: u64) {
        self.0.set_sysreg(SysReg::ElrEl1, v);
    }
    fn spsr_el1(&self) -> u64 {
        self.0.sysreg(SysReg::SpsrEl1)
    }
    fn set_spsr_el1(&mut self, v: u64) {
        self.0.set_sysreg(SysReg::SpsrEl1, v);
    }
}

/// The vCPU as the APF engine sees it.
pub(crate) struct ApfView<'a, R> {
    pub(crate) index: usize,
    pub(crate) el: u8,
    pub(crate) sdei: &'a mut SdeiVcpu,
    pub(crate) machine: &'a Machine,
    pub(crate) ram: &'a mut R,
}

impl<R: GuestRam> ApfVcpu for ApfView<'_, R> {
    fn exception_level(&self) -> u8 {
        self.el
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
    fn claim_shared_block(&mut self, gpa: u64, len: u64) -> bool {
        self.machine.claim_shared_block(self.index, gpa, len)
    }
    fn release_shared_block(&mut self, gpa: u64) {
        self.machine.release_shared_block(self.index, gpa);
    }
    fn read_u32(&mut self, gpa: u64) -> Result<u32, GuestMemoryError> {
        let mut b = [0u8; 4];
        self.ram
            .host_read(gpa, &mut b)
            .map_err(|_| GuestMemoryError { gpa })?;
        Ok(u32::from_le_bytes(b))
    }
    fn write_u32(&mut self, gpa: u64, value: u32) -> Result<(), GuestMemoryError> {
        self.ram
            .host_write(gpa, &value.to_le_bytes())
            .map_err(|_| GuestMemoryError { gpa })
    }
}
