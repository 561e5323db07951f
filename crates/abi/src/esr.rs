//! Exception syndromes (ESR_ELx) of the exceptions apf raises or reports.
//!
//! Layout (Arm ARM D17.2.37): EC in bits 31:26, IL in bit 25, ISS in 24:0. For data
//! aborts the ISS holds ISV (24), SAS (23:22), SSE (21), SRT (20:16), SF (15),
//! AR (14), FnV (10), EA (9), CM (8), S1PTW (7), WnR (6) and DFSC (5:0); the
//! syndrome fields ISV..AR are valid only when ISV is set.

/// Exception classes.
pub mod ec {
    /// Unknown reason: UNDEFINED instructions.
    pub const UNKNOWN: u32 = 0x00;
    /// Trapped WFI or WFE.
    pub const WFX: u32 = 0x01;
    /// Access to SIMD/FP trapped by CPACR_EL1.FPEN.
    pub const FP_ASIMD: u32 = 0x07;
    /// Illegal execution state.
    pub const ILLEGAL_STATE: u32 = 0x0E;
    /// SVC from AArch64.
    pub const SVC64: u32 = 0x15;
    /// HVC from AArch64.
    pub const HVC64: u32 = 0x16;
    /// SMC from AArch64.
    pub const SMC64: u32 = 0x17;
    /// Trapped MSR, MRS or system instruction.
    pub const SYSREG: u32 = 0x18;
    /// Instruction abort from a lower exception level.
    pub const IABT_LOWER: u32 = 0x20;
    /// Instruction abort taken without a change of exception level.
    pub const IABT_CURRENT: u32 = 0x21;
    /// PC alignment fault.
    pub const PC_ALIGNMENT: u32 = 0x22;
    /// Data abort from a lower exception level.
    pub const DABT_LOWER: u32 = 0x24;
    /// Data abort taken without a change of exception level.
    pub const DABT_CURRENT: u32 = 0x25;
    /// SP alignment fault.
    pub const SP_ALIGNMENT: u32 = 0x26;
    /// SError interrupt.
    pub const SERROR: u32 = 0x2F;
    /// BRK instruction from AArch64.
    pub const BRK64: u32 = 0x3C;
}

/// Fault status codes (DFSC/IFSC, 6 bits).
pub mod fsc {
    /// Translation fault at level 0; levels 1..3 follow (0x05..0x07).
    pub const TRANSLATION_L0: u32 = 0x04;
    /// Translation fault, level 1.
    pub const TRANSLATION_L1: u32 = 0x05;
    /// Translation fault, level 2.
    pub const TRANSLATION_L2: u32 = 0x06;
    /// Translation fault, level 3: a missing 4 KiB stage-2 page.
    pub const TRANSLATION_L3: u32 = 0x07;
    /// Access flag fault, level 3.
    pub const ACCESS_FLAG_L3: u32 = 0x0B;
    /// Permission fault, level 3: a write to a write-protected page.
    pub const PERMISSION_L3: u32 = 0x0F;
    /// Synchronous external abort, not on a table walk: a page that could not be read.
    pub const SYNC_EXTERNAL: u32 = 0x10;
    /// Alignment fault.
    pub const ALIGNMENT: u32 = 0x21;
}

/// Shift of the EC field.
pub const ESR_EC_SHIFT: u32 = 26;
/// IL: the trapped instruction was 32 bits (always, in AArch64).
pub const ESR_IL: u64 = 1 << 25;
/// Mask of the ISS field.
pub const ESR_ISS_MASK: u64 = (1 << 25) - 1;
/// ISV: the syndrome fields SAS..AR are valid.
pub const ISS_ISV: u64 = 1 << 24;
/// Shift of SAS (access size, log2 bytes).
pub const ISS_SAS_SHIFT: u32 = 22;
/// SSE: the load sign-extends.
pub const ISS_SSE: u64 = 1 << 21;
/// Shift of SRT (the transfer register).
pub const ISS_SRT_SHIFT: u32 = 16;
/// SF: the transfer register is 64 bits wide.
pub const ISS_SF: u64 = 1 << 15;
/// AR: acquire/release semantics.
pub const ISS_AR: u64 = 1 << 14;
/// FnV: FAR is not valid.
pub const ISS_FNV: u64 = 1 << 10;
/// EA: external abort type.
pub const ISS_EA: u64 = 1 << 9;
/// CM: cache maintenance.
pub const ISS_CM: u64 = 1 << 8;
/// S1PTW: fault on a stage-1 translation table walk.
pub const ISS_S1PTW: u64 = 1 << 7;
/// WnR: the access was a write.
pub const ISS_WNR: u64 = 1 << 6;
/// Mask of DFSC/IFSC.
pub const ISS_FSC_MASK: u64 = 0x3F;

/// A raw syndrome value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Esr(pub u64);

impl Esr {
    /// Builds an ESR from its class and ISS, with IL set (every A64 instruction is 32 bits).
    pub const fn new(ec: u32, iss: u64) -> Esr {
        Esr(((ec as u64) << ESR_EC_SHIFT) | ESR_IL | (iss & ESR_ISS_MASK))
    }

    /// Builds an ESR with IL clear: required for exceptions not caused by an
    /// instruction (SError) and for EC 0 (unknown).
    pub const fn new_il0(ec: u32, iss: u64) -> Esr {
        Esr(((ec as u64) << ESR_EC_SHIFT) | (iss & ESR_ISS_MASK))
    }

    /// SVC #imm16.
    pub const fn svc(imm16: u16) -> Esr {
        Esr::new(ec::SVC64, imm16 as u64)
    }

    /// HVC #imm16.
    pub const fn hvc(imm16: u16) -> Esr {
        Esr::new(ec::HVC64, imm16 as u64)
    }

    /// SMC #imm16.
    pub const fn smc(imm16: u16) -> Esr {
        Esr::new(ec::SMC64, imm16 as u64)
    }

    /// An UNDEFINED instruction: EC 0 with IL set, ISS 0.
    pub const fn undefined() -> Esr {
        Esr::new(ec::UNKNOWN, 0)
    }

    /// Exception class.
    pub const fn ec(self) -> u32 {
        ((self.0 >> ESR_EC_SHIFT) & 0x3F) as u32
    }

    /// Instruction length bit.
    pub const fn il(self) -> bool {
        self.0 & ESR_IL != 0
    }

    /// Instruction-specific syndrome.
    pub const fn iss(self) -> u64 {
        self.0 & ESR_ISS_MASK
    }

    /// Whether this is a data abort (either exception level).
    pub const fn is_data_abort(self) -> bool {
        matches!(self.ec(), ec::DABT_LOWER | ec::DABT_CURRENT)
    }

    /// Whether this is an instruction abort (either exception level).
    pub const fn is_instruction_abort(self) -> bool {
        matches!(self.ec(), ec::IABT_LOWER | ec::IABT_CURRENT)
    }

    /// Whether the abort that produced this syndrome was a write. Instruction aborts
    /// are reads; a stage-1 table walk counts as a write, as KVM treats it.
    pub const fn is_write_abort(self) -> bool {
        if self.is_instruction_abort() {
            return false;
        }
        self.0 & (ISS_WNR | ISS_S1PTW) != 0
    }
}

/// Access size of a load or store, as SAS encodes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AccessSize {
    /// 1 byte.
    Byte = 0,
    /// 2 bytes.
    Half = 1,
    /// 4 bytes.
    Word = 2,
    /// 8 bytes.
    Double = 3,
}

impl AccessSize {
    /// The size in bytes.
    pub const fn bytes(self) -> u64 {
        1 << (self as u64)
    }

    /// The size for `bytes`, if it is 1, 2, 4 or 8.
    pub const fn from_bytes(bytes: u64) -> Option<AccessSize> {
        match bytes {
            1 => Some(AccessSize::Byte),
            2 => Some(AccessSize::Half),
            4 => Some(AccessSize::Word),
            8 => Some(AccessSize::Double),
            _ => None,
        }
    }

    const fn from_sas(sas: u64) -> AccessSize {
        match sas & 3 {
            0 => AccessSize::Byte,
            1 => AccessSize::Half,
            2 => AccessSize::Word,
            _ => AccessSize::Double,
        }
    }
}

/// The syndrome of a single-register load or store (what ISV = 1 describes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AccessSyndrome {
    /// Access size.
    pub size: AccessSize,
    /// The load sign-extends.
    pub sign_extend: bool,
    /// Transfer register (31 = XZR/WZR).
    pub srt: u8,
    /// The register is 64 bits wide.
    pub sixty_four: bool,
    /// Acquire/release.
    pub acquire_release: bool,
}

/// A decoded data abort syndrome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DataAbort {
    /// Valid only for single-register loads and stores without writeback; pair,
    /// exclusive-pair, atomic and writeback forms report ISV = 0.
    pub syndrome: Option<AccessSyndrome>,
    /// The access was a write.
    pub write: bool,
    /// Fault on a stage-1 translation table walk.
    pub s1ptw: bool,
    /// Cache maintenance.
    pub cache_maintenance: bool,
    /// External abort type.
    pub external: bool,
    /// FAR is not valid.
    pub far_not_valid: bool,
    /// Data fault status code.
    pub dfsc: u32,
}

impl DataAbort {
    /// Encodes the abort with exception class `ec` ([`ec::DABT_LOWER`] for a
    /// stage-2 abort seen at EL2, [`ec::DABT_CURRENT`] or `DABT_LOWER` at EL1).
    pub const fn encode(&self, ec: u32) -> Esr {
        let mut iss = (self.dfsc as u64) & ISS_FSC_MASK;
        if let Some(s) = self.syndrome {
            iss |= ISS_ISV
                | ((s.size as u64) << ISS_SAS_SHIFT)
                | (((s.srt & 31) as u64) << ISS_SRT_SHIFT);
            if s.sign_extend {
                iss |= ISS_SSE;
            }
            if s.sixty_four {
                iss |= ISS_SF;
            }
            if s.acquire_release {
                iss |= ISS_AR;
            }
        }
        if self.write {
            iss |= ISS_WNR;
        }
        if self.s1ptw {
            iss |= ISS_S1PTW;
        }
        if self.cache_maintenance {
            iss |= ISS_CM;
        }
        if self.external {
            iss |= ISS_EA;
        }
        if self.far_not_valid {
            iss |= ISS_FNV;
        }
        Esr::new(ec, iss)
    }

    /// Decodes a data abort syndrome; `None` if `esr` is not a data abort.
    pub const fn decode(esr: Esr) -> Option<DataAbort> {
        if !esr.is_data_abort() {
            return None;
        }
        let iss = esr.iss();
        let syndrome = if iss & ISS_ISV != 0 {
            Some(AccessSyndrome {
                size: AccessSize::from_sas(iss >> ISS_SAS_SHIFT),
                sign_extend: iss & ISS_SSE != 0,
                srt: ((iss >> ISS_SRT_SHIFT) & 31) as u8,
                sixty_four: iss & ISS_SF != 0,
                acquire_release: iss & ISS_AR != 0,
            })
        } else {
            None
        };
        Some(DataAbort {
            syndrome,
            write: iss & ISS_WNR != 0,
            s1ptw: iss & ISS_S1PTW != 0,
            cache_maintenance: iss & ISS_CM != 0,
            external: iss & ISS_EA != 0,
            far_not_valid: iss & ISS_FNV != 0,
            dfsc: (iss & ISS_FSC_MASK) as u32,
        })
    }
}

/// A decoded instruction abort syndrome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct InstructionAbort {
    /// Fault on a stage-1 translation table walk.
    pub s1ptw: bool,
    /// External abort type.
    pub external: bool,
    /// FAR is not valid.
    pub far_not_valid: bool,
    /// Instruction fault status code.
    pub ifsc: u32,
}

impl InstructionAbort {
    /// Encodes the abort with exception class `ec` ([`ec::IABT_LOWER`] or `IABT_CURRENT`).
    pub const fn encode(&self, ec: u32) -> Esr {
        let mut iss = (self.ifsc as u64) & ISS_FSC_MASK;
        if self.s1ptw {
            iss |= ISS_S1PTW;
        }
        if self.external {
            iss |= ISS_EA;
        }
        if self.far_not_valid {
            iss |= ISS_FNV;
        }
        Esr::new(ec, iss)
    }

    /// Decodes an instruction abort syndrome; `None` if `esr` is not one.
    pub const fn decode(esr: Esr) -> Option<InstructionAbort> {
        if !esr.is_instruction_abort() {
            return None;
        }
        let iss = esr.iss();
        Some(InstructionAbort {
            s1ptw: iss & ISS_S1PTW != 0,
            external: iss & ISS_EA != 0,
            far_not_valid: iss & ISS_FNV != 0,
            ifsc: (iss & ISS_FSC_MASK) as u32,
        })
    }
}

/// HPFAR_EL2 for a faulting IPA: FIPA (IPA bits 51:12) in bits 43:4.
pub const fn hpfar_from_ipa(ipa: u64) -> u64 {
    ((ipa >> 12) << 4) & 0x0000_0FFF_FFFF_FFF0
}

/// The IPA page a HPFAR_EL2 value names.
pub const fn ipa_from_hpfar(hpfar: u64) -> u64 {
    ((hpfar & 0x0000_0FFF_FFFF_FFF0) >> 4) << 12
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn word_load_translation_fault_matches_hardware() {
        // aarch64-notes: a word load from EL0 on a missing 2 MiB block, seen at EL2,
        // is 0x93800006; for a 4 KiB page the DFSC is level 3 (0x93800007).
        let abort = DataAbort {
            syndrome: Some(AccessSyndrome {
                size: AccessSize::Word,
                sign_extend: false,
                srt: 0,
                sixty_four: false,
                acquire_release: false,
            }),
            write: false,
            s1ptw: false,
            cache_maintenance: false,
            external: false,
            far_not_valid: false,
            dfsc: fsc::TRANSLATION_L2,
        };
        assert_eq!(abort.encode(ec::DABT_LOWER), Esr(0x9380_0006));
        let l3 = DataAbort {
            dfsc: fsc::TRANSLATION_L3,
            ..abort
        };
        assert_eq!(l3.encode(ec::DABT_LOWER), Esr(0x9380_0007));
        assert!(!Esr(0x9380_0007).is_write_abort());
    }

    #[test]
    fn call_syndromes() {
        assert_eq!(Esr::svc(0x1234).0, 0x5600_1234);
        assert_eq!(Esr::hvc(0).0, 0x5A00_0000);
        assert_eq!(Esr::smc(1).0, 0x5E00_0001);
        assert_eq!(Esr::undefined().0, 0x0200_0000);
    }

    #[test]
    fn hpfar_roundtrip() {
        assert_eq!(hpfar_from_ipa(0x4012_3456), 0x40_1230);
        assert_eq!(ipa_from_hpfar(0x40_1230), 0x4012_3000);
    }

    fn any_data_abort() -> impl Strategy<Value = DataAbort> {
        (
            proptest::option::of((0u8..4, any::<bool>(), 0u8..32, any::<bool>(), any::<bool>())),
            any::<[bool; 5]>(),
            0u32..64,
        )
            .prop_map(|(syn, flags, dfsc)| DataAbort {
                syndrome: syn.map(|(size, sse, srt, sf, ar)| AccessSyndrome {
                    size: AccessSize::from_sas(u64::from(size)),
                    sign_extend: sse,
                    srt,
                    sixty_four: sf,
                    acquire_release: ar,
                }),
                write: flags[0],
                s1ptw: flags[1],
                cache_maintenance: flags[2],
                external: flags[3],
                far_not_valid: flags[4],
                dfsc,
            })
    }

    proptest! {
        #[test]
        fn data_abort_roundtrip(abort in any_data_abort(), lower in any::<bool>()) {
            let class = if lower { ec::DABT_LOWER } else { ec::DABT_CURRENT };
            let esr = abort.encode(class);
            prop_assert_eq!(esr.ec(), class);
            prop_assert!(esr.il());
            prop_assert_eq!(DataAbort::decode(esr), Some(abort));
            prop_assert_eq!(InstructionAbort::decode(esr), None);
        }

        #[test]
        fn instruction_abort_roundtrip(flags in any::<[bool; 3]>(), ifsc in 0u32..64) {
            let abort = InstructionAbort { s1ptw: flags[0], external: flags[1], far_not_valid: flags[2], ifsc };
            let esr = abort.encode(ec::IABT_LOWER);
            prop_assert_eq!(InstructionAbort::decode(esr), Some(abort));
            prop_assert!(!esr.is_write_abort());
            prop_assert_eq!(DataAbort::decode(esr), None);
        }
    }
}
