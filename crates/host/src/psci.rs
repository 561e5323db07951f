//! PSCI 1.1 (Arm DEN 0022) as the platform firmware offers it to the guest.
//!
//! Models: VERSION, FEATURES, CPU_ON (SMC32 and SMC64), CPU_OFF, AFFINITY_INFO
//! (level 0 only, as PSCI 1.0 allows), MIGRATE_INFO_TYPE (2: no Trusted OS to
//! migrate), SYSTEM_OFF and SYSTEM_RESET, over a per-vCPU power state machine
//! (off → on-pending → on → off). Calls that power CPUs or the system up and down
//! are returned as [`PsciAction`]s for the run loop to carry out.
//!
//! Leaves out: CPU_SUSPEND and the other optional calls (they answer
//! NOT_SUPPORTED), affinity levels above 0, and any Trusted OS.
//!
//! The state is shared by every vCPU thread: each vCPU's state is one atomic,
//! changed by compare-and-swap, so two CPU_ONs racing for one target cannot both
//! succeed.

use crate::regs::{GuestRegs, PSTATE_EL1H_MASKED, vcpu_of_affinity};
use apf_abi::psci::{
    PSCI_AFFINITY_INFO, PSCI_AFFINITY_INFO_32, PSCI_AFFINITY_OFF, PSCI_AFFINITY_ON,
    PSCI_AFFINITY_ON_PENDING, PSCI_CPU_OFF, PSCI_CPU_ON, PSCI_CPU_ON_32, PSCI_FEATURES,
    PSCI_MIGRATE_INFO_TYPE, PSCI_RET_ALREADY_ON, PSCI_RET_INVALID_ADDRESS,
    PSCI_RET_INVALID_PARAMETERS, PSCI_RET_NOT_SUPPORTED, PSCI_RET_ON_PENDING, PSCI_RET_SUCCESS,
    PSCI_SYSTEM_OFF, PSCI_SYSTEM_RESET, PSCI_VERSION, PSCI_VERSION_1_1,
};
use apf_abi::smccc::SMCCC_VERSION;
use serde::{Deserialize, Serialize};
use std::ops::Range;
use std::sync::atomic::{AtomicU8, Ordering};

/// MIGRATE_INFO_TYPE: "Trusted OS is either not present or does not require
/// migration".
pub const MIGRATE_INFO_TYPE_NOT_PRESENT: u64 = 2;

/// A vCPU's power state as PSCI sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[repr(u8)]
pub enum PowerState {
    /// Powered off (at boot every vCPU but 0, or after CPU_OFF).
    Off = 0,
    /// CPU_ON was accepted; the run loop has not started it yet.
    OnPending = 1,
    /// Running.
    On = 2,
}

impl PowerState {
    fn from_u8(v: u8) -> PowerState {
        match v {
            0 => PowerState::Off,
            1 => PowerState::OnPending,
            _ => PowerState::On,
        }
    }
}

/// Every vCPU's power state, in vCPU order, as a snapshot holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PsciState {
    /// One per vCPU.
    pub power: Vec<PowerState>,
}

/// Why a [`PsciState`] was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PsciStateError {
    /// The state was saved with another number of vCPUs.
    #[error(
        "the saved PSCI state has {saved} vCPUs and this machine {here}: build the machine with {saved} vCPUs"
    )]
    VcpuCount {
        /// vCPUs in the saved state.
        saved: usize,
        /// vCPUs here.
        here: usize,
    },
}

/// What the run loop must do after a PSCI call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PsciAction {
    /// Start vCPU `target` with [`enter_cpu`]`(entry, context)` and then call
    /// [`Psci::mark_on`]. The caller's x0 already holds SUCCESS.
    StartCpu {
        /// The vCPU index.
        target: usize,
        /// Where it starts (guest physical, the MMU is off).
        entry: u64,
        /// Its x0.
        context: u64,
    },
    /// The calling vCPU is off: stop running it until a StartCpu names it.
    CpuOff,
    /// Power the VM off.
    SystemOff,
    /// Reset the VM (then call [`Psci::reset`]).
    SystemReset,
}

/// The outcome of one PSCI call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PsciOutcome {
    /// Write this to x0 and resume the caller.
    Return(u64),
    /// Carry this out (see each action for what the caller's x0 holds).
    Act(PsciAction),
}

fn ret(code: i64) -> PsciOutcome {
    PsciOutcome::Return(code.cast_unsigned())
}

/// The platform's PSCI firmware: the power state of every vCPU and the RAM a
/// CPU_ON entry point must lie in.
#[derive(Debug)]
pub struct Psci {
    power: Box<[AtomicU8]>,
    ram: Range<u64>,
}

impl Psci {
    /// PSCI for `vcpus` vCPUs with guest RAM at `ram`. vCPU 0 is on (it boots the
    /// guest); the others are off until CPU_ON.
    pub fn new(vcpus: usize, ram: Range<u64>) -> Psci {
        let power = (0..vcpus)
            .map(|i| {
                AtomicU8::new(if i == 0 {
                    PowerState::On
                } else {
                    PowerState::Off
                } as u8)
            })
            .collect();
        Psci { power, ram }
    }

    /// The number of vCPUs.
    pub fn vcpus(&self) -> usize {
        self.power.len()
    }

    /// The power state of vCPU `index` (`None` if there is no such vCPU).
    pub fn power_state(&self, index: usize) -> Option<PowerState> {
        self.power
            .get(index)
            .map(|p| PowerState::from_u8(p.load(Ordering::SeqCst)))
    }

    /// The run loop started `target` after a [`PsciAction::StartCpu`]: on-pending
    /// becomes on. Returns whether `target` was on-pending.
    pub fn mark_on(&self, target: usize) -> bool {
        self.power.get(target).is_some_and(|p| {
            p.compare_exchange(
                PowerState::OnPending as u8,
                PowerState::On as u8,
                Ordering::SeqCst,
                Ordering::SeqCst,
            )
            .is_ok()
        })
    }

    /// Every vCPU's power state.
    pub fn save_state(&self) -> PsciState {
        PsciState {
            power: self
                .power
                .iter()
                .map(|p| PowerState::from_u8(p.load(Ordering::SeqCst)))
                .collect(),
        }
    }

    /// Installs `state` (before the vCPUs run). Refused, with nothing changed,
    /// when it has another number of vCPUs.
    pub fn restore_state(&self, state: &PsciState) -> Result<(), PsciStateError> {
        if state.power.len() != self.vcpus() {
            return Err(PsciStateError::VcpuCount {
                saved: state.power.len(),
                here: self.vcpus(),
            });
        }
        for (p, &saved) in self.power.iter().zip(&state.power) {
            p.store(saved as u8, Ordering::SeqCst);
        }
        Ok(())
    }

    /// After a system reset: vCPU 0 on, every other vCPU off.
    pub fn reset(&self) {
        for (i, p) in self.power.iter().enumerate() {
            let state = if i == 0 {
                PowerState::On
            } else {
                PowerState::Off
            };
            p.store(state as u8, Ordering::SeqCst);
        }
    }

    /// Whether this module implements PSCI function `function_id` (for
    /// PSCI_FEATURES and the SMCCC dispatcher).
    pub fn implements(function_id: u32) -> bool {
        matches!(
            function_id,
            PSCI_VERSION
                | PSCI_CPU_OFF
                | PSCI_CPU_ON
                | PSCI_CPU_ON_32
                | PSCI_AFFINITY_INFO
                | PSCI_AFFINITY_INFO_32
                | PSCI_MIGRATE_INFO_TYPE
                | PSCI_SYSTEM_OFF
                | PSCI_SYSTEM_RESET
                | PSCI_FEATURES
        )
    }

    /// Handles PSCI function `function_id` made by vCPU `caller` with arguments
    /// x1..x3 (already narrowed to 32 bits for SMC32 calls by the dispatcher).
    pub fn call(&self, caller: usize, function_id: u32, args: [u64; 3]) -> PsciOutcome {
        let [x1, x2, x3] = args;
        match function_id {
            PSCI_VERSION => PsciOutcome::Return(u64::from(PSCI_VERSION_1_1)),
            PSCI_FEATURES => ret(Self::features(x1)),
            PSCI_CPU_ON | PSCI_CPU_ON_32 => self.cpu_on(x1, x2, x3),
            PSCI_CPU_OFF => self.cpu_off(caller),
            PSCI_AFFINITY_INFO | PSCI_AFFINITY_INFO_32 => ret(self.affinity_info(x1, x2)),
            PSCI_MIGRATE_INFO_TYPE => PsciOutcome::Return(MIGRATE_INFO_TYPE_NOT_PRESENT),
            PSCI_SYSTEM_OFF => PsciOutcome::Act(PsciAction::SystemOff),
            PSCI_SYSTEM_RESET => PsciOutcome::Act(PsciAction::SystemReset),
            _ => ret(PSCI_RET_NOT_SUPPORTED),
        }
    }

    fn features(queried: u64) -> i64 {
        // PSCI 1.0 §5.1.14: SMCCC_VERSION is reported here too, which is how a
        // guest learns it may call SMCCC_VERSION at all.
        match u32::try_from(queried) {
            Ok(id) if Self::implements(id) || id == SMCCC_VERSION => PSCI_RET_SUCCESS,
            _ => PSCI_RET_NOT_SUPPORTED,
        }
    }

    fn cpu_on(&self, target_mpidr: u64, entry: u64, context: u64) -> PsciOutcome {
        let Some(target) = vcpu_of_affinity(target_mpidr, self.vcpus()) else {
            return ret(PSCI_RET_INVALID_PARAMETERS);
        };
        // The last instruction must fit in RAM as well as the first byte.
        let entry_ok = entry.is_multiple_of(4)
            && self.ram.contains(&entry)
            && entry
                .checked_add(3)
                .is_some_and(|last| self.ram.contains(&last));
        if !entry_ok {
            return ret(PSCI_RET_INVALID_ADDRESS);
        }
        match self.power[target].compare_exchange(
            PowerState::Off as u8,
            PowerState::OnPending as u8,
            Ordering::SeqCst,
            Ordering::SeqCst,
        ) {
            Ok(_) => PsciOutcome::Act(PsciAction::StartCpu {
                target,
                entry,
                context,
            }),
            Err(state) => match PowerState::from_u8(state) {
                PowerState::OnPending => ret(PSCI_RET_ON_PENDING),
                _ => ret(PSCI_RET_ALREADY_ON),
            },
        }
    }

    fn cpu_off(&self, caller: usize) -> PsciOutcome {
        if let Some(p) = self.power.get(caller) {
            p.store(PowerState::Off as u8, Ordering::SeqCst);
        }
        PsciOutcome::Act(PsciAction::CpuOff)
    }

    fn affinity_info(&self, target_affinity: u64, lowest_level: u64) -> i64 {
        if lowest_level != 0 {
            return PSCI_RET_INVALID_PARAMETERS;
        }
        match vcpu_of_affinity(target_affinity, self.vcpus()).and_then(|i| self.power_state(i)) {
            Some(PowerState::On) => PSCI_AFFINITY_ON,
            Some(PowerState::Off) => PSCI_AFFINITY_OFF,
            Some(PowerState::OnPending) => PSCI_AFFINITY_ON_PENDING,
            None => PSCI_RET_INVALID_PARAMETERS,
        }
    }
}

/// Puts a vCPU in the state PSCI CPU_ON starts it in: PC = `entry`, x0 =
/// `context`, every other general register 0, EL1h with DAIF masked. The run
/// loop also resets the vCPU's system registers (SCTLR_EL1 with the MMU and
/// caches off); they are not part of [`GuestRegs`].
pub fn enter_cpu(regs: &mut impl GuestRegs, entry: u64, context: u64) {
    for n in 0..31 {
        regs.set_x(n, 0);
    }
    regs.set_x(0, context);
    regs.set_pc(entry);
    regs.set_pstate(PSTATE_EL1H_MASKED);
}
