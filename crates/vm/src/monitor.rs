//! The monitor: the running VM as an observer sees it, every few milliseconds.

use crate::boot::read_boot_block;
use apf_abi::Gpa;
use apf_abi::boot::BootBlock;
use apf_host::apf::ApfCountersSnapshot;
use apf_host::machine::Machine;
use apf_host::vcpu::{self};
use apf_mem::{GuestMemory, MemMetrics};
use std::ops::ControlFlow;
use std::time::{Duration, Instant};

/// How often the monitor looks.
const MONITOR_PERIOD: Duration = Duration::from_millis(2);

/// A running VM as a watchdog or a monitor sees it: handed to the observer of
/// [`run_image_observed`](crate::run_image_observed) and
/// [`run_workloads_observed`](crate::run_workloads_observed) every few milliseconds.
#[derive(Debug)]
pub struct Live<'a> {
    /// Time since the vCPUs started.
    pub elapsed: Duration,
    machine: &'a Machine,
    memory: &'a GuestMemory,
    block: Option<BootBlock>,
}

impl Live<'_> {
    /// Instructions each vCPU has retired so far (its progress).
    pub fn retired(&self) -> Vec<u64> {
        (0..self.machine.vcpus())
            .map(|i| self.machine.live(i).map_or(0, |l| l.retired()))
            .collect()
    }

    /// Whether each vCPU is powered on (a vCPU that is off makes no progress).
    pub fn powered_on(&self) -> Vec<bool> {
        (0..self.machine.vcpus())
            .map(|i| vcpu::is_on(self.machine, i))
            .collect()
    }

    /// Each vCPU's APF counters and gauges now.
    pub fn apf(&self) -> Vec<ApfCountersSnapshot> {
        (0..self.machine.vcpus())
            .map(|i| {
                self.machine
                    .live(i)
                    .and_then(|l| l.apf())
                    .map(|c| c.snapshot())
                    .unwrap_or_default()
            })
            .collect()
    }

    /// Guest memory's figures now (queue lengths: `in_flight`, `backlog`).
    pub fn mem(&self) -> MemMetrics {
        self.memory.metrics()
    }

    /// Reads guest memory as the host would (a page in the store is fetched).
    pub fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), apf_mem::HostAccessError> {
        self.memory.read_bytes(Gpa(gpa), buf)
    }

    /// The boot block as the built-in guest keeps it, read this period: each
    /// process's state and progress (`None` in an image run).
    pub fn boot_block(&self) -> Option<&BootBlock> {
        self.block.as_ref()
    }
}

/// Called with the running VM every few milliseconds; `Break` ends the run
/// ([`RunEnd::Stopped`](crate::RunEnd::Stopped)).
pub type Observer<'o> = &'o mut dyn FnMut(&Live<'_>) -> ControlFlow<()>;

/// Looks at the running VM every [`MONITOR_PERIOD`] until it stops or
/// `timeout` passes: shows it to `observe`, then to `tick` (with the boot
/// block, read once a period, if `workload`). Returns whether the observer
/// ended the run.
pub(crate) fn watch(
    machine: &Machine,
    memory: &GuestMemory,
    begin: Instant,
    timeout: Duration,
    workload: bool,
    observe: Observer<'_>,
    mut tick: impl FnMut(&Live<'_>),
) -> bool {
    while !machine.stopping() && begin.elapsed() < timeout {
        std::thread::park_timeout(MONITOR_PERIOD);
        let live = Live {
            elapsed: begin.elapsed(),
            machine,
            memory,
            block: if workload {
                read_boot_block(memory)
            } else {
                None
            },
        };
        if observe(&live).is_break() {
            return true;
        }
        tick(&live);
    }
    false
}
