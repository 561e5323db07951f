//! The redistributors' register frames (GICR_*): per vCPU, an RD frame
//! (identification, WAKER) and an SGI frame (the SGIs' and PPIs' state).

use super::bank::BankReg;
use super::{
    Gic, IIDR, PIDR2, PIDR2_OFFSET, Word, field, is_byte_or_word, is_double_or_word, is_word,
};
use crate::regs::affinity_of;
use apf_abi::platform::GICR_SGI_OFFSET;

const GICR_TYPER: u64 = 0x0008;
const GICR_IIDR: u64 = 0x0004;
const GICR_WAKER: u64 = 0x0014;
/// GICR_WAKER.ProcessorSleep.
const WAKER_PROCESSOR_SLEEP: u64 = 1 << 1;
/// GICR_WAKER.ChildrenAsleep.
const WAKER_CHILDREN_ASLEEP: u64 = 1 << 2;
/// GICR_TYPER.Last.
const TYPER_LAST: u64 = 1 << 4;

const SGI_BANK_REGS: std::ops::Range<u64> = 0x0080..0x0400;
const SGI_IPRIORITYR: std::ops::Range<u64> = 0x0400..0x0800;
const SGI_IPRIORITYR_IMPLEMENTED: u64 = 0x0420;
const GICR_ICFGR0: u64 = 0x0C00;
const GICR_ICFGR1: u64 = 0x0C04;

impl<W: Word> Gic<W> {
    fn redist_typer(&self, vcpu: usize) -> u64 {
        let last = if vcpu + 1 == self.vcpus() {
            TYPER_LAST
        } else {
            0
        };
        affinity_of(vcpu) << 32 | (vcpu as u64) << 8 | last
    }

    pub(super) fn redist_read(&self, vcpu: usize, off: u64, size: usize) -> Option<u64> {
        let redist = &self.redists[vcpu];
        if off >= GICR_SGI_OFFSET {
            return self.sgi_frame_read(vcpu, off - GICR_SGI_OFFSET, size);
        }
        if (GICR_TYPER..GICR_TYPER + 8).contains(&off) {
            if !is_double_or_word(off, size) {
                return None;
            }
            let typer = self.redist_typer(vcpu);
            return Some(match (size, off) {
                (8, _) => typer,
                (_, GICR_TYPER) => typer & 0xFFFF_FFFF,
                _ => typer >> 32,
            });
        }
        if !is_word(off, size) {
            return None;
        }
        Some(match off {
            GICR_IIDR => IIDR,
            GICR_WAKER if redist.sleep.get() != 0 => WAKER_PROCESSOR_SLEEP | WAKER_CHILDREN_ASLEEP,
            PIDR2_OFFSET => PIDR2,
            // GICR_CTLR (no LPIs: all its fields are RES0 or 0), STATUSR, reserved.
            _ => 0,
        })
    }

    pub(super) fn redist_write(&self, vcpu: usize, off: u64, size: usize, value: u64) -> bool {
        if off >= GICR_SGI_OFFSET {
            return self.sgi_frame_write(vcpu, off - GICR_SGI_OFFSET, size, value);
        }
        if (GICR_TYPER..GICR_TYPER + 8).contains(&off) {
            return is_double_or_word(off, size);
        }
        if !is_word(off, size) {
            return false;
        }
        if off == GICR_WAKER {
            let sleep = u64::from(value & WAKER_PROCESSOR_SLEEP != 0);
            self.redists[vcpu].sleep.set(sleep);
        }
        true
    }

    fn sgi_frame_read(&self, vcpu: usize, off: u64, size: usize) -> Option<u64> {
        let bank = &self.redists[vcpu].bank;
        if SGI_IPRIORITYR.contains(&off) {
            if !is_byte_or_word(off, size) {
                return None;
            }
            if off >= SGI_IPRIORITYR_IMPLEMENTED {
                return Some(0);
            }
            let intid = field(off - SGI_IPRIORITYR.start, 0, 5);
            return Some(if size == 1 {
                u64::from(bank.priority(intid))
            } else {
                bank.priority_word(intid)
            });
        }
        if !is_word(off, size) {
            return None;
        }
        Some(match off {
            _ if SGI_BANK_REGS.contains(&off) => match BankReg::at(off & !0x7F) {
                Some(reg) if off & 0x7F == 0 => bank.read(reg),
                _ => 0,
            },
            GICR_ICFGR0 => bank.read(BankReg::Config { upper: false }),
            GICR_ICFGR1 => bank.read(BankReg::Config { upper: true }),
            // IGRPMODR0 and NSACR are RAZ/WI with one security state.
            _ => 0,
        })
    }

    fn sgi_frame_write(&self, vcpu: usize, off: u64, size: usize, value: u64) -> bool {
        let bank = &self.redists[vcpu].bank;
        if SGI_IPRIORITYR.contains(&off) {
            if !is_byte_or_word(off, size) {
                return false;
            }
            if off < SGI_IPRIORITYR_IMPLEMENTED {
                let intid = field(off - SGI_IPRIORITYR.start, 0, 5);
                if size == 1 {
                    bank.set_priority(intid, value.to_le_bytes()[0]);
                } else {
                    bank.set_priority_word(intid, value);
                }
                self.kick(vcpu);
            }
            return true;
        }
        if !is_word(off, size) {
            return false;
        }
        let reg = match off {
            _ if SGI_BANK_REGS.contains(&off) && off & 0x7F == 0 => BankReg::at(off),
            // ICFGR0 is read-only (SGIs are always edge-triggered).
            GICR_ICFGR1 => Some(BankReg::Config { upper: true }),
            _ => None,
        };
        if let Some(reg) = reg {
            bank.write(reg, value);
            self.kick(vcpu);
        }
        true
    }
}
