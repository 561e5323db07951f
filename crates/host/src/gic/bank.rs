//! A bank of 32 interrupts and its register interface: the SGIs and PPIs of one
//! redistributor, or the SPIs of the distributor.
//!
//! Each interrupt has a pending latch, an input line level, an enable, an
//! active bit, a group and a trigger mode. A level-sensitive interrupt is
//! pending while its latch is set *or* its line is high, so clearing the latch
//! (acknowledge, ICPENDR) leaves it pending while the line stays asserted; an
//! edge-triggered one latches on a rising edge and is pending until its latch is
//! cleared.

use serde::{Deserialize, Serialize};

use super::word::Word;

/// Implemented priority bits: 5, so priorities step by 8 (0x00, 0x08 .. 0xF8).
pub const PRIORITY_MASK: u8 = 0xF8;

/// The interrupt-state registers that come as one 32-bit word per bank.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BankReg {
    /// IGROUPR: 1 = group 1.
    Group,
    /// ISENABLER.
    SetEnable,
    /// ICENABLER.
    ClearEnable,
    /// ISPENDR.
    SetPending,
    /// ICPENDR.
    ClearPending,
    /// ISACTIVER.
    SetActive,
    /// ICACTIVER.
    ClearActive,
    /// ICFGR for bank bits 0..16 (`false`) or 16..32 (`true`), two bits each.
    Config { upper: bool },
}

impl BankReg {
    /// The register whose first word is at `base` in a GICD or GICR SGI frame
    /// (ICFGR is decoded by the callers: it has two words per bank).
    pub(crate) fn at(base: u64) -> Option<BankReg> {
        Some(match base {
            0x0080 => BankReg::Group,
            0x0100 => BankReg::SetEnable,
            0x0180 => BankReg::ClearEnable,
            0x0200 => BankReg::SetPending,
            0x0280 => BankReg::ClearPending,
            0x0300 => BankReg::SetActive,
            0x0380 => BankReg::ClearActive,
            _ => return None,
        })
    }
}

/// 32 interrupts. Bits 32..64 of every word are unused.
#[derive(Debug)]
pub(crate) struct Bank<W> {
    group: W,
    enabled: W,
    latch: W,
    level: W,
    active: W,
    /// 1 = edge-triggered.
    edge: W,
    /// Bits that are always edge-triggered (the SGIs of a redistributor bank).
    fixed_edge: u64,
    priority: [W; 32],
}

const LOW32: u64 = 0xFFFF_FFFF;

/// A bank of 32 interrupts as a snapshot holds it: bit n of each word is
/// interrupt n of the bank (SGI/PPI INTID n, or SPI INTID 32 + n).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IrqBankState {
    /// IGROUPR: 1 = group 1.
    pub group: u32,
    /// ISENABLER.
    pub enabled: u32,
    /// The pending latch (set by an edge, ISPENDR or an SGI).
    pub latch: u32,
    /// The input line levels (a level-sensitive interrupt is pending while its
    /// line is high).
    pub level: u32,
    /// ISACTIVER.
    pub active: u32,
    /// ICFGR decoded: 1 = edge-triggered.
    pub edge: u32,
    /// IPRIORITYR, one byte per interrupt.
    pub priority: [u8; 32],
}

/// The low 32 bits of a bank word (every bank bit lives there).
#[allow(clippy::cast_possible_truncation)]
fn low32(v: u64) -> u32 {
    (v & LOW32) as u32
}

impl<W: Word> Bank<W> {
    /// A bank at reset: everything 0 (group 0, disabled, priority 0,
    /// level-sensitive) except the `fixed_edge` bits.
    pub(crate) fn new(fixed_edge: u64) -> Self {
        Bank {
            group: W::new(0),
            enabled: W::new(0),
            latch: W::new(0),
            level: W::new(0),
            active: W::new(0),
            edge: W::new(fixed_edge),
            fixed_edge,
            priority: std::array::from_fn(|_| W::new(0)),
        }
    }

    /// Pending state: latched, or level-sensitive with the line high.
    pub(crate) fn save(&self) -> IrqBankState {
        IrqBankState {
            group: low32(self.group.get()),
            enabled: low32(self.enabled.get()),
            latch: low32(self.latch.get()),
            level: low32(self.level.get()),
            active: low32(self.active.get()),
            edge: low32(self.edge.get()),
            priority: std::array::from_fn(|k| self.priority(u32::try_from(k).unwrap_or(0))),
        }
    }

    /// Installs `s`; trigger modes fixed by the architecture (SGIs are edge)
    /// and unimplemented priority bits stay as they must be.
    pub(crate) fn restore(&self, s: &IrqBankState) {
        self.group.set(u64::from(s.group));
        self.enabled.set(u64::from(s.enabled));
        self.latch.set(u64::from(s.latch));
        self.level.set(u64::from(s.level));
        self.active.set(u64::from(s.active));
        self.edge.set(u64::from(s.edge) | self.fixed_edge);
        for (k, &p) in (0u32..).zip(&s.priority) {
            self.set_priority(k, p);
        }
    }

    pub(crate) fn pending(&self) -> u64 {
        (self.latch.get() | (self.level.get() & !self.edge.get())) & LOW32
    }

    /// Interrupts that may be forwarded to a CPU interface: pending, enabled,
    /// group 1 and not active (an active-and-pending interrupt waits for its
    /// deactivation).
    pub(crate) fn signalable(&self) -> u64 {
        self.pending() & self.enabled.get() & self.group.get() & !self.active.get()
    }

    /// The priority of bank bit `bit` (< 32).
    pub(crate) fn priority(&self, bit: u32) -> u8 {
        self.priority[bit as usize % 32].get().to_le_bytes()[0]
    }

    /// Sets the priority of bank bit `bit`; unimplemented low bits read as 0.
    pub(crate) fn set_priority(&self, bit: u32, priority: u8) {
        self.priority[bit as usize % 32].set(u64::from(priority & PRIORITY_MASK));
    }

    /// Drives the input line of bank bit `bit`; a rising edge latches an
    /// edge-triggered interrupt.
    pub(crate) fn set_level(&self, bit: u32, high: bool) {
        let mask = 1u64 << bit;
        if high {
            let rising = self.level.or(mask) & mask == 0;
            if rising && self.edge.get() & mask != 0 {
                self.latch.or(mask);
            }
        } else {
            self.level.and(!mask);
        }
    }

    /// Whether the input line of bank bit `bit` is high.
    pub(crate) fn level(&self, bit: u32) -> bool {
        self.level.get() & (1 << bit) != 0
    }

    /// Latches bank bit `bit` pending (an SGI arriving).
    pub(crate) fn set_pending(&self, bit: u32) {
        self.latch.or(1 << bit);
    }

    /// Whether bank bit `bit` is group 1.
    pub(crate) fn is_group1(&self, bit: u32) -> bool {
        self.group.get() & (1 << bit) != 0
    }

    /// Acknowledge: makes bank bit `bit` active and clears its latch. Returns
    /// false (and changes nothing) if it was already active: another CPU
    /// interface acknowledged it first.
    pub(crate) fn activate(&self, bit: u32) -> bool {
        let mask = 1u64 << bit;
        if self.active.or(mask) & mask != 0 {
            return false;
        }
        self.latch.and(!mask);
        true
    }

    /// Deactivates bank bit `bit`.
    pub(crate) fn deactivate(&self, bit: u32) {
        self.active.and(!(1u64 << bit));
    }

    /// Reads a bank register.
    pub(crate) fn read(&self, reg: BankReg) -> u64 {
        match reg {
            BankReg::Group => self.group.get(),
            BankReg::SetEnable | BankReg::ClearEnable => self.enabled.get(),
            BankReg::SetPending | BankReg::ClearPending => self.pending(),
            BankReg::SetActive | BankReg::ClearActive => self.active.get(),
            BankReg::Config { upper } => {
                let edge = self.edge.get() >> if upper { 16 } else { 0 };
                (0..16)
                    .filter(|k| edge & (1 << k) != 0)
                    .fold(0, |acc, k| acc | 2 << (2 * k))
            }
        }
    }

    /// Writes a bank register (`value` is the 32-bit register value).
    pub(crate) fn write(&self, reg: BankReg, value: u64) {
        let v = value & LOW32;
        match reg {
            BankReg::Group => self.group.set(v),
            BankReg::SetEnable => {
                self.enabled.or(v);
            }
            BankReg::ClearEnable => {
                self.enabled.and(!v);
            }
            BankReg::SetPending => {
                self.latch.or(v);
            }
            BankReg::ClearPending => {
                self.latch.and(!v);
            }
            BankReg::SetActive => {
                self.active.or(v);
            }
            BankReg::ClearActive => {
                self.active.and(!v);
            }
            BankReg::Config { upper } => {
                let shift = if upper { 16 } else { 0 };
                let edge = (0..16)
                    .filter(|k| v & (2 << (2 * k)) != 0)
                    .fold(0u64, |acc, k| acc | 1 << k)
                    << shift;
                let half = 0xFFFF << shift;
                // Fixed-edge bits (SGIs) ignore the write.
                let writable = half & !self.fixed_edge;
                self.edge.or(edge & writable);
                self.edge.and(!(writable & !edge));
            }
        }
    }

    /// Reads the 4 priority bytes starting at bank bit `first` (a multiple of 4).
    pub(crate) fn priority_word(&self, first: u32) -> u64 {
        (0..4).fold(0, |acc, k| {
            acc | u64::from(self.priority(first + k)) << (8 * k)
        })
    }

    /// Writes the 4 priority bytes starting at bank bit `first`.
    pub(crate) fn set_priority_word(&self, first: u32, value: u64) {
        for k in 0..4 {
            self.set_priority(first + k, value.to_le_bytes()[k as usize]);
        }
    }
}

/// Bank bits that are set in `mask`, lowest first.
pub(crate) fn bits(mut mask: u64) -> impl Iterator<Item = u32> {
    std::iter::from_fn(move || {
        if mask == 0 {
            return None;
        }
        let bit = mask.trailing_zeros();
        mask &= mask - 1;
        Some(bit)
    })
}
