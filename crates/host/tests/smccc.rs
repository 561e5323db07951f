//! The SMCCC dispatcher: routing, calling conventions, return-value encoding,
//! and the ASYNC_PF hand-off to the APF engine.

use apf_abi::psci::{PSCI_CPU_ON, PSCI_CPU_ON_32, PSCI_RET_INVALID_PARAMETERS, PSCI_VERSION};
use apf_abi::sdei::*;
use apf_abi::smccc::*;
use apf_host::apf::fake::FakeVcpu;
use apf_host::apf::{ApfCommand, ApfEngine, HypercallResult};
use apf_host::psci::{PowerState, Psci, PsciAction};
use apf_host::regs::{PlainRegs, mpidr_el1_of};
use apf_host::sdei::SdeiVcpu;
use apf_host::smccc::{ApfService, AsyncPfService, Firmware, SmcccExit, dispatch};

/// Records ASYNC_PF calls and answers with a fixed result.
#[derive(Default)]
struct Recorder {
    available: bool,
    calls: Vec<[u64; 3]>,
    answer: Option<HypercallResult>,
}

impl AsyncPfService for Recorder {
    fn available(&self) -> bool {
        self.available
    }
    fn call(&mut self, x1: u64, x2: u64, x3: u64) -> HypercallResult {
        self.calls.push([x1, x2, x3]);
        self.answer.unwrap_or(HypercallResult {
            status: 0,
            value: 0,
        })
    }
}

struct Vm {
    psci: Psci,
    sdei: SdeiVcpu,
    apf: Recorder,
}

impl Vm {
    fn new() -> Vm {
        Vm {
            psci: Psci::new(2, 0x4000_0000..0x5000_0000),
            sdei: SdeiVcpu::new(),
            apf: Recorder::default(),
        }
    }

    /// Calls `id` with x1.. = `args` from EL `el`; the other registers hold a
    /// marker so untouched ones can be recognised.
    fn call_at(&mut self, el: u8, id: u64, args: &[u64]) -> (SmcccExit, PlainRegs) {
        let mut regs = PlainRegs {
            x: [0x5EED; 31],
            pc: 0x4008_0004,
            ..PlainRegs::default()
        };
        regs.x[0] = id;
        regs.x[1..=args.len()].copy_from_slice(args);
        let mut fw = Firmware {
            vcpu: 0,
            psci: &self.psci,
            sdei: &mut self.sdei,
            async_pf: &mut self.apf,
        };
        let exit = dispatch(&mut fw, el, &mut regs);
        (exit, regs)
    }

    fn call(&mut self, id: u32, args: &[u64]) -> (SmcccExit, PlainRegs) {
        self.call_at(1, u64::from(id), args)
    }
}

const UNTOUCHED: u64 = 0x5EED;
const NOT_SUPPORTED: u64 = u64::MAX; // -1, sign-extended

#[test]
fn smccc_version_and_arch_features() {
    let mut vm = Vm::new();
    let (exit, r) = vm.call(SMCCC_VERSION, &[]);
    assert_eq!((exit, r.x[0]), (SmcccExit::Return, 0x1_0001));
    assert_eq!(r.x[1], UNTOUCHED, "a one-result call leaves x1 alone");
    // The function ID is W0: the upper half of x0 is ignored.
    assert_eq!(
        vm.call_at(1, 0xFFFF_FFFF_0000_0000 | u64::from(SMCCC_VERSION), &[])
            .1
            .x[0],
        0x1_0001
    );
    for (queried, want) in [
        (u64::from(SMCCC_VERSION), 0),
        (u64::from(SMCCC_ARCH_FEATURES), 0),
        (0x8000_8000, NOT_SUPPORTED), // ARCH_WORKAROUND_1
        (0x8000_0002, NOT_SUPPORTED), // SOC_ID
        (u64::from(PSCI_VERSION), NOT_SUPPORTED),
    ] {
        assert_eq!(
            vm.call(SMCCC_ARCH_FEATURES, &[queried]).1.x[0],
            want,
            "{queried:#x}"
        );
    }
}

#[test]
fn unknown_functions_answer_not_supported_sign_extended() {
    let mut vm = Vm::new();
    for id in [
        0x8600_0001u32, // vendor-hyp PTP: not ours
        0x8600_0002,    // the series' ASYNC_PF number, now pKVM's
        0xC600_0030,    // ASYNC_PF with the SMC64 convention
        0x8600_FF00,    // vendor-hyp call count
        0x8400_0020,    // SDEI numbers with the SMC32 convention
        0x0400_0000,    // a yielding call
        0xC500_0000,    // trusted application
        0xFFFF_FFFF,
    ] {
        let (exit, r) = vm.call(id, &[1, 2, 3]);
        assert_eq!(
            (exit, r.x[0]),
            (SmcccExit::Return, NOT_SUPPORTED),
            "{id:#x}"
        );
        assert_eq!(&r.x[1..4], &[1, 2, 3], "{id:#x}: arguments untouched");
    }
    assert!(vm.apf.calls.is_empty());
}

#[test]
fn vendor_uid_and_features() {
    let mut vm = Vm::new();
    let (_, r) = vm.call(VENDOR_HYP_UID, &[]);
    assert_eq!(r.x[..4], APF_UID.map(u64::from));
    let (_, r) = vm.call(VENDOR_HYP_FEATURES, &[]);
    assert_eq!(r.x[..4], [1, 0, 0, 0], "only FEATURES itself without APF");
    vm.apf.available = true;
    let (_, r) = vm.call(VENDOR_HYP_FEATURES, &[]);
    assert_eq!(
        r.x[..4],
        [1, 1 << (0x30 - 32), 0, 0],
        "bit 48 = function 0x30"
    );
}

#[test]
fn async_pf_is_forwarded_as_an_smc32_call() {
    let mut vm = Vm::new();
    vm.apf.answer = Some(HypercallResult {
        status: SMCCC_RET_INVALID_PARAMETER,
        value: 0x42,
    });
    let (exit, r) = vm.call(
        VENDOR_HYP_ASYNC_PF,
        &[0xFFFF_FFFF_0000_0004, 0xAAAA_BBBB_CCCC_DDDD, 1 << 32],
    );
    assert_eq!(exit, SmcccExit::Return);
    assert_eq!(
        vm.apf.calls,
        vec![[4, 0xCCCC_DDDD, 0]],
        "only the low 32 bits of SMC32 arguments"
    );
    assert_eq!(r.x[0], 0xFFFF_FFFF_FFFF_FFFD, "-3 sign-extended");
    assert_eq!(r.x[1], 0x42);
}

#[test]
fn async_pf_reaches_the_apf_engine() {
    let mut engine = ApfEngine::new(0, true);
    let mut vcpu = FakeVcpu::new(0x1000);
    engine
        .command(
            &mut vcpu,
            ApfCommand::SetSdei(u64::from(SDEI_EVENT_ASYNC_PF)),
        )
        .unwrap();
    let psci = Psci::new(1, 0x4000_0000..0x4001_0000);
    let mut sdei = SdeiVcpu::new();
    let mut service = ApfService {
        engine: &mut engine,
        vcpu: &mut vcpu,
    };
    let mut fw = Firmware {
        vcpu: 0,
        psci: &psci,
        sdei: &mut sdei,
        async_pf: &mut service,
    };
    let mut regs = PlainRegs::default();
    let mut ask = |regs: &mut PlainRegs, sub: u64| {
        regs.x[0] = u64::from(VENDOR_HYP_ASYNC_PF);
        regs.x[1] = sub;
        dispatch(&mut fw, 1, regs);
        (regs.x[0], regs.x[1])
    };
    assert_eq!(
        ask(&mut regs, ASYNC_PF_FUNC_VERSION),
        (0, u64::from(apf_abi::APF_VERSION))
    );
    assert_eq!(
        ask(&mut regs, ASYNC_PF_FUNC_SDEI),
        (0, u64::from(SDEI_EVENT_ASYNC_PF))
    );
    assert_eq!(ask(&mut regs, 99).0, NOT_SUPPORTED);
    regs.x[0] = u64::from(VENDOR_HYP_FEATURES);
    dispatch(&mut fw, 1, &mut regs);
    assert_eq!(regs.x[1], 1 << 16, "offered: FEATURES advertises ASYNC_PF");
}

#[test]
fn psci_calls_are_routed_and_narrowed_for_smc32() {
    let mut vm = Vm::new();
    assert_eq!(vm.call(PSCI_VERSION, &[]).1.x[0], 0x1_0001);
    // The same register contents name CPU 1 for SMC32 but no CPU for SMC64.
    let target = 0xFFFF_FFFF_0000_0000 | mpidr_el1_of(1);
    let (exit, r) = vm.call(PSCI_CPU_ON, &[target, 0x4008_0000, 5]);
    assert_eq!(
        (exit, r.x[0]),
        (
            SmcccExit::Return,
            PSCI_RET_INVALID_PARAMETERS.cast_unsigned()
        )
    );
    let (exit, r) = vm.call(
        PSCI_CPU_ON_32,
        &[target, 0xFFFF_FFFF_4008_0000, 0x1_0000_0005],
    );
    assert_eq!(
        exit,
        SmcccExit::Psci(PsciAction::StartCpu {
            target: 1,
            entry: 0x4008_0000,
            context: 5
        })
    );
    assert_eq!(r.x[0], 0, "SUCCESS for the caller");
    assert_eq!(vm.psci.power_state(1), Some(PowerState::OnPending));
}

#[test]
fn sdei_calls_are_routed_with_their_effects() {
    let mut vm = Vm::new();
    assert_eq!(vm.call(SDEI_VERSION, &[]).1.x[0], 1 << 48);
    let apf = u64::from(SDEI_EVENT_ASYNC_PF);
    assert_eq!(
        vm.call(SDEI_EVENT_REGISTER, &[apf, 0x4009_0000, 0, 0, 0])
            .1
            .x[0],
        0
    );
    assert_eq!(vm.call(SDEI_EVENT_ENABLE, &[apf]).1.x[0], 0);
    assert_eq!(vm.call(SDEI_PE_UNMASK, &[]).1.x[0], 0);
    assert_eq!(
        vm.call(SDEI_EVENT_COMPLETE, &[0]).1.x[0],
        SDEI_DENIED.cast_unsigned()
    );
    vm.sdei.inject(SDEI_EVENT_ASYNC_PF).unwrap();
    let (exit, r) = vm.call(SDEI_EVENT_UNREGISTER, &[apf]);
    let SmcccExit::SdeiDiscarded(events) = exit else {
        panic!("{exit:?}")
    };
    assert!(events.contains(SDEI_EVENT_ASYNC_PF));
    assert_eq!(r.x[0], 0);

    vm.call(SDEI_EVENT_REGISTER, &[apf, 0x4009_0000, 0, 0, 0]);
    vm.call(SDEI_EVENT_ENABLE, &[apf]);
    vm.sdei.inject(SDEI_EVENT_ASYNC_PF).unwrap();
    let mut regs = PlainRegs {
        pc: 0x1234,
        ..PlainRegs::default()
    };
    assert_eq!(vm.sdei.deliver(&mut regs), Some(SDEI_EVENT_ASYNC_PF));
    regs.x[0] = u64::from(SDEI_EVENT_COMPLETE_AND_RESUME);
    regs.x[1] = 0x4008_0480;
    let mut fw = Firmware {
        vcpu: 0,
        psci: &vm.psci,
        sdei: &mut vm.sdei,
        async_pf: &mut vm.apf,
    };
    assert_eq!(
        dispatch(&mut fw, 1, &mut regs),
        SmcccExit::SdeiCompleted {
            event: SDEI_EVENT_ASYNC_PF,
            resumed: true
        }
    );
    assert_eq!(
        (regs.pc, regs.elr_el1, regs.x[0]),
        (0x4008_0480, 0x1234, 0),
        "context restored, x0 not clobbered"
    );
}

#[test]
fn calls_from_el0_are_refused_without_effect() {
    let mut vm = Vm::new();
    let (exit, r) = vm.call_at(0, u64::from(PSCI_CPU_ON), &[1, 0x4008_0000, 0]);
    assert_eq!((exit, r.x[0]), (SmcccExit::Return, NOT_SUPPORTED));
    assert_eq!(vm.psci.power_state(1), Some(PowerState::Off));
    vm.apf.available = true;
    vm.call_at(0, u64::from(VENDOR_HYP_ASYNC_PF), &[0]);
    assert!(vm.apf.calls.is_empty());
}
