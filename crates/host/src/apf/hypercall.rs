//! The guest's ASYNC_PF hypercall (vendor-hyp function 0x30, SMC32).

use super::completion::AtomicWord;
use super::engine::{ApfEngine, EnableError};
use super::vcpu::ApfVcpu;
use apf_abi::ASYNC_PF_PER_VCPU;
use apf_abi::control::ControlWord;
use apf_abi::smccc::{
    ASYNC_PF_FUNC_ENABLE, ASYNC_PF_FUNC_IRQ, ASYNC_PF_FUNC_IRQ_ACK, ASYNC_PF_FUNC_SDEI,
    ASYNC_PF_FUNC_SLOTS, ASYNC_PF_FUNC_VERSION, SMCCC_RET_INVALID_PARAMETER,
    SMCCC_RET_NOT_REQUIRED, SMCCC_RET_NOT_SUPPORTED, SMCCC_RET_SUCCESS,
};

/// What the hypercall returns: x0 (an SMCCC status, sign-extended) and x1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HypercallResult {
    /// SMCCC status.
    pub status: i64,
    /// The value (sub-functions that return one), else 0.
    pub value: u64,
}

impl HypercallResult {
    const fn ok(value: u64) -> Self {
        HypercallResult {
            status: SMCCC_RET_SUCCESS,
            value,
        }
    }
    const fn err(status: i64) -> Self {
        HypercallResult { status, value: 0 }
    }
}

fn enable_status(result: Result<(), EnableError>) -> i64 {
    match result {
        Ok(()) => SMCCC_RET_SUCCESS,
        Err(EnableError::NotOffered) => SMCCC_RET_NOT_SUPPORTED,
        Err(EnableError::Unchanged(_)) => SMCCC_RET_NOT_REQUIRED,
        Err(
            EnableError::ReservedBits(_)
            | EnableError::NotConfigured { .. }
            | EnableError::BadBlock(_),
        ) => SMCCC_RET_INVALID_PARAMETER,
    }
}

impl<W: AtomicWord> ApfEngine<W> {
    /// Handles ASYNC_PF with sub-function `x1` and arguments `x2`, `x3`. As an SMC32
    /// call, only the low 32 bits of each register are significant.
    pub fn hypercall(
        &mut self,
        vcpu: &mut impl ApfVcpu,
        x1: u64,
        x2: u64,
        x3: u64,
    ) -> HypercallResult {
        if !self.offered() {
            return HypercallResult::err(SMCCC_RET_NOT_SUPPORTED);
        }
        match x1 & 0xFFFF_FFFF {
            ASYNC_PF_FUNC_VERSION => HypercallResult::ok(u64::from(self.version())),
            ASYNC_PF_FUNC_SLOTS => HypercallResult::ok(ASYNC_PF_PER_VCPU as u64),
            ASYNC_PF_FUNC_SDEI => HypercallResult::ok(u64::from(self.sdei_event())),
            ASYNC_PF_FUNC_IRQ => HypercallResult::ok(u64::from(self.ppi())),
            ASYNC_PF_FUNC_ENABLE => {
                let raw = ControlWord::from_halves(x2, x3);
                HypercallResult::err(enable_status(self.guest_enable(vcpu, raw)))
            }
            ASYNC_PF_FUNC_IRQ_ACK => {
                self.irq_ack(vcpu);
                HypercallResult::ok(0)
            }
            _ => HypercallResult::err(SMCCC_RET_NOT_SUPPORTED),
        }
    }
}
