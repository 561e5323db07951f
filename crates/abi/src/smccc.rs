//! SMCCC function IDs and return codes: the architecture calls, the vendor
//! hypervisor service and apf's ASYNC_PF function.
//!
//! Return codes are written to x0 sign-extended to 64 bits (as KVM does), so a
//! guest may compare either the whole register or its low 32 bits as a signed int.

/// `SMCCC_VERSION`: returns [`SMCCC_VERSION_1_1`].
pub const SMCCC_VERSION: u32 = 0x8000_0000;
/// `SMCCC_ARCH_FEATURES`: x1 = a function ID; 0 if implemented, else NOT_SUPPORTED.
pub const SMCCC_ARCH_FEATURES: u32 = 0x8000_0001;
/// The SMCCC version apf implements: 1.1.
pub const SMCCC_VERSION_1_1: u32 = 0x1_0001;

/// Success.
pub const SMCCC_RET_SUCCESS: i64 = 0;
/// The function or sub-function is not implemented, or APF is unavailable.
pub const SMCCC_RET_NOT_SUPPORTED: i64 = -1;
/// Nothing to do (for example ENABLE with the enabled bit unchanged).
pub const SMCCC_RET_NOT_REQUIRED: i64 = -2;
/// An argument was out of range, reserved or refers to something that is not there.
pub const SMCCC_RET_INVALID_PARAMETER: i64 = -3;

/// Bit 31 of a function ID: fast call.
pub const SMCCC_FAST_CALL: u32 = 1 << 31;
/// Bit 30 of a function ID: SMC64/HVC64 calling convention.
pub const SMCCC_64BIT: u32 = 1 << 30;
/// Shift of the owning-entity field (bits 29:24).
pub const SMCCC_OWNER_SHIFT: u32 = 24;
/// Mask of the owning-entity field after shifting.
pub const SMCCC_OWNER_MASK: u32 = 0x3F;
/// Owner: Arm architecture calls.
pub const SMCCC_OWNER_ARCH: u32 = 0;
/// Owner: standard secure service calls (PSCI, SDEI).
pub const SMCCC_OWNER_STANDARD: u32 = 4;
/// Owner: vendor-specific hypervisor calls.
pub const SMCCC_OWNER_VENDOR_HYP: u32 = 6;

/// The owning entity of a function ID.
pub const fn owner(function_id: u32) -> u32 {
    (function_id >> SMCCC_OWNER_SHIFT) & SMCCC_OWNER_MASK
}

/// Vendor-hyp: call UID. Returns [`APF_UID`] in x0..x3.
pub const VENDOR_HYP_UID: u32 = 0x8600_FF01;
/// Vendor-hyp: features bitmap. x0..x3 hold bits for functions 0..127 (32 each);
/// bit n is set when vendor-hyp function n is implemented.
pub const VENDOR_HYP_FEATURES: u32 = 0x8600_0000;
/// Vendor-hyp function number of ASYNC_PF. The series used 2, which mainline has
/// since given to pKVM (`HYP_MEMINFO`); apf uses 0x30.
pub const VENDOR_HYP_FUNC_ASYNC_PF: u32 = 0x30;
/// The ASYNC_PF function ID (fast, SMC32, vendor hypervisor).
pub const VENDOR_HYP_ASYNC_PF: u32 = 0x8600_0000 | VENDOR_HYP_FUNC_ASYNC_PF;
/// Vendor-hyp function number of the FEATURES call itself.
pub const VENDOR_HYP_FUNC_FEATURES: u32 = 0;

/// The apf hypervisor UUID `a9f0b1e6-6170-4621-8c5e-41504621a9f0`, as the
/// four 32-bit words returned by [`VENDOR_HYP_UID`] in x0..x3.
pub const APF_UID: [u32; 4] = [0xe6b1_f0a9, 0x2146_7061, 0x415e_8c21, 0xf0a9_2146];

/// ASYNC_PF sub-function (x1): interface version, returned in x1 ([`crate::APF_VERSION`]).
pub const ASYNC_PF_FUNC_VERSION: u64 = 0;
/// Sub-function: outstanding faults per vCPU ([`crate::ASYNC_PF_PER_VCPU`]).
pub const ASYNC_PF_FUNC_SLOTS: u64 = 1;
/// Sub-function: SDEI event number used for page-not-present (0 until the VMM sets it).
pub const ASYNC_PF_FUNC_SDEI: u64 = 2;
/// Sub-function: PPI INTID used for page-ready (0 until the VMM sets it).
pub const ASYNC_PF_FUNC_IRQ: u64 = 3;
/// Sub-function: set the control word; x2 = low half, x3 = high half.
pub const ASYNC_PF_FUNC_ENABLE: u64 = 4;
/// Sub-function: acknowledge the page-ready being handled; lowers the PPI.
pub const ASYNC_PF_FUNC_IRQ_ACK: u64 = 5;
