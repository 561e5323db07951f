//! PSTATE: the fields this CPU implements, and their SPSR encoding.

/// SPSR/PSTATE bit positions (AArch64 SPSR format).
pub(crate) mod bits {
    pub(crate) const N: u64 = 1 << 31;
    pub(crate) const Z: u64 = 1 << 30;
    pub(crate) const C: u64 = 1 << 29;
    pub(crate) const V: u64 = 1 << 28;
    pub(crate) const NZCV: u64 = 0xF << 28;
    pub(crate) const SS: u64 = 1 << 21;
    pub(crate) const IL: u64 = 1 << 20;
    /// D, A, I, F (bits 9..6).
    pub(crate) const DAIF: u64 = 0xF << 6;
    pub(crate) const I: u64 = 1 << 7;
    /// M[4:0]: M[4] = 1 would be AArch32.
    pub(crate) const M: u64 = 0x1F;
}

/// The architectural PSTATE of an AArch64-only PE at EL0/EL1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Pstate {
    /// N, Z, C, V in bits 31..28 (SPSR positions).
    pub(crate) nzcv: u64,
    /// D, A, I, F in bits 9..6 (SPSR positions).
    pub(crate) daif: u64,
    /// Current exception level: 0 or 1.
    pub(crate) el: u8,
    /// SPSel: at EL1, use SP_EL1 (true) or SP_EL0.
    pub(crate) spsel: bool,
    /// Illegal execution state.
    pub(crate) il: bool,
    /// Software step (kept for SPSR round trips; no debug is implemented).
    pub(crate) ss: bool,
}

impl Pstate {
    /// Reset: EL1h with every exception masked.
    pub(crate) fn reset() -> Pstate {
        Pstate {
            nzcv: 0,
            daif: bits::DAIF,
            el: 1,
            spsel: true,
            il: false,
            ss: false,
        }
    }

    /// M[3:0] of this state: EL in bits 3:2, SPSel in bit 0.
    pub(crate) fn mode(&self) -> u64 {
        (u64::from(self.el) << 2) | u64::from(self.spsel)
    }

    /// SPSR encoding.
    pub(crate) fn to_spsr(self) -> u64 {
        let mut v = self.nzcv | self.daif | self.mode();
        if self.il {
            v |= bits::IL;
        }
        if self.ss {
            v |= bits::SS;
        }
        v
    }

    /// The state an SPSR value describes, or `None` if its mode is not one this
    /// PE can be in (AArch32, EL2/EL3, or EL0 with SPSel set).
    pub(crate) fn from_spsr(v: u64) -> Option<Pstate> {
        let (el, spsel) = match v & bits::M {
            0b00000 => (0, false),
            0b00100 => (1, false),
            0b00101 => (1, true),
            _ => return None,
        };
        Some(Pstate {
            nzcv: v & bits::NZCV,
            daif: v & bits::DAIF,
            el,
            spsel,
            il: v & bits::IL != 0,
            ss: v & bits::SS != 0,
        })
    }

    /// Whether the SP in use is SP_EL1 (else SP_EL0).
    #[inline]
    pub(crate) fn uses_sp_el1(&self) -> bool {
        self.el == 1 && self.spsel
    }

    /// Whether condition `cond` (4 bits) holds: a table lookup, because a
    /// match on the condition is an indirect jump that mispredicts whenever
    /// consecutive conditional instructions test different conditions.
    #[inline(always)]
    pub(crate) fn holds(&self, cond: u8) -> bool {
        let nibble = (self.nzcv >> 28) & 0xF;
        (COND_HOLDS[usize::from(cond & 0xF)] >> nibble) & 1 != 0
    }
}

/// The set of NZCV values (bit `NZCV >> 28`) condition `cond` holds for.
pub(crate) const fn cond_table(cond: u8) -> u16 {
    COND_HOLDS[(cond & 0xF) as usize]
}

/// Per condition, the set of NZCV values (bit `NZCV >> 28`) it holds for.
// Both loop counters stay below 16, and `From` cannot be called in a const.
#[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
const COND_HOLDS: [u16; 16] = {
    let mut table = [0u16; 16];
    let mut cond = 0;
    while cond < 16 {
        let mut nzcv = 0;
        while nzcv < 16 {
            if cond_holds(cond as u8, (nzcv as u64) << 28) {
                table[cond] |= 1 << nzcv;
            }
            nzcv += 1;
        }
        cond += 1;
    }
    table
};

/// The architecture's ConditionHolds for flags `f` (SPSR positions).
const fn cond_holds(cond: u8, f: u64) -> bool {
    let (n, z, c, v) = (
        f & bits::N != 0,
        f & bits::Z != 0,
        f & bits::C != 0,
        f & bits::V != 0,
    );
    let r = match cond >> 1 {
        0 => z,
        1 => c,
        2 => n,
        3 => v,
        4 => c && !z,
        5 => n == v,
        6 => n == v && !z,
        _ => true,
    };
    if cond & 1 == 1 && cond != 0xF { !r } else { r }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spsr_round_trip_and_invalid_modes() {
        let p = Pstate {
            nzcv: bits::N | bits::C,
            daif: bits::I,
            el: 1,
            spsel: false,
            il: true,
            ss: false,
        };
        assert_eq!(
            p.to_spsr(),
            (1 << 31) | (1 << 29) | (1 << 20) | (1 << 7) | 0b0100
        );
        assert_eq!(Pstate::from_spsr(p.to_spsr()), Some(p));
        for bad in [0b00001, 0b01000, 0b01001, 0b01101, 0b10000, 0b00110] {
            assert_eq!(Pstate::from_spsr(bad), None, "mode {bad:#b}");
        }
    }

    #[test]
    fn conditions() {
        let mut p = Pstate::reset();
        p.nzcv = bits::Z | bits::C;
        assert!(p.holds(0)); // EQ
        assert!(!p.holds(1)); // NE
        assert!(p.holds(2)); // CS
        assert!(!p.holds(8)); // HI needs !Z
        assert!(p.holds(9)); // LS
        assert!(p.holds(10)); // GE (N == V)
        assert!(!p.holds(12)); // GT needs !Z
        assert!(p.holds(14) && p.holds(15)); // AL and NV both hold
    }

    #[test]
    fn the_table_agrees_with_condition_holds_everywhere() {
        let mut p = Pstate::reset();
        for nzcv in 0..16u64 {
            p.nzcv = nzcv << 28;
            for cond in 0..16u8 {
                assert_eq!(
                    p.holds(cond),
                    cond_holds(cond, nzcv << 28),
                    "{cond} {nzcv:#x}"
                );
            }
        }
        // Spot checks against hand-worked values: GT with Z clear and N == V.
        p.nzcv = bits::N | bits::V;
        assert!(p.holds(12) && !p.holds(13) && p.holds(10) && !p.holds(11));
    }
}
