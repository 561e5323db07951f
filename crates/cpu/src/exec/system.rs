//! System instructions: MRS, MSR, SYS, MSR (immediate) and WFI/WFE. The
//! registers themselves live in `sysreg`.

use apf_abi::esr::{Esr, ec};

use crate::Cpu;
use crate::bus::{Bus, SysRegId};
use crate::cpu::SysFault;
use crate::cpu::{Exit, Flow};
use crate::decode::{PstateField, reg};
use crate::sysreg::{MsrEffect, SysEffect, raw_rt};

impl Cpu {
    /// The flow of an MRS/MSR/SYS that did not execute.
    fn sys_fault(&mut self, f: SysFault, id: SysRegId, t: u8, read: bool) -> Flow {
        let esr = match f {
            SysFault::Undefined => Esr::undefined(),
            SysFault::Trapped => Esr::new(
                ec::SYSREG,
                id.trap_iss() | (raw_rt(t) << 5) | u64::from(read),
            ),
            SysFault::FpTrapped => Esr::new(ec::FP_ASIMD, 0),
            SysFault::Aborted => return Flow::Trap,
            SysFault::Exit(exit) => return self.fault_exit(exit),
        };
        self.sync_exception(esr, None);
        Flow::Trap
    }

    /// After an access that went to the bus: the host may have kicked.
    fn after_foreign<B: Bus>(&mut self, bus: &mut B, foreign: bool) -> Flow {
        if foreign && bus.kicked() {
            self.pc = self.pc.wrapping_add(4);
            self.exit_after(Exit::Kicked)
        } else {
            Flow::Next
        }
    }

    /// MSR (immediate): SPSel and the DAIF bits.
    pub(super) fn msr_immediate(&mut self, field: PstateField, imm: u8) -> Flow {
        let daif_allowed = self.pstate.el == 1 || self.sys.sctlr_el1 & (1 << 9) != 0;
        match field {
            PstateField::SpSel if self.pstate.el == 1 => self.set_spsel(imm & 1 != 0),
            PstateField::DaifSet if daif_allowed => self.pstate.daif |= u64::from(imm & 0xF) << 6,
            PstateField::DaifClr if daif_allowed => {
                self.pstate.daif &= !(u64::from(imm & 0xF) << 6)
            }
            PstateField::SpSel => {
                self.undefined();
                return Flow::Trap;
            }
            PstateField::DaifSet | PstateField::DaifClr => {
                let op2 = if field == PstateField::DaifSet { 6 } else { 7 };
                let id = SysRegId::new(0, 3, 4, imm, op2);
                return self.sys_fault(SysFault::Trapped, id, reg::ZR, false);
            }
        }
        self.pc = self.pc.wrapping_add(4);
        Flow::Resync
    }

    /// WFI and WFE: an exit to the host unless EL1 traps them.
    #[inline(always)]
    pub(super) fn wait_for(&mut self, wfe: bool) -> Flow {
        if self.wait_trapped(wfe) {
            // EC 0x01; from AArch64 CV = 1 and COND = 0b1110; TI = WFE.
            let iss = (1 << 24) | (0xE << 20) | u64::from(wfe);
            self.sync_exception(Esr::new(ec::WFX, iss), None);
            return Flow::Trap;
        }
        self.pc = self.pc.wrapping_add(4);
        self.exit_after(if wfe { Exit::Wfe } else { Exit::Wfi })
    }

    /// MRS: the value comes from this CPU or, for the GIC CPU interface, the bus.
    #[inline(always)]
    pub(super) fn exec_mrs<B: Bus>(&mut self, bus: &mut B, t: u8, id: SysRegId) -> Flow {
        match self.mrs(bus, id) {
            Ok((v, foreign)) => {
                self.w(t, v);
                self.after_foreign(bus, foreign)
            }
            Err(f) => self.sys_fault(f, id, t, true),
        }
    }

    /// MSR (register): some writes end the block or change the timer lines.
    #[inline(always)]
    pub(super) fn exec_msr<B: Bus>(&mut self, bus: &mut B, t: u8, id: SysRegId) -> Flow {
        match self.msr(bus, id, self.r(t)) {
            Ok(MsrEffect::Plain) => Flow::Next,
            Ok(MsrEffect::Resync) => {
                self.pc = self.pc.wrapping_add(4);
                Flow::Resync
            }
            Ok(MsrEffect::TimerLines) => {
                self.pc = self.pc.wrapping_add(4);
                self.exit_after(Exit::TimerDeadline)
            }
            Ok(MsrEffect::Foreign) => self.after_foreign(bus, true),
            Err(f) => self.sys_fault(f, id, t, false),
        }
    }

    /// SYS: the cache and TLB maintenance and address-translation operations.
    #[inline(always)]
    pub(super) fn exec_sys<B: Bus>(&mut self, bus: &mut B, t: u8, id: SysRegId) -> Flow {
        match self.sys_op(bus, id, self.r_raw(t)) {
            Ok(SysEffect::Plain) => Flow::Next,
            Ok(SysEffect::Resync) => {
                self.pc = self.pc.wrapping_add(4);
                Flow::Resync
            }
            Err(f) => self.sys_fault(f, id, t, false),
        }
    }
}
