//! SDEI 1.0 (Arm DEN 0054): function IDs, return codes and the APF event.

/// SDEI_VERSION: returns [`SDEI_VERSION_1_0`].
pub const SDEI_VERSION: u32 = 0xC400_0020;
/// SDEI_EVENT_REGISTER(event, entry, arg, flags, affinity).
pub const SDEI_EVENT_REGISTER: u32 = 0xC400_0021;
/// SDEI_EVENT_ENABLE(event).
pub const SDEI_EVENT_ENABLE: u32 = 0xC400_0022;
/// SDEI_EVENT_DISABLE(event).
pub const SDEI_EVENT_DISABLE: u32 = 0xC400_0023;
/// SDEI_EVENT_CONTEXT(register index 0..=17): only inside a running handler.
pub const SDEI_EVENT_CONTEXT: u32 = 0xC400_0024;
/// SDEI_EVENT_COMPLETE(status).
pub const SDEI_EVENT_COMPLETE: u32 = 0xC400_0025;
/// SDEI_EVENT_COMPLETE_AND_RESUME(resume address).
pub const SDEI_EVENT_COMPLETE_AND_RESUME: u32 = 0xC400_0026;
/// SDEI_EVENT_UNREGISTER(event): PENDING while the handler runs.
pub const SDEI_EVENT_UNREGISTER: u32 = 0xC400_0027;
/// SDEI_EVENT_STATUS(event): bitmap of [`SDEI_STATUS_REGISTERED`] and friends.
pub const SDEI_EVENT_STATUS: u32 = 0xC400_0028;
/// SDEI_EVENT_GET_INFO(event, info).
pub const SDEI_EVENT_GET_INFO: u32 = 0xC400_0029;
/// SDEI_EVENT_ROUTING_SET(event, mode, affinity): shared events only.
pub const SDEI_EVENT_ROUTING_SET: u32 = 0xC400_002A;
/// SDEI_PE_MASK.
pub const SDEI_PE_MASK: u32 = 0xC400_002B;
/// SDEI_PE_UNMASK.
pub const SDEI_PE_UNMASK: u32 = 0xC400_002C;
/// SDEI_INTERRUPT_BIND: not supported.
pub const SDEI_INTERRUPT_BIND: u32 = 0xC400_002D;
/// SDEI_INTERRUPT_RELEASE: not supported.
pub const SDEI_INTERRUPT_RELEASE: u32 = 0xC400_002E;
/// SDEI_PRIVATE_RESET: unregisters the calling PE's private events.
pub const SDEI_PRIVATE_RESET: u32 = 0xC400_0031;
/// SDEI_SHARED_RESET: unregisters all shared events.
pub const SDEI_SHARED_RESET: u32 = 0xC400_0032;
/// First and last function IDs of the SDEI range.
pub const SDEI_FIRST: u32 = SDEI_VERSION;
/// Last SDEI function ID.
pub const SDEI_LAST: u32 = 0xC400_003F;

/// SDEI 1.0, no vendor bits: major in 63:48, minor in 47:32.
pub const SDEI_VERSION_1_0: u64 = 1 << 48;

/// Success.
pub const SDEI_SUCCESS: i64 = 0;
/// Not supported.
pub const SDEI_NOT_SUPPORTED: i64 = -1;
/// Invalid parameters.
pub const SDEI_INVALID_PARAMETERS: i64 = -2;
/// Denied: the call is not valid in the event's current state.
pub const SDEI_DENIED: i64 = -3;
/// Pending: the operation completes when the running handler completes.
pub const SDEI_PENDING: i64 = -5;
/// Out of resource.
pub const SDEI_OUT_OF_RESOURCE: i64 = -10;

/// EVENT_STATUS bit 0: registered.
pub const SDEI_STATUS_REGISTERED: u64 = 1 << 0;
/// EVENT_STATUS bit 1: enabled.
pub const SDEI_STATUS_ENABLED: u64 = 1 << 1;
/// EVENT_STATUS bit 2: running (the handler is executing).
pub const SDEI_STATUS_RUNNING: u64 = 1 << 2;

/// GET_INFO: event type (0 private, 1 shared).
pub const SDEI_INFO_TYPE: u64 = 0;
/// GET_INFO: whether the event can be signaled.
pub const SDEI_INFO_SIGNALED: u64 = 1;
/// GET_INFO: priority (0 normal, 1 critical).
pub const SDEI_INFO_PRIORITY: u64 = 2;
/// GET_INFO: routing mode (shared events only).
pub const SDEI_INFO_ROUTING_MODE: u64 = 3;
/// GET_INFO: routing affinity (shared events only).
pub const SDEI_INFO_ROUTING_AFF: u64 = 4;

/// Event type: private to a PE.
pub const SDEI_TYPE_PRIVATE: u64 = 0;
/// Event type: shared.
pub const SDEI_TYPE_SHARED: u64 = 1;
/// Priority: normal.
pub const SDEI_PRIORITY_NORMAL: u64 = 0;
/// Priority: critical.
pub const SDEI_PRIORITY_CRITICAL: u64 = 1;
/// REGISTER flags: route to any PE.
pub const SDEI_RM_ANY: u64 = 0;
/// REGISTER flags: route to the PE in the affinity argument.
pub const SDEI_RM_PE: u64 = 1;

/// Registers of the interrupted context saved across a dispatch: x0..x17.
pub const SDEI_SAVED_REGS: usize = 18;

/// The KVM-owned virtual event range base (bits 23:22 = 0b01).
pub const SDEI_EVENT_VIRT_BASE: u32 = 0x4040_0000;
/// The page-not-present event: private, signaled, critical.
pub const SDEI_EVENT_ASYNC_PF: u32 = 0x4040_0001;
