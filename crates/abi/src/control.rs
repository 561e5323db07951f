//! The ENABLE control word: `GPA[63:6] | SEPARATE_READY | SEND_ALWAYS | ENABLED`.

use crate::shared::SHARED_BLOCK_ALIGN;

/// Bit 0: APF is enabled on this vCPU.
pub const CONTROL_ENABLED: u64 = 1 << 0;
/// Bit 1: also signal faults taken at EL1 (off by default, as in the series).
pub const CONTROL_SEND_ALWAYS: u64 = 1 << 1;
/// Bit 2 (ABI 1.1): deliver page-ready on the separate ready channel.
pub const CONTROL_SEPARATE_READY: u64 = 1 << 2;
/// Bits that carry flags; the rest of the low 6 bits are reserved.
pub const CONTROL_FLAGS_MASK: u64 = CONTROL_ENABLED | CONTROL_SEND_ALWAYS | CONTROL_SEPARATE_READY;
/// Reserved bits 5:3: must be zero.
pub const CONTROL_RESERVED_MASK: u64 = (SHARED_BLOCK_ALIGN - 1) & !CONTROL_FLAGS_MASK;
/// Bits 63:6: the shared block's guest-physical address.
pub const CONTROL_GPA_MASK: u64 = !(SHARED_BLOCK_ALIGN - 1);

/// A decoded, validated control word.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ControlWord {
    /// Guest-physical address of the shared block (64-byte aligned).
    pub gpa: u64,
    /// [`CONTROL_ENABLED`].
    pub enabled: bool,
    /// [`CONTROL_SEND_ALWAYS`].
    pub send_always: bool,
    /// [`CONTROL_SEPARATE_READY`].
    pub separate_ready: bool,
}

/// Why a raw control word was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ControlWordError {
    /// One of the reserved bits 5:3 is set; carries the raw word.
    ReservedBits(u64),
}

impl core::fmt::Display for ControlWordError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            ControlWordError::ReservedBits(raw) => write!(
                f,
                "control word {raw:#x} sets reserved bits {:#x}",
                raw & CONTROL_RESERVED_MASK
            ),
        }
    }
}

impl ControlWord {
    /// The word that disables APF.
    pub const DISABLED: ControlWord = ControlWord {
        gpa: 0,
        enabled: false,
        send_always: false,
        separate_ready: false,
    };

    /// Decodes a raw word, refusing reserved bits. The GPA is only checked for
    /// alignment here (by construction); whether it lies in guest RAM is the host's
    /// question.
    pub const fn decode(raw: u64) -> Result<ControlWord, ControlWordError> {
        if raw & CONTROL_RESERVED_MASK != 0 {
            return Err(ControlWordError::ReservedBits(raw));
        }
        Ok(ControlWord {
            gpa: raw & CONTROL_GPA_MASK,
            enabled: raw & CONTROL_ENABLED != 0,
            send_always: raw & CONTROL_SEND_ALWAYS != 0,
            separate_ready: raw & CONTROL_SEPARATE_READY != 0,
        })
    }

    /// Joins the two 32-bit halves an SMC32 ENABLE call passes in x2 (low) and x3
    /// (high). Bits above 31 of either register are ignored, as SMC32 requires.
    pub const fn from_halves(low: u64, high: u64) -> u64 {
        (low & 0xFFFF_FFFF) | ((high & 0xFFFF_FFFF) << 32)
    }

    /// Encodes the word. A GPA that is not 64-byte aligned has its low bits dropped.
    pub const fn encode(self) -> u64 {
        (self.gpa & CONTROL_GPA_MASK)
            | if self.enabled { CONTROL_ENABLED } else { 0 }
            | if self.send_always {
                CONTROL_SEND_ALWAYS
            } else {
                0
            }
            | if self.separate_ready {
                CONTROL_SEPARATE_READY
            } else {
                0
            }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn reserved_bits_are_refused() {
        for bit in 3..6 {
            let raw = 0x4000_0040 | CONTROL_ENABLED | (1 << bit);
            assert_eq!(
                ControlWord::decode(raw),
                Err(ControlWordError::ReservedBits(raw))
            );
        }
    }

    #[test]
    fn halves_join() {
        assert_eq!(
            ControlWord::from_halves(0xDEAD_BEEF_4000_0041, 0x1_0000_0002),
            0x2_4000_0041
        );
    }

    proptest! {
        #[test]
        fn decode_encode_roundtrip(raw in any::<u64>()) {
            match ControlWord::decode(raw) {
                Ok(word) => prop_assert_eq!(word.encode(), raw),
                Err(_) => prop_assert!(raw & CONTROL_RESERVED_MASK != 0),
            }
        }
    }
}
