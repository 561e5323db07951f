//! Why a stage-1 translation failed, and the fault status code each reason
//! reports.

use apf_abi::esr::fsc;

/// Why a stage-1 translation failed; the level is the lookup level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fault {
    Translation(u8),
    AddressSize(u8),
    AccessFlag(u8),
    Permission(u8),
    /// The bus answered "external abort" for a descriptor.
    WalkExternal(u8),
    /// The descriptor at `ipa` is not mapped at stage 2: an exit to the host.
    WalkStage2 {
        level: u8,
        ipa: u64,
    },
}

impl Fault {
    /// The DFSC/IFSC (and PAR_EL1.FST) of a fault reported to EL1.
    pub(crate) fn status(self) -> u32 {
        match self {
            Fault::AddressSize(l) => u32::from(l),
            Fault::Translation(l) => fsc::TRANSLATION_L0 + u32::from(l),
            Fault::AccessFlag(l) => 0x08 + u32::from(l),
            Fault::Permission(l) => 0x0C + u32::from(l),
            Fault::WalkExternal(l) | Fault::WalkStage2 { level: l, .. } => 0x14 + u32::from(l),
        }
    }
}
