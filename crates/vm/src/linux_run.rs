//! Running a Linux guest (`linux/`): the kernel, initrd and device tree
//! written into guest RAM, the vCPUs started as the kernel's booting document
//! asks, and the console watched for the init's protocol lines and a panic.

use crate::boot::{ProcessOutcome, boot_block};
use crate::config::VmConfig;
use crate::error::VmError;
use crate::linux::console::{ConsoleScanner, ProcEnd};
use crate::linux::{LinuxGuest, prepare};
use crate::monitor::{self, Live, Observer};
use crate::run::{
    Boot, Built, RunEnd, RunOptions, VmRun, Watched, build_machine, finish, start_vcpus,
};
use crate::workload;
use apf_abi::Gpa;
use apf_abi::boot::{ProcResult, proc_state};
use apf_cpu::CpuConfig;
use apf_host::machine::StopReason;
use apf_host::sync::lock;
use apf_host::vcpu;
use std::cell::Cell;
use std::ops::ControlFlow;
use std::time::{Duration, Instant};

/// Boots `guest` on the machine `config` describes, runs its processes and
/// reports them from the console: see [`run_linux_observed`]. The guest is
/// taken, and its bytes freed once they are in guest RAM (a stock kernel is
/// 44 MB, most of a 64 MiB budget).
pub fn run_linux(
    config: &VmConfig,
    guest: LinuxGuest,
    options: RunOptions,
) -> Result<VmRun, VmError> {
    run_linux_observed(config, guest, options, &mut |_| ControlFlow::Continue(()))
}

/// How long a panicking kernel may go on printing (its backtrace) before the
/// run ends, if it neither resets nor prints the panic's end marker.
const PANIC_GRACE: Duration = Duration::from_secs(2);

/// [`run_linux`] with an observer. The run ends when the guest powers off or
/// resets, at `options.timeout`, or soon after a kernel panic (once the kernel
/// printed the panic's end, or after a short grace).
pub fn run_linux_observed(
    config: &VmConfig,
    guest: LinuxGuest,
    options: RunOptions,
    observe: Observer<'_>,
) -> Result<VmRun, VmError> {
    let (built, boot) = build_linux(config, guest, options)?;
    let begin = Instant::now();
    let vcpus = start_vcpus(config, &built, boot, vcpu::spawn)?;
    let mut progress = LinuxProgress::new(config);
    let watched = drive_linux(&built, begin, options, observe, &mut progress, None);
    let run = finish(
        &built,
        vcpus,
        begin,
        progress.work_done_at,
        watched.observer_stopped,
    )?;
    Ok(progress.report(config, run))
}

/// The machine with the kernel, the initrd and the device tree in guest RAM,
/// and how its boot vCPU starts. The guest's bytes are freed once in RAM.
pub(crate) fn build_linux(
    config: &VmConfig,
    guest: LinuxGuest,
    options: RunOptions,
) -> Result<(Built, Boot), VmError> {
    config.validate_linux()?;
    let prepared = prepare(config, &guest)?;
    let built = build_machine(config, options.echo_console)?;
    let write = |at: u64, bytes: &[u8]| {
        built
            .memory
            .write_bytes(Gpa(at), bytes)
            .map_err(|e| VmError::Load(e.to_string()))
    };
    write(prepared.layout.kernel.start, &guest.kernel)?;
    if let (Some(range), Some(bytes)) = (&prepared.layout.initrd, &guest.initrd) {
        write(range.start, bytes)?;
    }
    write(prepared.layout.dtb.start, &prepared.dtb)?;
    drop(guest);
    let boot = Boot {
        entry: prepared.layout.kernel.start,
        context: prepared.layout.dtb.start,
        cpu: CpuConfig {
            engine: options.engine,
            ..linux_cpu()
        },
    };
    Ok((built, boot))
}

/// Every vCPU's interpreter for a Linux guest: a 100 MHz counter, one tick per
/// retired instruction. Linux's clock keeps about wall time, as the interpreter
/// retires 90-100 M instructions a second with the MMU on (a stock boot: 1.05 G
/// instructions in 11.3 s). Fixed rather than measured at run time, so that
/// runs are reproducible.
pub(crate) fn linux_cpu() -> CpuConfig {
    CpuConfig::default()
}

/// The host's view of a Linux guest's run, from its console.
pub(crate) struct LinuxProgress {
    scanner: ConsoleScanner,
    finite: Vec<usize>,
    ended_at: Vec<Option<Duration>>,
    /// When the init's start line was seen: process times count from it, not
    /// across the boot.
    started_at: Option<Duration>,
    pub(crate) work_done_at: Option<Duration>,
    panic_at: Option<Duration>,
}

impl LinuxProgress {
    pub(crate) fn new(config: &VmConfig) -> LinuxProgress {
        LinuxProgress {
            scanner: ConsoleScanner::new(config.processes.len()),
            finite: (0..config.processes.len())
                .filter(|&i| config.processes[i].work > 0)
                .collect(),
            ended_at: vec![None; config.processes.len()],
            started_at: None,
            work_done_at: None,
            panic_at: None,
        }
    }

    /// Which processes the init has said ended.
    pub(crate) fn ended(&self) -> Vec<bool> {
        self.ended_at.iter().map(Option::is_some).collect()
    }

    /// The run with the processes' outcomes, the panic and the module's
    /// counters from the whole console.
    pub(crate) fn report(mut self, config: &VmConfig, mut run: VmRun) -> VmRun {
        // The console is complete now (the UART flushed its last partial line).
        self.scanner.scan(run.uart.as_bytes(), true);
        if let Some(line) = self.scanner.panic() {
            run.end = RunEnd::KernelPanic;
            run.kernel_panic = Some(line.to_string());
        }
        run.processes = outcomes(config, &self.scanner, &self.ended_at);
        run.guest_module = self.scanner.guest_module().to_vec();
        run
    }
}

/// Watches a Linux guest's console until it powers off or resets, at
/// `options.timeout`, soon after a kernel panic, or `snapshot_at` after the
/// init's start line (the snapshot is then due; the machine still runs).
pub(crate) fn drive_linux(
    built: &Built,
    begin: Instant,
    options: RunOptions,
    observe: Observer<'_>,
    progress: &mut LinuxProgress,
    snapshot_at: Option<Duration>,
) -> Watched {
    let snapshot_due = Cell::new(false);
    let mut observe_or_snapshot = |live: &Live<'_>| {
        if snapshot_due.get() {
            return ControlFlow::Break(());
        }
        observe(live)
    };
    let observer_stopped = monitor::watch(
        &built.machine,
        &built.memory,
        begin,
        options.timeout,
        false,
        &mut observe_or_snapshot,
        |live| {
            let p = &mut *progress;
            let ended = p.scanner.scan(&lock(&built.console), false);
            if p.scanner.init_started() && p.started_at.is_none() {
                p.started_at = Some(live.elapsed);
            }
            let since_init = live
                .elapsed
                .saturating_sub(p.started_at.unwrap_or_default());
            for i in ended {
                p.ended_at[i] = Some(since_init);
            }
            if p.work_done_at.is_none()
                && !p.finite.is_empty()
                && p.finite.iter().all(|&i| p.ended_at[i].is_some())
            {
                p.work_done_at = Some(live.elapsed);
            }
            if p.started_at.is_some() && snapshot_at.is_some_and(|at| since_init >= at) {
                snapshot_due.set(true);
            }
            if p.scanner.panic().is_some() {
                let since = *p.panic_at.get_or_insert(live.elapsed);
                if p.scanner.panic_ended() || live.elapsed - since >= PANIC_GRACE {
                    built.machine.stop(StopReason::Host);
                }
            }
        },
    );
    Watched {
        observer_stopped: observer_stopped && !snapshot_due.get(),
        snapshot_due: snapshot_due.get(),
    }
}

/// Each process's outcome from what the init printed, its checksum checked
/// against the Rust replay. A process the init said nothing about is still
/// running as far as the host knows. One the init stopped (it had no work of its
/// own) is done, as the built-in guest reports a process it stops at the end.
fn outcomes(
    config: &VmConfig,
    scanner: &ConsoleScanner,
    ended_at: &[Option<Duration>],
) -> Vec<ProcessOutcome> {
    let block = boot_block(config);
    config
        .processes
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let (state, progress, checksum, kill_signal) = match scanner.procs()[i] {
                Some(
                    ProcEnd::Done { progress, checksum } | ProcEnd::Stopped { progress, checksum },
                ) => (proc_state::DONE, progress, checksum, None),
                Some(ProcEnd::Killed {
                    signal,
                    progress,
                    checksum,
                }) => (proc_state::KILLED, progress, checksum, Some(signal)),
                None => (proc_state::RUNNING, 0, 0, None),
            };
            let result = ProcResult {
                state,
                kill_esr: 0,
                progress,
                checksum,
                reserved: 0,
            };
            ProcessOutcome {
                index: i,
                kind: p.kind,
                vcpu: p.vcpu,
                state,
                progress,
                checksum,
                checksum_ok: state != proc_state::RUNNING
                    && workload::verify(&block.procs[i], &result).is_ok(),
                kill_esr: 0,
                kill_signal,
                ended_at: ended_at.get(i).copied().flatten(),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ByteSize, ProcessConfig, WorkloadKind};

    fn config(processes: Vec<ProcessConfig>) -> VmConfig {
        VmConfig {
            vcpus: 2,
            ram: ByteSize(64 << 20),
            processes,
            seed: 5,
            ..VmConfig::default()
        }
    }

    #[test]
    fn outcomes_are_read_from_the_console_and_checked() {
        let c = config(vec![
            ProcessConfig {
                kind: WorkloadKind::Calc,
                vcpu: 0,
                mem: ByteSize(0),
                work: 40,
                write_pct: 100,
            },
            ProcessConfig {
                kind: WorkloadKind::Calc,
                vcpu: 0,
                mem: ByteSize(0),
                work: 40,
                write_pct: 100,
            },
            ProcessConfig {
                kind: WorkloadKind::Calc,
                vcpu: 1,
                mem: ByteSize(0),
                work: 40,
                write_pct: 100,
            },
        ]);
        let block = boot_block(&c);
        let good = workload::expected_checksum(&block.procs[0], 40).unwrap();
        let at_3 = workload::expected_checksum(&block.procs[1], 3).unwrap();
        let console = format!(
            "[ 0.1] hello\napf-proc 1 killed 9 3 {at_3:016x}\napf-proc 0 done 40 {good:016x}\napf-init done\n"
        );
        let mut s = ConsoleScanner::new(3);
        s.scan(console.as_bytes(), true);
        let at = Duration::from_millis(5);
        let out = outcomes(&c, &s, &[Some(at), Some(at), None]);
        assert_eq!(
            (
                out[0].state,
                out[0].progress,
                out[0].checksum,
                out[0].checksum_ok
            ),
            (proc_state::DONE, 40, good, true)
        );
        assert_eq!(out[0].ended_at, Some(at));
        assert!(out[1].killed());
        assert_eq!((out[1].kill_signal, out[1].checksum_ok), (Some(9), true));
        assert_eq!(
            out[1].kill_reason().as_deref(),
            Some("killed by signal 9 (SIGKILL)")
        );
        assert_eq!(
            (out[2].state, out[2].checksum_ok, out[2].ended_at),
            (proc_state::RUNNING, false, None),
            "no line: not finished"
        );

        let wrong = format!("apf-proc 0 done 40 {:016x}\n", good ^ 1);
        let mut s = ConsoleScanner::new(3);
        s.scan(wrong.as_bytes(), true);
        assert!(!outcomes(&c, &s, &[None; 3])[0].checksum_ok);
    }

    #[test]
    fn a_stopped_process_is_done_with_its_checksum_checked() {
        let mut endless = config(vec![ProcessConfig {
            kind: WorkloadKind::Calc,
            vcpu: 1,
            mem: ByteSize(0),
            work: 0,
            write_pct: 100,
        }]);
        endless.processes.push(endless.processes[0].clone());
        let block = boot_block(&endless);
        let at_128 = workload::expected_checksum(&block.procs[0], 128).unwrap();
        let at_64 = workload::expected_checksum(&block.procs[1], 64).unwrap();
        let console = format!(
            "apf-proc 0 stopped 128 {at_128:016x}\napf-proc 1 stopped 64 {:016x}\n",
            at_64 ^ 1
        );
        let mut s = ConsoleScanner::new(2);
        s.scan(console.as_bytes(), true);
        let at = Duration::from_secs(3);
        let out = outcomes(&endless, &s, &[Some(at), Some(at)]);
        assert_eq!(
            (out[0].state, out[0].progress, out[0].checksum_ok),
            (proc_state::DONE, 128, true)
        );
        assert_eq!((out[0].ended_at, out[0].kill_signal), (Some(at), None));
        assert!(!out[0].killed());
        assert_eq!(
            (out[1].state, out[1].checksum_ok),
            (proc_state::DONE, false),
            "a wrong checksum is caught"
        );
    }
}
