//! Exception entry to EL1 and exception return, as the Arm ARM specifies them
//! (D1.10, "Exception entry"; D1.11 "Exception return").

use apf_abi::esr::Esr;

/// An exception taken to EL1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exception {
    /// A synchronous exception with syndrome `esr`. ELR_EL1 gets the current PC
    /// (the preferred return address); FAR_EL1 gets `far` when there is one.
    Synchronous {
        /// ESR_EL1 value.
        esr: Esr,
        /// FAR_EL1 value (aborts, PC alignment).
        far: Option<u64>,
    },
    /// An IRQ: ELR_EL1 gets the current PC.
    Irq,
    /// An FIQ: ELR_EL1 gets the current PC.
    Fiq,
    /// An SError interrupt with syndrome `esr`.
    SError {
        /// ESR_EL1 value.
        esr: Esr,
    },
}

impl Exception {
    pub(crate) fn vector_offset(self) -> u64 {
        match self {
            Exception::Synchronous { .. } => 0x000,
            Exception::Irq => 0x080,
            Exception::Fiq => 0x100,
            Exception::SError { .. } => 0x180,
        }
    }
}

/// The syndrome data of a faulting data access, as a single-register access
/// describes it (`None` for pairs, writeback forms, exclusives and atomics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct AccessInfo {
    pub(crate) syndrome: Option<apf_abi::esr::AccessSyndrome>,
    pub(crate) write: bool,
    /// LDTR/STTR: checked with EL0 permissions even at EL1.
    pub(crate) unprivileged: bool,
}
