//! The distributor's register frame (GICD_*): global enables, identification,
//! and the SPIs' state, priorities, trigger modes and routes.

use super::bank::BankReg;
use super::{
    CTLR_ARE, CTLR_DS, CTLR_ENABLE_GRP0, CTLR_ENABLE_GRP1, Gic, IIDR, INTID_LIMIT, PIDR2,
    PIDR2_OFFSET, SPI_FIRST, Word, field, is_byte_or_word, is_double_or_word, is_word,
};
use crate::regs::MPIDR_AFFINITY_MASK;

const GICD_CTLR: u64 = 0x0000;
const GICD_TYPER: u64 = 0x0004;
const GICD_IIDR: u64 = 0x0008;
const GICD_BANK_REGS: std::ops::Range<u64> = 0x0080..0x0400;
const GICD_IPRIORITYR: std::ops::Range<u64> = 0x0400..0x0800;
const GICD_ITARGETSR: std::ops::Range<u64> = 0x0800..0x0C00;
const GICD_ICFGR: std::ops::Range<u64> = 0x0C00..0x0D00;
const GICD_IROUTER: std::ops::Range<u64> = 0x6000..0x8000;

/// GICD_TYPER.ITLinesNumber: 32 × (1 + 1) INTIDs.
const IT_LINES_NUMBER: u64 = (INTID_LIMIT as u64 / 32) - 1;
/// GICD_TYPER.IDbits: INTIDs are 10 bits wide (field value is bits − 1).
const TYPER_ID_BITS: u64 = 9 << 19;
/// GICD_TYPER.No1N: 1-of-N SPI routing is not supported.
const TYPER_NO_1_OF_N: u64 = 1 << 25;

/// The SPI bank bit of an INTID, if it is an SPI.
fn spi_bit(intid: u64) -> Option<u32> {
    (u64::from(SPI_FIRST)..u64::from(INTID_LIMIT))
        .contains(&intid)
        .then(|| field(intid - u64::from(SPI_FIRST), 0, 5))
}

impl<W: Word> Gic<W> {
    fn typer(&self) -> u64 {
        // CPUNumber describes the legacy interface; report up to 8 PEs.
        let cpus = (self.vcpus().clamp(1, 8) - 1) as u64;
        IT_LINES_NUMBER | cpus << 5 | TYPER_ID_BITS | TYPER_NO_1_OF_N
    }

    /// Which GICD_<bank>R<n> word `off` is, and whether it is the SPI word.
    fn dist_bank_reg(off: u64) -> Option<(BankReg, bool)> {
        let reg = BankReg::at(off & !0x7F)?;
        Some((reg, (off & 0x7F) / 4 == 1))
    }

    /// GICD_ICFGR<n>: n = 2 and 3 configure the SPIs.
    fn dist_config_reg(off: u64) -> Option<BankReg> {
        match (off - GICD_ICFGR.start) / 4 {
            2 => Some(BankReg::Config { upper: false }),
            3 => Some(BankReg::Config { upper: true }),
            _ => None,
        }
    }

    pub(super) fn dist_read(&self, off: u64, size: usize) -> Option<u64> {
        if GICD_IROUTER.contains(&off) {
            if !is_double_or_word(off, size) {
                return None;
            }
            let rel = off - GICD_IROUTER.start;
            let route = spi_bit(rel / 8).map_or(0, |b| self.routes[b as usize].get());
            return Some(match (size, rel % 8) {
                (8, _) => route,
                (_, 0) => route & 0xFFFF_FFFF,
                _ => route >> 32,
            });
        }
        if GICD_IPRIORITYR.contains(&off) || GICD_ITARGETSR.contains(&off) {
            if !is_byte_or_word(off, size) {
                return None;
            }
            // ITARGETSR is RES0 with affinity routing.
            if GICD_ITARGETSR.contains(&off) {
                return Some(0);
            }
            let intid = off - GICD_IPRIORITYR.start;
            return Some(match (size, spi_bit(intid)) {
                (_, None) => 0,
                (1, Some(bit)) => u64::from(self.spis.priority(bit)),
                (_, Some(bit)) => self.spis.priority_word(bit),
            });
        }
        if !is_word(off, size) {
            return None;
        }
        Some(match off {
            GICD_CTLR => self.ctlr.get() | CTLR_ARE | CTLR_DS,
            GICD_TYPER => self.typer(),
            GICD_IIDR => IIDR,
            PIDR2_OFFSET => PIDR2,
            _ if GICD_BANK_REGS.contains(&off) => match Self::dist_bank_reg(off) {
                Some((reg, true)) => self.spis.read(reg),
                _ => 0,
            },
            _ if GICD_ICFGR.contains(&off) => {
                Self::dist_config_reg(off).map_or(0, |reg| self.spis.read(reg))
            }
            _ => 0,
        })
    }

    pub(super) fn dist_write(&self, off: u64, size: usize, value: u64) -> bool {
        if GICD_IROUTER.contains(&off) {
            if !is_double_or_word(off, size) {
                return false;
            }
            let rel = off - GICD_IROUTER.start;
            if let Some(bit) = spi_bit(rel / 8) {
                let route = &self.routes[bit as usize];
                let old = route.get();
                let new = match (size, rel % 8) {
                    (8, _) => value,
                    (_, 0) => (old & !0xFFFF_FFFF) | (value & 0xFFFF_FFFF),
                    _ => (old & 0xFFFF_FFFF) | (value << 32),
                };
                // IRM is RES0 without 1-of-N routing; only affinity is kept.
                route.set(new & MPIDR_AFFINITY_MASK);
                self.kick_all();
            }
            return true;
        }
        if GICD_IPRIORITYR.contains(&off) || GICD_ITARGETSR.contains(&off) {
            if !is_byte_or_word(off, size) {
                return false;
            }
            if GICD_IPRIORITYR.contains(&off)
                && let Some(bit) = spi_bit(off - GICD_IPRIORITYR.start)
            {
                if size == 1 {
                    self.spis.set_priority(bit, value.to_le_bytes()[0]);
                } else {
                    self.spis.set_priority_word(bit, value);
                }
                self.kick_all();
            }
            return true;
        }
        if !is_word(off, size) {
            return false;
        }
        match off {
            GICD_CTLR => self.ctlr.set(value & (CTLR_ENABLE_GRP0 | CTLR_ENABLE_GRP1)),
            _ if GICD_BANK_REGS.contains(&off) => {
                if let Some((reg, true)) = Self::dist_bank_reg(off) {
                    self.spis.write(reg, value);
                }
            }
            _ if GICD_ICFGR.contains(&off) => {
                if let Some(reg) = Self::dist_config_reg(off) {
                    self.spis.write(reg, value);
                }
            }
            // Read-only and reserved registers ignore writes.
            _ => return true,
        }
        self.kick_all();
        true
    }
}
