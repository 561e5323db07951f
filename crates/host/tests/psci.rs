//! PSCI 1.1: every call with good and hostile arguments and its return code,
//! and the power state machine.

use apf_abi::psci::*;
use apf_abi::smccc::SMCCC_VERSION;
use apf_host::psci::{
    MIGRATE_INFO_TYPE_NOT_PRESENT, PowerState, Psci, PsciAction, PsciOutcome, enter_cpu,
};
use apf_host::regs::{PSTATE_EL1H_MASKED, PlainRegs, mpidr_el1_of};

const RAM: std::ops::Range<u64> = 0x4000_0000..0x4800_0000;
const ENTRY: u64 = 0x4008_1000;

fn ret(code: i64) -> PsciOutcome {
    PsciOutcome::Return(code.cast_unsigned())
}

fn psci() -> Psci {
    Psci::new(4, RAM)
}

#[test]
fn version_features_and_migrate_info() {
    let p = psci();
    assert_eq!(
        p.call(0, PSCI_VERSION, [0; 3]),
        PsciOutcome::Return(0x1_0001)
    );
    let implemented = [
        PSCI_VERSION,
        PSCI_CPU_OFF,
        PSCI_CPU_ON,
        PSCI_CPU_ON_32,
        PSCI_AFFINITY_INFO,
        PSCI_AFFINITY_INFO_32,
        PSCI_MIGRATE_INFO_TYPE,
        PSCI_SYSTEM_OFF,
        PSCI_SYSTEM_RESET,
        PSCI_FEATURES,
        SMCCC_VERSION,
    ];
    for id in implemented {
        assert_eq!(
            p.call(0, PSCI_FEATURES, [u64::from(id), 0, 0]),
            ret(0),
            "{id:#x}"
        );
    }
    let absent = [
        u64::from(PSCI_CPU_SUSPEND),
        0x8400_0005,
        0x8400_000B,
        0xC400_0000,
        (1 << 32) | u64::from(PSCI_VERSION),
        u64::MAX,
    ];
    for id in absent {
        assert_eq!(
            p.call(0, PSCI_FEATURES, [id, 0, 0]),
            ret(PSCI_RET_NOT_SUPPORTED),
            "{id:#x}"
        );
    }
    assert_eq!(
        p.call(0, PSCI_MIGRATE_INFO_TYPE, [0; 3]),
        PsciOutcome::Return(MIGRATE_INFO_TYPE_NOT_PRESENT)
    );
    for id in [PSCI_CPU_SUSPEND, 0x8400_0007, 0x8400_001F, 0xC400_0008] {
        assert_eq!(
            p.call(0, id, [0; 3]),
            ret(PSCI_RET_NOT_SUPPORTED),
            "{id:#x}"
        );
    }
}

#[test]
fn boot_power_states() {
    let p = psci();
    assert_eq!(p.power_state(0), Some(PowerState::On));
    assert_eq!(
        (1..4).map(|i| p.power_state(i)).collect::<Vec<_>>(),
        vec![Some(PowerState::Off); 3]
    );
    assert_eq!(p.power_state(4), None);
}

#[test]
fn cpu_on_starts_an_off_cpu_once() {
    let p = psci();
    for id in [PSCI_CPU_ON, PSCI_CPU_ON_32] {
        let target = if id == PSCI_CPU_ON { 1 } else { 2 };
        assert_eq!(
            p.call(0, id, [mpidr_el1_of(target), ENTRY, 0xC0FFEE]),
            PsciOutcome::Act(PsciAction::StartCpu {
                target,
                entry: ENTRY,
                context: 0xC0FFEE
            })
        );
        assert_eq!(p.power_state(target), Some(PowerState::OnPending));
        assert_eq!(
            p.call(0, id, [mpidr_el1_of(target), ENTRY, 0]),
            ret(PSCI_RET_ON_PENDING)
        );
        assert!(p.mark_on(target));
        assert!(
            !p.mark_on(target),
            "only an on-pending CPU can be marked on"
        );
        assert_eq!(
            p.call(3, id, [mpidr_el1_of(target), ENTRY, 0]),
            ret(PSCI_RET_ALREADY_ON)
        );
    }
    assert_eq!(
        p.call(0, PSCI_CPU_ON, [0, ENTRY, 0]),
        ret(PSCI_RET_ALREADY_ON),
        "itself"
    );
    assert!(!p.mark_on(99));
}

#[test]
fn cpu_on_rejects_nonexistent_cpus_and_bad_entry_points() {
    let p = psci();
    for mpidr in [4, 0x10, 0x100, 1 << 16, 1 << 32, u64::MAX] {
        assert_eq!(
            p.call(0, PSCI_CPU_ON, [mpidr, ENTRY, 0]),
            ret(PSCI_RET_INVALID_PARAMETERS),
            "{mpidr:#x}"
        );
    }
    for entry in [
        0,
        RAM.start - 4,
        RAM.end,
        RAM.end - 2,
        ENTRY + 1,
        ENTRY + 2,
        u64::MAX - 3,
    ] {
        assert_eq!(
            p.call(0, PSCI_CPU_ON, [1, entry, 0]),
            ret(PSCI_RET_INVALID_ADDRESS),
            "{entry:#x}"
        );
    }
    assert_eq!(
        p.power_state(1),
        Some(PowerState::Off),
        "refused calls change nothing"
    );
    assert!(
        matches!(
            p.call(0, PSCI_CPU_ON, [1, RAM.end - 4, 0]),
            PsciOutcome::Act(_)
        ),
        "last word of RAM"
    );
    assert!(
        matches!(
            p.call(0, PSCI_CPU_ON, [2, RAM.start, 0]),
            PsciOutcome::Act(_)
        ),
        "first word"
    );
}

#[test]
fn affinity_info_reports_each_state() {
    let p = psci();
    let info = |aff: u64, level: u64| p.call(0, PSCI_AFFINITY_INFO, [aff, level, 0]);
    assert_eq!(info(0, 0), ret(PSCI_AFFINITY_ON));
    assert_eq!(info(1, 0), ret(PSCI_AFFINITY_OFF));
    p.call(0, PSCI_CPU_ON, [1, ENTRY, 0]);
    assert_eq!(info(1, 0), ret(PSCI_AFFINITY_ON_PENDING));
    assert_eq!(
        p.call(0, PSCI_AFFINITY_INFO_32, [1, 0, 0]),
        ret(PSCI_AFFINITY_ON_PENDING)
    );
    assert_eq!(info(0, 1), ret(PSCI_RET_INVALID_PARAMETERS), "only level 0");
    assert_eq!(info(0, u64::MAX), ret(PSCI_RET_INVALID_PARAMETERS));
    assert_eq!(info(9, 0), ret(PSCI_RET_INVALID_PARAMETERS), "no such CPU");
}

#[test]
fn cpu_off_and_system_calls_are_actions() {
    let p = psci();
    p.call(0, PSCI_CPU_ON, [1, ENTRY, 0]);
    p.mark_on(1);
    assert_eq!(
        p.call(1, PSCI_CPU_OFF, [0; 3]),
        PsciOutcome::Act(PsciAction::CpuOff)
    );
    assert_eq!(p.power_state(1), Some(PowerState::Off));
    assert!(matches!(
        p.call(0, PSCI_CPU_ON, [1, ENTRY, 0]),
        PsciOutcome::Act(PsciAction::StartCpu { .. })
    ));
    assert_eq!(
        p.call(0, PSCI_SYSTEM_OFF, [0; 3]),
        PsciOutcome::Act(PsciAction::SystemOff)
    );
    assert_eq!(
        p.call(2, PSCI_SYSTEM_RESET, [0; 3]),
        PsciOutcome::Act(PsciAction::SystemReset)
    );
    p.reset();
    assert_eq!(
        (0..4).map(|i| p.power_state(i)).collect::<Vec<_>>(),
        vec![
            Some(PowerState::On),
            Some(PowerState::Off),
            Some(PowerState::Off),
            Some(PowerState::Off)
        ]
    );
}

#[test]
fn enter_cpu_starts_at_el1h_with_the_context_in_x0() {
    let mut regs = PlainRegs {
        x: [7; 31],
        pc: 1,
        pstate: 0x6000_0000,
        elr_el1: 5,
        spsr_el1: 6,
    };
    enter_cpu(&mut regs, ENTRY, 0xABCD);
    assert_eq!(regs.x[0], 0xABCD);
    assert!(regs.x[1..].iter().all(|&x| x == 0));
    assert_eq!((regs.pc, regs.pstate), (ENTRY, PSTATE_EL1H_MASKED));
}
