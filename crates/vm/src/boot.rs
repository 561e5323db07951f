//! The boot block: what the built-in guest is told to run, and what it reports
//! back about each process.

use crate::config::{VmConfig, WorkloadKind};
use crate::workload;
use apf_abi::Gpa;
use apf_abi::boot::{BOOT_BLOCK_BYTES, BOOT_BLOCK_GPA, BootBlock, ProcSpec, proc_state};
use apf_abi::platform::RAM_BASE;
use apf_mem::GuestMemory;
use std::time::Duration;

/// One process's outcome, checked against the Rust reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessOutcome {
    /// Index in the configuration.
    pub index: usize,
    /// Workload.
    pub kind: WorkloadKind,
    /// The vCPU it ran on.
    pub vcpu: u32,
    /// Final state ([`proc_state`]).
    pub state: u32,
    /// Units of work done.
    pub progress: u64,
    /// Its checksum.
    pub checksum: u64,
    /// Whether the checksum equals the reference's for that progress.
    pub checksum_ok: bool,
    /// The syndrome that killed it, if the built-in guest killed it.
    pub kill_esr: u32,
    /// The signal that killed it, if a Linux guest killed it.
    pub kill_signal: Option<u32>,
    /// When the host first saw it ended (done or killed), from the run's start
    /// (for a Linux guest, from the init's `apf-init start`: the boot is not the
    /// process's time); `None` if it was still running when the run ended.
    pub ended_at: Option<Duration>,
}

impl ProcessOutcome {
    /// Whether the guest killed it.
    pub fn killed(&self) -> bool {
        self.state == proc_state::KILLED
    }

    /// Why the guest killed it, from the syndrome the guest recorded: e.g.
    /// "external abort on a data read (ESR 0x92000010)"; `None` if it was not
    /// killed.
    pub fn kill_reason(&self) -> Option<String> {
        self.killed().then(|| match self.kill_signal {
            Some(signal) => signal_reason(signal),
            None => kill_reason(self.kill_esr),
        })
    }
}

/// The exception `esr` (a process's `kill_esr`) in words, with its value.
pub(crate) fn kill_reason(esr: u32) -> String {
    use apf_abi::esr::{Esr, ISS_FSC_MASK, ec, fsc};
    let e = Esr(u64::from(esr));
    let status = u32::try_from(e.iss() & ISS_FSC_MASK).unwrap_or(u32::MAX);
    let what = match e.ec() {
        ec::DABT_LOWER | ec::DABT_CURRENT => {
            let access = if e.is_write_abort() { "write" } else { "read" };
            if status == fsc::SYNC_EXTERNAL {
                format!("external abort on a data {access}")
            } else {
                format!("data abort on a {access}, fault status {status:#04x}")
            }
        }
        ec::IABT_LOWER | ec::IABT_CURRENT if status == fsc::SYNC_EXTERNAL => {
            "external abort on an instruction fetch".into()
        }
        ec::IABT_LOWER | ec::IABT_CURRENT => {
            format!("instruction abort, fault status {status:#04x}")
        }
        ec::UNKNOWN => "undefined instruction".into(),
        ec::PC_ALIGNMENT => "misaligned PC".into(),
        ec::SP_ALIGNMENT => "misaligned stack pointer".into(),
        ec::BRK64 => "breakpoint (BRK)".into(),
        ec::ILLEGAL_STATE => "illegal execution state".into(),
        ec::SYSREG => "trapped system register access".into(),
        ec::FP_ASIMD => "trapped SIMD/FP access".into(),
        class => format!("exception class {class:#04x}"),
    };
    format!("{what} (ESR {esr:#010x})")
}

/// A Linux signal in words, with its number: "killed by signal 9 (SIGKILL)".
pub(crate) fn signal_reason(signal: u32) -> String {
    // The arm64 (asm-generic) numbers of the signals that kill a process.
    let name = match signal {
        1 => "SIGHUP",
        2 => "SIGINT",
        3 => "SIGQUIT",
        4 => "SIGILL",
        5 => "SIGTRAP",
        6 => "SIGABRT",
        7 => "SIGBUS",
        8 => "SIGFPE",
        9 => "SIGKILL",
        11 => "SIGSEGV",
        13 => "SIGPIPE",
        14 => "SIGALRM",
        15 => "SIGTERM",
        24 => "SIGXCPU",
        25 => "SIGXFSZ",
        31 => "SIGSYS",
        _ => "",
    };
    if name.is_empty() {
        format!("killed by signal {signal}")
    } else {
        format!("killed by signal {signal} ({name})")
    }
}

/// A seed per process, derived from the run's (splitmix64).
fn process_seed(run_seed: u64, index: usize) -> u64 {
    let mut z = run_seed.wrapping_add((index as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The boot block that tells the built-in guest what to run.
pub fn boot_block(config: &VmConfig) -> BootBlock {
    let mut block = BootBlock {
        nr_vcpus: config.vcpus,
        nr_procs: u32::try_from(config.processes.len()).unwrap_or(0),
        ram_base: RAM_BASE,
        ram_size: config.ram.0,
        seed: config.seed,
        ..BootBlock::default()
    };
    for (i, p) in config.processes.iter().enumerate() {
        block.procs[i] = ProcSpec {
            kind: p.kind.abi(),
            vcpu: p.vcpu,
            mem_bytes: if p.kind == WorkloadKind::Calc {
                0
            } else {
                p.mem.0
            },
            work: p.work,
            seed: process_seed(config.seed, i),
            write_pct: p.write_pct,
            reserved: 0,
        };
    }
    block
}

pub(crate) fn read_boot_block(memory: &GuestMemory) -> Option<BootBlock> {
    let mut bytes = [0u8; BOOT_BLOCK_BYTES];
    memory.read_bytes(Gpa(BOOT_BLOCK_GPA), &mut bytes).ok()?;
    BootBlock::from_bytes(&bytes)
}

pub(crate) fn outcomes(
    config: &VmConfig,
    block: &BootBlock,
    ended_at: &[Option<Duration>],
) -> Vec<ProcessOutcome> {
    config
        .processes
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let r = block.results[i];
            ProcessOutcome {
                index: i,
                kind: p.kind,
                vcpu: p.vcpu,
                state: r.state,
                progress: r.progress,
                checksum: r.checksum,
                checksum_ok: workload::verify(&block.procs[i], &r).is_ok(),
                kill_esr: r.kill_esr,
                kill_signal: None,
                ended_at: ended_at.get(i).copied().flatten(),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kill_is_explained_from_its_syndrome() {
        use apf_abi::esr::{DataAbort, InstructionAbort, ec, fsc};
        let data = |write, dfsc| {
            DataAbort {
                syndrome: None,
                write,
                s1ptw: false,
                cache_maintenance: false,
                external: false,
                far_not_valid: false,
                dfsc,
            }
            .encode(ec::DABT_LOWER)
            .0
        };
        let lost_read = u32::try_from(data(false, fsc::SYNC_EXTERNAL)).unwrap();
        assert_eq!(
            kill_reason(lost_read),
            format!("external abort on a data read (ESR {lost_read:#010x})")
        );
        let lost_write = u32::try_from(data(true, fsc::SYNC_EXTERNAL)).unwrap();
        assert!(kill_reason(lost_write).starts_with("external abort on a data write"));
        let fetch = InstructionAbort {
            s1ptw: false,
            external: false,
            far_not_valid: false,
            ifsc: fsc::SYNC_EXTERNAL,
        }
        .encode(ec::IABT_LOWER)
        .0;
        assert!(
            kill_reason(u32::try_from(fetch).unwrap())
                .starts_with("external abort on an instruction fetch")
        );
        let perm = u32::try_from(data(true, fsc::PERMISSION_L3)).unwrap();
        assert!(kill_reason(perm).starts_with("data abort on a write, fault status 0x0f"));
        assert_eq!(
            kill_reason(0x0200_0000),
            "undefined instruction (ESR 0x02000000)"
        );

        let mut p = ProcessOutcome {
            index: 0,
            kind: WorkloadKind::Scan,
            vcpu: 0,
            state: proc_state::DONE,
            progress: 10,
            checksum: 0,
            checksum_ok: true,
            kill_esr: 0,
            kill_signal: None,
            ended_at: None,
        };
        assert_eq!(p.kill_reason(), None);
        p.state = proc_state::KILLED;
        p.kill_esr = lost_read;
        assert!(p.killed());
        assert_eq!(p.kill_reason(), Some(kill_reason(lost_read)));
        p.kill_signal = Some(11);
        assert_eq!(
            p.kill_reason().as_deref(),
            Some("killed by signal 11 (SIGSEGV)")
        );
        assert_eq!(signal_reason(40), "killed by signal 40");
    }
}
