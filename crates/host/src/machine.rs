//! The platform state every vCPU shares: the GIC, the UART, PSCI power states,
//! CPU_ON requests, the APF shared blocks in use, and how the run ends.

use crate::apf::ApfCounters;
use crate::gic::{Gic, GicState, GicStateError};
use crate::maintenance::Maintenance;
use crate::psci::{Psci, PsciState, PsciStateError};
use crate::sync::lock;
use crate::uart::{Pl011, Pl011State};
use crate::waker::VcpuWaker;
use apf_abi::Gpa;
use apf_abi::platform::{GICD_BASE, GICR_BASE, GICR_STRIDE, UART_BASE, UART_SIZE};
use serde::{Deserialize, Serialize};
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

/// Why the run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// The guest called PSCI SYSTEM_OFF.
    SystemOff,
    /// The guest called PSCI SYSTEM_RESET (apf ends the run; it does not reboot).
    SystemReset,
    /// The host ended the run (timeout, or the VMM asked).
    Host,
}

/// A CPU_ON waiting for its target vCPU thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StartRequest {
    /// Entry point.
    pub entry: u64,
    /// Context id for x0.
    pub context: u64,
    /// The virtual counter of the vCPU that asked (0 at boot). The started vCPU's
    /// counter starts there, so every vCPU reads about the same time: each keeps
    /// its own counter, and one starting at 0 would put its CPU hours behind.
    pub counter: u64,
}

/// The shared platform's state as a snapshot holds it. The vCPUs' own state
/// is in [`VcpuState`](crate::vcpu::VcpuState); APF shared blocks are claimed
/// again by the vCPUs' engines as they restore.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachineState {
    /// Distributor and redistributors.
    pub gic: GicState,
    /// The console's registers.
    pub uart: Pl011State,
    /// Every vCPU's power state.
    pub psci: PsciState,
    /// CPU_ONs accepted but not yet taken by their target, per vCPU.
    pub starts: Vec<Option<StartRequest>>,
}

/// Why a [`MachineState`] was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum MachineStateError {
    /// The GIC's state.
    #[error(transparent)]
    Gic(#[from] GicStateError),
    /// PSCI's state.
    #[error(transparent)]
    Psci(#[from] PsciStateError),
    /// The pending CPU_ONs.
    #[error(
        "the saved machine has CPU_ON slots for {saved} vCPUs and this one {here}: build the machine with {saved} vCPUs"
    )]
    VcpuCount {
        /// vCPUs in the saved state.
        saved: usize,
        /// vCPUs here.
        here: usize,
    },
}

/// What other threads can see of a vCPU while it runs: a watchdog's and a
/// monitor's view.
#[derive(Debug, Default)]
pub struct VcpuLive {
    retired: AtomicU64,
    apf: OnceLock<Arc<ApfCounters>>,
}

impl VcpuLive {
    /// Instructions retired since the VM started, over every power cycle;
    /// updated after each interpreter slice.
    pub fn retired(&self) -> u64 {
        self.retired.load(Ordering::Relaxed)
    }

    /// Counts `n` more retired instructions (the vCPU's own thread).
    pub fn add_retired(&self, n: u64) {
        self.retired.fetch_add(n, Ordering::Relaxed);
    }

    /// The vCPU's APF counters, once its thread has built its engine.
    pub fn apf(&self) -> Option<&Arc<ApfCounters>> {
        self.apf.get()
    }

    /// Publishes the vCPU's APF counters (once; later calls are ignored).
    pub fn set_apf(&self, counters: Arc<ApfCounters>) {
        let _ = self.apf.set(counters);
    }
}

/// An APF shared block and the vCPU holding it.
#[derive(Debug)]
struct HeldBlock {
    vcpu: usize,
    range: Range<u64>,
}

/// The shared platform.
#[derive(Debug)]
pub struct Machine {
    /// The interrupt controller.
    pub gic: Arc<Gic>,
    /// The console.
    pub uart: Pl011,
    /// PSCI power states.
    pub psci: Psci,
    /// TLB and instruction-cache maintenance broadcast between vCPUs.
    pub maintenance: Maintenance,
    /// Guest RAM.
    pub ram: Range<u64>,
    stopping: AtomicBool,
    stop_reason: Mutex<Option<StopReason>>,
    wakers: OnceLock<Vec<Arc<VcpuWaker>>>,
    starts: Vec<Mutex<Option<StartRequest>>>,
    blocks: Mutex<Vec<HeldBlock>>,
    live: Box<[VcpuLive]>,
}

impl Machine {
    /// A machine with `vcpus` vCPUs over guest RAM `ram`.
    pub fn new(gic: Arc<Gic>, uart: Pl011, ram: Range<u64>) -> Machine {
        let vcpus = gic.vcpus();
        Machine {
            gic,
            uart,
            psci: Psci::new(vcpus, ram.clone()),
            maintenance: Maintenance::new(vcpus),
            ram,
            stopping: AtomicBool::new(false),
            stop_reason: Mutex::new(None),
            wakers: OnceLock::new(),
            starts: (0..vcpus).map(|_| Mutex::new(None)).collect(),
            // At most two per vCPU (while it moves).
            blocks: Mutex::new(Vec::with_capacity(2 * vcpus)),
            live: (0..vcpus).map(|_| VcpuLive::default()).collect(),
        }
    }

    /// vCPUs.
    pub fn vcpus(&self) -> usize {
        self.starts.len()
    }

    /// The live view of vCPU `index`.
    pub fn live(&self, index: usize) -> Option<&VcpuLive> {
        self.live.get(index)
    }

    /// Registers the vCPU threads' wakers (once, before they run).
    pub fn set_wakers(&self, wakers: Vec<Arc<VcpuWaker>>) {
        let _ = self.wakers.set(wakers);
    }

    /// The waker of vCPU `index`.
    pub fn waker(&self, index: usize) -> Option<&Arc<VcpuWaker>> {
        self.wakers.get().and_then(|w| w.get(index))
    }

    /// Ends the run (the first reason wins) and wakes every vCPU.
    pub fn stop(&self, reason: StopReason) {
        lock(&self.stop_reason).get_or_insert(reason);
        self.stopping.store(true, Ordering::SeqCst);
        for w in self.wakers.get().into_iter().flatten() {
            w.kick();
        }
    }

    /// Whether the run is ending.
    pub fn stopping(&self) -> bool {
        self.stopping.load(Ordering::Relaxed)
    }

    /// Why the run ended, once it has.
    pub fn stop_reason(&self) -> Option<StopReason> {
        *lock(&self.stop_reason)
    }

    /// Hands a CPU_ON to its target and wakes it.
    pub fn request_start(&self, target: usize, request: StartRequest) {
        if let Some(slot) = self.starts.get(target) {
            *lock(slot) = Some(request);
            if let Some(w) = self.waker(target) {
                w.kick();
            }
        }
    }

    /// Takes the CPU_ON waiting for `index`, if any.
    pub fn take_start(&self, index: usize) -> Option<StartRequest> {
        self.starts.get(index).and_then(|s| lock(s).take())
    }

    /// The platform's state. Consistent once every vCPU thread has left its
    /// run loop (after [`Machine::stop`] and joining them).
    pub fn save_state(&self) -> MachineState {
        MachineState {
            gic: self.gic.save_state(),
            uart: self.uart.save_state(),
            psci: self.psci.save_state(),
            starts: self.starts.iter().map(|s| *lock(s)).collect(),
        }
    }

    /// Installs `state` on a machine whose vCPUs have not started (then spawn
    /// them with their [`VcpuState`](crate::vcpu::VcpuState)s). The GIC goes
    /// first, so the UART's line agrees with it. Refused, with nothing changed,
    /// when it was saved with another number of vCPUs.
    pub fn restore_state(&self, state: &MachineState) -> Result<(), MachineStateError> {
        let (saved, here) = (state.starts.len(), self.vcpus());
        if saved != here {
            return Err(MachineStateError::VcpuCount { saved, here });
        }
        if state.psci.power.len() != here {
            return Err(PsciStateError::VcpuCount {
                saved: state.psci.power.len(),
                here,
            }
            .into());
        }
        self.gic.restore_state(&state.gic)?;
        self.psci.restore_state(&state.psci)?;
        self.uart.restore_state(&state.uart);
        for (slot, &start) in self.starts.iter().zip(&state.starts) {
            *lock(slot) = start;
        }
        Ok(())
    }

    /// Whether `[gpa, gpa + len)` is guest RAM.
    pub fn is_ram(&self, gpa: Gpa, len: u64) -> bool {
        let start = gpa.0;
        start >= self.ram.start
            && start
                .checked_add(len)
                .is_some_and(|end| end <= self.ram.end)
    }

    /// Reserves `[gpa, gpa + len)` as vCPU `index`'s APF block if it may be one:
    /// guest RAM, overlapping no block another vCPU holds. The check and the
    /// reservation are one step under one lock, so two vCPUs claiming at once
    /// cannot both succeed. A vCPU may hold two blocks while it moves from one
    /// to the other. Each successful claim is given back with
    /// [`Machine::release_shared_block`].
    pub fn claim_shared_block(&self, index: usize, gpa: Gpa, len: u64) -> bool {
        if index >= self.vcpus() || !self.is_ram(gpa, len) {
            return false;
        }
        let range = gpa.0..gpa.0 + len;
        let mut blocks = lock(&self.blocks);
        // Ranges, not start addresses: a block overlapping another vCPU's is as
        // shared as the same block.
        let free = blocks
            .iter()
            .all(|b| b.vcpu == index || b.range.end <= range.start || range.end <= b.range.start);
        if free {
            blocks.push(HeldBlock { vcpu: index, range });
        }
        free
    }

    /// Gives back one claim of vCPU `index` on the block at `gpa`.
    pub fn release_shared_block(&self, index: usize, gpa: Gpa) {
        let mut blocks = lock(&self.blocks);
        if let Some(i) = blocks
            .iter()
            .position(|b| b.vcpu == index && b.range.start == gpa.0)
        {
            blocks.swap_remove(i);
        }
    }

    /// The vCPU holding the APF block that contains `gpa`, if any.
    pub fn shared_block_holder(&self, gpa: Gpa) -> Option<usize> {
        lock(&self.blocks)
            .iter()
            .find(|b| b.range.contains(&gpa.0))
            .map(|b| b.vcpu)
    }

    /// MMIO read; `None` if nothing is there.
    pub fn mmio_read(&self, addr: u64, size: usize) -> Option<u64> {
        match addr {
            a if self.is_gic(a) => self.gic.mmio_read(a, size),
            a if (UART_BASE..UART_BASE + UART_SIZE).contains(&a) => self.uart.mmio_read(a, size),
            _ => None,
        }
    }

    /// MMIO write; false if nothing is there.
    pub fn mmio_write(&self, addr: u64, size: usize, value: u64) -> bool {
        match addr {
            a if self.is_gic(a) => self.gic.mmio_write(a, size, value),
            a if (UART_BASE..UART_BASE + UART_SIZE).contains(&a) => {
                self.uart.mmio_write(a, size, value)
            }
            _ => false,
        }
    }

    fn is_gic(&self, addr: u64) -> bool {
        let gicr_end = GICR_BASE + GICR_STRIDE * self.vcpus() as u64;
        (GICD_BASE..GICD_BASE + apf_abi::platform::GICD_SIZE).contains(&addr)
            || (GICR_BASE..gicr_end).contains(&addr)
    }
}
