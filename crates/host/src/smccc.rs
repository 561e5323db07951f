//! The SMCCC 1.1 dispatcher: one entry point for every HVC and SMC the guest
//! makes, routing by function ID to the architecture calls, PSCI, SDEI and the
//! vendor-hypervisor service (UID, FEATURES and apf's ASYNC_PF).
//!
//! Models: the SMC32/SMC64 calling conventions (an SMC32 call sees only the low
//! 32 bits of its arguments), return codes written to x0 sign-extended (as KVM
//! does), SMCCC_VERSION 1.1, SMCCC_ARCH_FEATURES for the architecture calls, and
//! NOT_SUPPORTED for every function ID nobody implements. HVC and SMC are one
//! conduit here: the same calls answer on both.
//!
//! Leaves out: yielding (non-fast) calls, the Arm architecture workaround calls,
//! and the optional vendor-hypervisor call-count and revision queries.
//!
//! The run loop calls [`dispatch`] with the PC already past the HVC/SMC (its
//! preferred return address): SDEI COMPLETE and PSCI CPU_ON replace the PC, and
//! every other call resumes there.

use crate::apf::{ApfEngine, ApfVcpu, AtomicWord, HypercallResult};
use crate::psci::{Psci, PsciAction, PsciOutcome};
use crate::regs::GuestRegs;
use crate::sdei::{SdeiEvents, SdeiOutcome, SdeiVcpu};
use apf_abi::psci::PSCI_RET_SUCCESS;
use apf_abi::sdei::{SDEI_FIRST, SDEI_LAST};
use apf_abi::smccc::{
    APF_UID, SMCCC_64BIT, SMCCC_ARCH_FEATURES, SMCCC_OWNER_STANDARD, SMCCC_RET_NOT_SUPPORTED,
    SMCCC_RET_SUCCESS, SMCCC_VERSION, SMCCC_VERSION_1_1, VENDOR_HYP_ASYNC_PF, VENDOR_HYP_FEATURES,
    VENDOR_HYP_FUNC_ASYNC_PF, VENDOR_HYP_FUNC_FEATURES, VENDOR_HYP_UID, owner,
};

/// The ASYNC_PF function (vendor-hyp 0x30) as the dispatcher sees it: the APF
/// engine with the vCPU it serves.
pub trait AsyncPfService {
    /// Whether the VMM offers APF to this guest: decides the FEATURES bit.
    fn available(&self) -> bool;
    /// ASYNC_PF with sub-function `x1` and arguments `x2`, `x3` (already 32-bit,
    /// it is an SMC32 call). Returns x0 (an SMCCC status) and x1.
    fn call(&mut self, x1: u64, x2: u64, x3: u64) -> HypercallResult;
}

/// The APF engine of one vCPU, with that vCPU's view, as its ASYNC_PF service.
#[derive(Debug)]
pub struct ApfService<'a, W: AtomicWord, V> {
    /// The vCPU's engine.
    pub engine: &'a mut ApfEngine<W>,
    /// The vCPU as the engine sees it.
    pub vcpu: &'a mut V,
}

impl<W: AtomicWord, V: ApfVcpu> AsyncPfService for ApfService<'_, W, V> {
    fn available(&self) -> bool {
        self.engine.offered()
    }
    fn call(&mut self, x1: u64, x2: u64, x3: u64) -> HypercallResult {
        self.engine.hypercall(self.vcpu, x1, x2, x3)
    }
}

/// What the run loop must do after a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmcccExit {
    /// Results are in x0..x3: resume at the PC.
    Return,
    /// An SDEI handler completed and the registers hold the context to resume.
    /// For the APF event this is the engine's "completed" moment.
    SdeiCompleted {
        /// The event whose handler finished.
        event: u32,
        /// COMPLETE_AND_RESUME (true) or COMPLETE (false).
        resumed: bool,
    },
    /// Results are in x0, and queued instances of these SDEI events were dropped
    /// with their registration: tell whoever injected them.
    SdeiDiscarded(SdeiEvents),
    /// A PSCI call the run loop carries out (see [`PsciAction`] for x0).
    Psci(PsciAction),
}

/// The firmware one vCPU talks to.
#[derive(Debug)]
pub struct Firmware<'a, S> {
    /// The calling vCPU's index.
    pub vcpu: usize,
    /// The VM's PSCI state.
    pub psci: &'a Psci,
    /// The calling vCPU's SDEI state.
    pub sdei: &'a mut SdeiVcpu,
    /// The calling vCPU's ASYNC_PF service.
    pub async_pf: &'a mut S,
}

/// PSCI owns function numbers 0x00..=0x1F of the standard service range, SDEI
/// 0x20..=0x3F.
const PSCI_FUNCTIONS: u32 = 0x20;

fn is_smc64(function_id: u32) -> bool {
    function_id & SMCCC_64BIT != 0
}

/// Handles the call in the registers of a vCPU that executed HVC or SMC at
/// exception level `el`. Writes the results and says what else must happen.
///
/// HVC and SMC are UNDEFINED at EL0, so a call from EL0 cannot reach here from
/// a correct CPU; it is refused with NOT_SUPPORTED and changes nothing.
pub fn dispatch<S: AsyncPfService>(
    fw: &mut Firmware<'_, S>,
    el: u8,
    regs: &mut impl GuestRegs,
) -> SmcccExit {
    // The function ID is W0; the upper half of x0 is not part of it.
    let function_id = (regs.x(0) & 0xFFFF_FFFF) as u32;
    if el != 1 {
        tracing::warn!(
            function_id,
            el,
            "SMCCC call from an exception level other than EL1"
        );
        return ret(regs, SMCCC_RET_NOT_SUPPORTED);
    }
    let narrow = |v: u64| {
        if is_smc64(function_id) {
            v
        } else {
            v & 0xFFFF_FFFF
        }
    };
    let args = [narrow(regs.x(1)), narrow(regs.x(2)), narrow(regs.x(3))];

    match function_id {
        SMCCC_VERSION => ret(regs, i64::from(SMCCC_VERSION_1_1)),
        SMCCC_ARCH_FEATURES => {
            let queried = regs.x(1) & 0xFFFF_FFFF;
            let implemented =
                queried == u64::from(SMCCC_VERSION) || queried == u64::from(SMCCC_ARCH_FEATURES);
            ret(
                regs,
                if implemented {
                    SMCCC_RET_SUCCESS
                } else {
                    SMCCC_RET_NOT_SUPPORTED
                },
            )
        }
        VENDOR_HYP_UID => {
            for (n, word) in APF_UID.iter().enumerate() {
                regs.set_x(n, u64::from(*word));
            }
            SmcccExit::Return
        }
        VENDOR_HYP_FEATURES => {
            let mut bitmap: u128 = 1 << VENDOR_HYP_FUNC_FEATURES;
            if fw.async_pf.available() {
                bitmap |= 1 << VENDOR_HYP_FUNC_ASYNC_PF;
            }
            for n in 0..4 {
                regs.set_x(n, ((bitmap >> (32 * n)) & 0xFFFF_FFFF) as u64);
            }
            SmcccExit::Return
        }
        VENDOR_HYP_ASYNC_PF => {
            let result = fw.async_pf.call(args[0], args[1], args[2]);
            regs.set_x(0, result.status.cast_unsigned());
            regs.set_x(1, result.value);
            SmcccExit::Return
        }
        id if owner(id) == SMCCC_OWNER_STANDARD && id & 0xFFFF < PSCI_FUNCTIONS => {
            match fw.psci.call(fw.vcpu, id, args) {
                PsciOutcome::Return(v) => {
                    regs.set_x(0, v);
                    SmcccExit::Return
                }
                PsciOutcome::Act(action) => {
                    if matches!(action, PsciAction::StartCpu { .. }) {
                        regs.set_x(0, PSCI_RET_SUCCESS.cast_unsigned());
                    }
                    SmcccExit::Psci(action)
                }
            }
        }
        id @ SDEI_FIRST..=SDEI_LAST => match fw.sdei.call(id, regs) {
            SdeiOutcome::Return(v) => {
                regs.set_x(0, v);
                SmcccExit::Return
            }
            SdeiOutcome::Discarded { ret, events } => {
                regs.set_x(0, ret);
                SmcccExit::SdeiDiscarded(events)
            }
            SdeiOutcome::Completed { event, resumed } => {
                SmcccExit::SdeiCompleted { event, resumed }
            }
        },
        _ => ret(regs, SMCCC_RET_NOT_SUPPORTED),
    }
}

fn ret(regs: &mut impl GuestRegs, code: i64) -> SmcccExit {
    regs.set_x(0, code.cast_unsigned());
    SmcccExit::Return
}
