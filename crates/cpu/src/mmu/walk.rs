//! The stage-1 table walk of the EL1&0 regime: 4 KiB granule, up to 48-bit
//! VAs in two ranges, up to four levels, 40-bit PAs (the size the ID registers
//! report). Descriptors are read through the bus, which is physical.

use super::fault::Fault;
use super::tlb::{Fill, perm};
use crate::bus::{AccessSize, Bus, BusError};

/// The registers a walk depends on.
#[derive(Debug, Clone, Copy)]
pub(crate) struct WalkRegs {
    pub(crate) tcr: u64,
    pub(crate) ttbr0: u64,
    pub(crate) ttbr1: u64,
    pub(crate) mair: u64,
    pub(crate) wxn: bool,
}

/// The PA size apf implements (ID_AA64MMFR0_EL1.PARange = 0b0010).
pub(crate) const PA_BITS: u32 = 40;
/// Output address bits of a descriptor (47:12).
const OA_MASK: u64 = 0x0000_FFFF_FFFF_F000;

const TCR_EPD0: u64 = 1 << 7;
const TCR_EPD1: u64 = 1 << 23;
const TCR_IPS_SHIFT: u32 = 32;

/// The PA size TCR_EL1.IPS selects, capped at what is implemented.
fn output_bits(tcr: u64) -> u32 {
    let ips = match (tcr >> TCR_IPS_SHIFT) & 7 {
        0 => 32,
        1 => 36,
        2 => 40,
        3 => 42,
        4 => 44,
        5 => 48,
        _ => 52,
    };
    ips.min(PA_BITS)
}

/// Walks the tables for `va` (already stripped of an ignored top byte) and
/// returns what the TLB caches for its page. Permissions are computed here for
/// both ELs but not checked: the caller checks them against the access.
pub(crate) fn walk<B: Bus>(bus: &mut B, regs: &WalkRegs, va: u64) -> Result<Fill, Fault> {
    let upper = (va >> 55) & 1 == 1;
    let (ttbr, tsz, disabled) = if upper {
        (
            regs.ttbr1,
            (regs.tcr >> 16) & 0x3F,
            regs.tcr & TCR_EPD1 != 0,
        )
    } else {
        (regs.ttbr0, regs.tcr & 0x3F, regs.tcr & TCR_EPD0 != 0)
    };
    // Out-of-range sizes are clamped, one of the permitted behaviours.
    // The clamp keeps the value in 16..=39.
    #[allow(clippy::cast_possible_truncation)]
    let input_bits = 64 - tsz.clamp(16, 39) as u32;
    // Bits above the range must all equal bit 55 (a canonical address).
    let above = va >> input_bits;
    let expected = if upper { u64::MAX >> input_bits } else { 0 };
    if above != expected || disabled {
        return Err(Fault::Translation(0));
    }
    let pa_bits = output_bits(regs.tcr);
    // Levels needed to resolve input_bits - 12 bits, 9 per level.
    let levels = (input_bits - 12).div_ceil(9);
    let start = 4 - levels;
    let start_bits = input_bits - 12 - 9 * (3 - start);
    // The table is aligned to its size, and to 64 bytes at least.
    let table_bytes = (8u64 << start_bits).max(64);
    let mut table = ttbr & 0x0000_FFFF_FFFF_FFFE & !(table_bytes - 1);
    if table >> pa_bits != 0 {
        return Err(Fault::AddressSize(0));
    }
    // The hierarchical controls collected from table descriptors.
    let (mut no_el0, mut read_only, mut uxn, mut pxn) = (false, false, false, false);
    let mut level = start;
    loop {
        let shift = 12 + 9 * (3 - level);
        let index_bits = if level == start { start_bits } else { 9 };
        let index = (va >> shift) & ((1 << index_bits) - 1);
        let address = table + 8 * index;
        // `level` is at most 3.
        #[allow(clippy::cast_possible_truncation)]
        let lvl = level as u8;
        let desc = match bus.read(address, AccessSize::Double) {
            Ok(d) => d,
            Err(BusError::Stage2Fault) => {
                return Err(Fault::WalkStage2 {
                    level: lvl,
                    ipa: address,
                });
            }
            Err(BusError::ExternalAbort) => return Err(Fault::WalkExternal(lvl)),
        };
        if desc & 1 == 0 {
            return Err(Fault::Translation(lvl));
        }
        let is_table_or_page = desc & 2 != 0;
        if level < 3 && is_table_or_page {
            let next = desc & OA_MASK;
            if next >> pa_bits != 0 {
                return Err(Fault::AddressSize(lvl));
            }
            pxn |= desc & (1 << 59) != 0;
            uxn |= desc & (1 << 60) != 0;
            no_el0 |= desc & (1 << 61) != 0;
            read_only |= desc & (1 << 62) != 0;
            table = next;
            level += 1;
            continue;
        }
        // A block at level 0, or the reserved encoding at level 3.
        if level == 0 || (level == 3 && !is_table_or_page) {
            return Err(Fault::Translation(lvl));
        }
        let output = desc & OA_MASK & !((1u64 << shift) - 1);
        if output >> pa_bits != 0 {
            return Err(Fault::AddressSize(lvl));
        }
        if desc & (1 << 10) == 0 {
            return Err(Fault::AccessFlag(lvl));
        }
        let ap = (desc >> 6) & 3;
        let el0_access = ap & 1 != 0 && !no_el0;
        let writable = ap & 2 == 0 && !read_only;
        let el0_write = el0_access && writable;
        uxn |= desc & (1 << 54) != 0;
        pxn |= desc & (1 << 53) != 0;
        // WXN: writable means not executable. EL1 never executes what EL0 can write.
        let el0_exec = !(uxn || (regs.wxn && el0_write));
        let el1_exec = !(pxn || el0_write || (regs.wxn && writable));
        let mut el1 = perm::EL1_READ;
        if writable {
            el1 |= perm::EL1_WRITE;
        }
        if el1_exec {
            el1 |= perm::EL1_EXEC;
        }
        let mut el0 = 0;
        if el0_access {
            el0 |= perm::EL1_READ;
        }
        if el0_write {
            el0 |= perm::EL1_WRITE;
        }
        if el0_exec {
            el0 |= perm::EL1_EXEC;
        }
        let attr_index = (desc >> 2) & 7;
        // One byte of MAIR.
        #[allow(clippy::cast_possible_truncation)]
        let attr = (regs.mair >> (8 * attr_index)) as u8;
        #[allow(clippy::cast_possible_truncation)]
        let sh = ((desc >> 8) & 3) as u8;
        let pa = output | (va & ((1u64 << shift) - 1));
        // `shift` is 12, 21 or 30.
        #[allow(clippy::cast_possible_truncation)]
        return Ok(Fill {
            pa_page: pa >> 12,
            global: desc & (1 << 11) == 0,
            level: lvl,
            perms: el1 | (el0 << perm::EL0_SHIFT),
            device: attr & 0xF0 == 0,
            attr,
            sh,
            block_shift: shift as u8,
        });
    }
}
