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
//! A backend calls [`dispatch`] for every HVC or SMC, with the PC already past
//! the instruction (its preferred return address): SDEI COMPLETE and PSCI
//! CPU_ON replace the PC, and every other call resumes there. ASYNC_PF goes to
//! the calling vCPU's APF engine here like any other call, and so does the
//! engine's part of SDEI (a not-present dropped by UNREGISTER).

use crate::apf::{ApfEngine, ApfVcpu, AtomicWord};
use crate::psci::{Psci, PsciAction, PsciOutcome};
use crate::regs::GuestRegs;
use crate::sdei::{SdeiOutcome, SdeiVcpu};
use apf_abi::psci::PSCI_RET_SUCCESS;
use apf_abi::sdei::{SDEI_FIRST, SDEI_LAST};
use apf_abi::smccc::{
    APF_UID, SMCCC_64BIT, SMCCC_ARCH_FEATURES, SMCCC_OWNER_STANDARD, SMCCC_RET_NOT_SUPPORTED,
    SMCCC_RET_SUCCESS, SMCCC_VERSION, SMCCC_VERSION_1_1, VENDOR_HYP_ASYNC_PF, VENDOR_HYP_FEATURES,
    VENDOR_HYP_FUNC_ASYNC_PF, VENDOR_HYP_FUNC_FEATURES, VENDOR_HYP_UID, owner,
};

/// The calling vCPU as the firmware sees it: what the APF engine sees
/// ([`ApfVcpu`]), plus the registers and the SDEI state the calls act on. One
/// object, so a backend builds it once and the dispatcher and the engine
/// borrow its parts in turn.
pub trait FirmwareVcpu: ApfVcpu {
    /// The registers.
    type Regs: GuestRegs;
    /// The registers and the SDEI state, borrowed apart (an SDEI call needs both).
    fn regs_and_sdei(&mut self) -> (&mut Self::Regs, &mut SdeiVcpu);
}

/// What the backend must do after a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmcccExit {
    /// The registers hold the results (or, after an SDEI COMPLETE, the context
    /// to resume): resume at the PC.
    Return,
    /// A PSCI call the backend carries out (see [`PsciAction`] for x0).
    Psci(PsciAction),
}

/// The firmware one vCPU talks to, and that vCPU.
#[derive(Debug)]
pub struct Firmware<'a, W: AtomicWord, V> {
    /// The calling vCPU's index.
    pub index: usize,
    /// The VM's PSCI state.
    pub psci: &'a Psci,
    /// The calling vCPU's APF engine (ASYNC_PF, and FEATURES advertises it when
    /// offered).
    pub engine: &'a mut ApfEngine<W>,
    /// The calling vCPU.
    pub vcpu: &'a mut V,
}

/// PSCI owns function numbers 0x00..=0x1F of the standard service range, SDEI
/// 0x20..=0x3F.
const PSCI_FUNCTIONS: u32 = 0x20;

fn is_smc64(function_id: u32) -> bool {
    function_id & SMCCC_64BIT != 0
}

/// Handles the call in the registers of a vCPU that executed HVC or SMC with
/// immediate `imm`. Writes the results and says what else must happen.
///
/// HVC and SMC are UNDEFINED at EL0, so a call from EL0 cannot reach here from
/// a correct CPU; it is refused with NOT_SUPPORTED and changes nothing. So is
/// an immediate other than 0, which SMCCC does not use.
pub fn dispatch<W: AtomicWord, V: FirmwareVcpu>(
    fw: &mut Firmware<'_, W, V>,
    imm: u16,
) -> SmcccExit {
    let (regs, _) = fw.vcpu.regs_and_sdei();
    // The function ID is W0; the upper half of x0 is not part of it.
    let function_id = (regs.x(0) & 0xFFFF_FFFF) as u32;
    let el = regs.el();
    if imm != 0 {
        return ret(regs, SMCCC_RET_NOT_SUPPORTED);
    }
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
            if fw.engine.offered() {
                bitmap |= 1 << VENDOR_HYP_FUNC_ASYNC_PF;
            }
            for n in 0..4 {
                regs.set_x(n, ((bitmap >> (32 * n)) & 0xFFFF_FFFF) as u64);
            }
            SmcccExit::Return
        }
        VENDOR_HYP_ASYNC_PF => {
            let result = fw.engine.hypercall(fw.vcpu, args[0], args[1], args[2]);
            let (regs, _) = fw.vcpu.regs_and_sdei();
            regs.set_x(0, result.status.cast_unsigned());
            regs.set_x(1, result.value);
            SmcccExit::Return
        }
        id if owner(id) == SMCCC_OWNER_STANDARD && id & 0xFFFF < PSCI_FUNCTIONS => {
            match fw.psci.call(fw.index, id, args) {
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
        id @ SDEI_FIRST..=SDEI_LAST => {
            let (regs, sdei) = fw.vcpu.regs_and_sdei();
            match sdei.call(id, regs) {
                SdeiOutcome::Return(v) => regs.set_x(0, v),
                SdeiOutcome::Discarded { ret, events } => {
                    regs.set_x(0, ret);
                    if events.contains(fw.engine.sdei_event()) {
                        fw.engine.on_not_present_discarded(fw.vcpu);
                    }
                }
                // The engine needs nothing of a completion: it learnt that its
                // not-present was consumed at delivery, and a handler still
                // running is something it asks the vCPU about at the next fault.
                SdeiOutcome::Completed { .. } => {}
            }
            SmcccExit::Return
        }
        _ => ret(regs, SMCCC_RET_NOT_SUPPORTED),
    }
}

fn ret(regs: &mut impl GuestRegs, code: i64) -> SmcccExit {
    regs.set_x(0, code.cast_unsigned());
    SmcccExit::Return
}

/// Guest entry, the other moment the firmware acts: delivers a queued SDEI
/// event if the vCPU can take one, and tells the engine when it is its
/// not-present (from then on the guest owns it, and it can no longer be
/// withdrawn). Returns the event delivered.
pub fn deliver_sdei<W: AtomicWord, V: FirmwareVcpu>(
    engine: &mut ApfEngine<W>,
    vcpu: &mut V,
) -> Option<u32> {
    let (regs, sdei) = vcpu.regs_and_sdei();
    let event = sdei.deliver(regs)?;
    if event == engine.sdei_event() {
        engine.on_not_present_delivered();
    }
    Some(event)
}
