//! The stage-1 MMU of the EL1&0 regime: VA → PA with permissions and memory
//! type. `walk` reads the tables through the (physical) bus, `tlb` caches
//! the result per page, and this module holds the per-vCPU state derived
//! from TCR/TTBR (current ASID, top-byte-ignore) and the entry point,
//! [`Mmu::translate`]. With SCTLR_EL1.M = 0 the callers never get here.

mod fault;
pub(crate) mod tlb;
mod walk;

pub(crate) use fault::Fault;

use crate::bus::Bus;
use tlb::{Tlb, perm};
pub(crate) use walk::PA_BITS;
pub(crate) use walk::WalkRegs;
use walk::walk;

/// What an access does with the memory it translates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AccessKind {
    Read,
    Write,
    Execute,
}

/// A translated address and the memory type there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Translation {
    pub(crate) pa: u64,
    pub(crate) device: bool,
    /// The MAIR attribute byte and SH field (for PAR_EL1).
    pub(crate) attr: u8,
    pub(crate) sh: u8,
}

/// The per-vCPU MMU state: the TLB and what a lookup needs from the registers.
#[derive(Debug)]
pub(crate) struct Mmu {
    /// Data translations (loads, stores, AT, DC).
    tlb: Tlb,
    /// Instruction translations, apart from data as in hardware's split L1
    /// TLBs: with one direct-mapped array, a code page and a data page in the
    /// same slot evict each other on every retry, and when their stage-2
    /// entries (in the host's direct-mapped TLB) collide too, the data access
    /// re-walks after every exit and never completes.
    itlb: Tlb,
    /// The ASID TCR.A1 selects, cut to 8 bits unless TCR.AS.
    asid: u16,
    tbi0: bool,
    tbi1: bool,
    /// Either: the common no-TBI case skips the top-byte work.
    tbi_any: bool,
}

const TCR_A1: u64 = 1 << 22;
const TCR_AS: u64 = 1 << 36;
const TCR_TBI0: u64 = 1 << 37;
const TCR_TBI1: u64 = 1 << 38;

impl Mmu {
    pub(crate) fn new() -> Mmu {
        Mmu {
            tlb: Tlb::new(),
            itlb: Tlb::new(),
            asid: 0,
            tbi0: false,
            tbi1: false,
            tbi_any: false,
        }
    }

    /// Re-reads the lookup state after a write to TTBR0/TTBR1/TCR.
    pub(crate) fn sync(&mut self, tcr: u64, ttbr0: u64, ttbr1: u64) {
        let ttbr = if tcr & TCR_A1 != 0 { ttbr1 } else { ttbr0 };
        // The ASID is TTBR bits 63:48.
        #[allow(clippy::cast_possible_truncation)]
        let asid = (ttbr >> 48) as u16;
        self.asid = if tcr & TCR_AS != 0 { asid } else { asid & 0xFF };
        self.tbi0 = tcr & TCR_TBI0 != 0;
        self.tbi1 = tcr & TCR_TBI1 != 0;
        self.tbi_any = self.tbi0 || self.tbi1;
    }

    /// The current ASID (what TLBI ASIDE1 compares against is in Xt instead).
    /// Drops every translation.
    pub(crate) fn flush(&mut self) {
        self.tlb.flush();
        self.itlb.flush();
    }

    /// Drops the non-global translations of `asid`.
    pub(crate) fn flush_asid(&mut self, asid: u16) {
        self.tlb.flush_asid(asid);
        self.itlb.flush_asid(asid);
    }

    /// Drops the translations of page `vpn` under every ASID.
    pub(crate) fn flush_page(&mut self, vpn: u64) {
        self.tlb.flush_page(vpn);
        self.itlb.flush_page(vpn);
    }

    fn tlb_for(&self, kind: AccessKind) -> &Tlb {
        if kind == AccessKind::Execute {
            &self.itlb
        } else {
            &self.tlb
        }
    }

    pub(crate) fn asid_bits(&self, tcr: u64, raw: u64) -> u16 {
        // TLBI operands carry the ASID in bits 63:48.
        #[allow(clippy::cast_possible_truncation)]
        let asid = (raw >> 48) as u16;
        if tcr & TCR_AS != 0 { asid } else { asid & 0xFF }
    }

    /// `va` with an ignored top byte replaced by copies of bit 55, so tagged
    /// and untagged pointers share TLB entries. Instruction fetches keep the byte.
    #[inline(always)]
    fn untagged(&self, va: u64, kind: AccessKind) -> u64 {
        if !self.tbi_any {
            return va;
        }
        let upper = va & (1 << 55) != 0;
        let ignored = if upper { self.tbi1 } else { self.tbi0 };
        if !ignored || kind == AccessKind::Execute {
            va
        } else if upper {
            va | 0xFF00_0000_0000_0000
        } else {
            va & 0x00FF_FFFF_FFFF_FFFF
        }
    }
}

/// The `perm` bit an access of `kind` needs, from EL0 or EL1.
#[inline(always)]
fn needed(kind: AccessKind, el0: bool) -> u8 {
    let bit = match kind {
        AccessKind::Read => perm::EL1_READ,
        AccessKind::Write => perm::EL1_WRITE,
        AccessKind::Execute => perm::EL1_EXEC,
    };
    if el0 { bit << perm::EL0_SHIFT } else { bit }
}

impl Mmu {
    /// Translates `va` for an access of `kind` with the permissions of EL0
    /// (`el0`) or EL1. The MMU must be on (SCTLR_EL1.M = 1).
    #[inline(always)]
    pub(crate) fn translate<B: Bus>(
        &mut self,
        bus: &mut B,
        regs: impl FnOnce() -> WalkRegs,
        va: u64,
        kind: AccessKind,
        el0: bool,
    ) -> Result<Translation, Fault> {
        let vpn = self.untagged(va, kind) >> 12;
        if let Some(e) = self.tlb_for(kind).lookup(vpn, self.asid) {
            if e.perms & needed(kind, el0) == 0 {
                return Err(Fault::Permission(e.level));
            }
            return Ok(Translation {
                pa: (e.pa_page << 12) | (va & 0xFFF),
                device: e.device,
                attr: e.attr,
                sh: e.sh,
            });
        }
        self.translate_miss(bus, &regs(), va, kind, el0)
    }

    #[cold]
    fn translate_miss<B: Bus>(
        &mut self,
        bus: &mut B,
        regs: &WalkRegs,
        va: u64,
        kind: AccessKind,
        el0: bool,
    ) -> Result<Translation, Fault> {
        let vpn = self.untagged(va, kind) >> 12;
        let fill = walk(bus, regs, vpn << 12)?;
        let asid = self.asid;
        if kind == AccessKind::Execute {
            self.itlb.insert(vpn, asid, fill);
        } else {
            self.tlb.insert(vpn, asid, fill);
        }
        if fill.perms & needed(kind, el0) == 0 {
            return Err(Fault::Permission(fill.level));
        }
        Ok(Translation {
            pa: (fill.pa_page << 12) | (va & 0xFFF),
            device: fill.device,
            attr: fill.attr,
            sh: fill.sh,
        })
    }
}
