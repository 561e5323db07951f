//! PSCI 1.1 function IDs and return codes.

/// PSCI_VERSION: returns [`PSCI_VERSION_1_1`].
pub const PSCI_VERSION: u32 = 0x8400_0000;
/// CPU_SUSPEND (SMC64).
pub const PSCI_CPU_SUSPEND: u32 = 0xC400_0001;
/// CPU_OFF.
pub const PSCI_CPU_OFF: u32 = 0x8400_0002;
/// CPU_ON (SMC64): x1 = target MPIDR, x2 = entry point, x3 = context id (to x0).
pub const PSCI_CPU_ON: u32 = 0xC400_0003;
/// CPU_ON (SMC32).
pub const PSCI_CPU_ON_32: u32 = 0x8400_0003;
/// AFFINITY_INFO (SMC64): x1 = target affinity, x2 = lowest affinity level.
pub const PSCI_AFFINITY_INFO: u32 = 0xC400_0004;
/// AFFINITY_INFO (SMC32).
pub const PSCI_AFFINITY_INFO_32: u32 = 0x8400_0004;
/// MIGRATE_INFO_TYPE.
pub const PSCI_MIGRATE_INFO_TYPE: u32 = 0x8400_0006;
/// SYSTEM_OFF.
pub const PSCI_SYSTEM_OFF: u32 = 0x8400_0008;
/// SYSTEM_RESET.
pub const PSCI_SYSTEM_RESET: u32 = 0x8400_0009;
/// PSCI_FEATURES: x1 = a PSCI function ID.
pub const PSCI_FEATURES: u32 = 0x8400_000A;

/// PSCI 1.1.
pub const PSCI_VERSION_1_1: u32 = 0x1_0001;

/// Success.
pub const PSCI_RET_SUCCESS: i64 = 0;
/// Not supported.
pub const PSCI_RET_NOT_SUPPORTED: i64 = -1;
/// Invalid parameters (for CPU_ON: no such CPU).
pub const PSCI_RET_INVALID_PARAMETERS: i64 = -2;
/// Denied.
pub const PSCI_RET_DENIED: i64 = -3;
/// CPU_ON of a CPU that is already on.
pub const PSCI_RET_ALREADY_ON: i64 = -4;
/// CPU_ON of a CPU whose power-up is pending.
pub const PSCI_RET_ON_PENDING: i64 = -5;
/// Internal failure.
pub const PSCI_RET_INTERNAL_FAILURE: i64 = -6;
/// Not present.
pub const PSCI_RET_NOT_PRESENT: i64 = -7;
/// Disabled.
pub const PSCI_RET_DISABLED: i64 = -8;
/// CPU_ON with an entry point outside guest RAM.
pub const PSCI_RET_INVALID_ADDRESS: i64 = -9;

/// AFFINITY_INFO: the CPU is on.
pub const PSCI_AFFINITY_ON: i64 = 0;
/// AFFINITY_INFO: the CPU is off.
pub const PSCI_AFFINITY_OFF: i64 = 1;
/// AFFINITY_INFO: the CPU is being powered on.
pub const PSCI_AFFINITY_ON_PENDING: i64 = 2;
