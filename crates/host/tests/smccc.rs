//! The SMCCC dispatcher: routing, calling conventions, return-value encoding,
//! and ASYNC_PF served by the APF engine through the production path
//! (`dispatch` over the run loop's `VcpuContext`).

use apf_abi::platform::{RAM_BASE, UART_INTID};
use apf_abi::ppi::APF_DEFAULT_PPI;
use apf_abi::psci::{PSCI_CPU_ON, PSCI_CPU_ON_32, PSCI_RET_INVALID_PARAMETERS, PSCI_VERSION};
use apf_abi::sdei::*;
use apf_abi::shared::{REASON_NONE, REASON_PAGE_NOT_PRESENT};
use apf_abi::smccc::*;
use apf_abi::{Gfn, Gpa};
use apf_host::apf::{ApfEngine, FaultDecision};
use apf_host::gic::{Gic, SpiLine};
use apf_host::machine::Machine;
use apf_host::psci::{PowerState, Psci, PsciAction};
use apf_host::regs::{PSTATE_EL1H_MASKED, PlainRegs, mpidr_el1_of};
use apf_host::sdei::SdeiVcpu;
use apf_host::smccc::{Firmware, SmcccExit, deliver_sdei, dispatch};
use apf_host::uart::Pl011;
use apf_host::vcpu::{FlatRam, VcpuContext};
use std::sync::Arc;

const RAM_BYTES: usize = 0x2000;

/// vCPU 0 of a two-vCPU machine, with its APF engine, wired as the run loop
/// wires them: calls go through [`dispatch`], the function the run loop calls.
struct Vm {
    psci: Psci,
    engine: ApfEngine,
    vcpu: VcpuContext<PlainRegs, FlatRam>,
}

impl Vm {
    /// APF not offered.
    fn new() -> Vm {
        Vm::with_apf(false)
    }

    /// APF offered (or not), the VMM's SDEI event and PPI set.
    fn with_apf(offered: bool) -> Vm {
        let ram = RAM_BASE..RAM_BASE + RAM_BYTES as u64;
        let gic = Arc::new(Gic::new(2).unwrap());
        let line = SpiLine::new(Arc::clone(&gic), UART_INTID).unwrap();
        let uart = Pl011::new(Box::new(std::io::sink()), Box::new(line));
        let mut vm = Vm {
            psci: Psci::new(2, 0x4000_0000..0x5000_0000),
            engine: ApfEngine::new(0, offered),
            vcpu: VcpuContext {
                index: 0,
                cpu: PlainRegs::default(),
                sdei: SdeiVcpu::new(),
                ram: FlatRam {
                    base: RAM_BASE,
                    bytes: vec![0; RAM_BYTES],
                },
                machine: Arc::new(Machine::new(gic, uart, ram)),
            },
        };
        if offered {
            vm.engine
                .configure(&mut vm.vcpu, SDEI_EVENT_ASYNC_PF, APF_DEFAULT_PPI)
                .unwrap();
        }
        vm
    }

    /// Dispatches the call in the registers.
    fn dispatch(&mut self, imm: u16) -> SmcccExit {
        let mut fw = Firmware {
            index: 0,
            psci: &self.psci,
            engine: &mut self.engine,
            vcpu: &mut self.vcpu,
        };
        dispatch(&mut fw, imm)
    }

    /// Calls `id` with x1.. = `args` from EL `el`; the other registers hold a
    /// marker so untouched ones can be recognised.
    fn call_at(&mut self, el: u8, id: u64, args: &[u64]) -> (SmcccExit, PlainRegs) {
        let mut regs = PlainRegs {
            x: [0x5EED; 31],
            pc: 0x4008_0004,
            pstate: if el == 1 { PSTATE_EL1H_MASKED } else { 0 },
            ..PlainRegs::default()
        };
        regs.x[0] = id;
        regs.x[1..=args.len()].copy_from_slice(args);
        self.vcpu.cpu = regs;
        let exit = self.dispatch(0);
        (exit, self.vcpu.cpu.clone())
    }

    fn call(&mut self, id: u32, args: &[u64]) -> (SmcccExit, PlainRegs) {
        self.call_at(1, u64::from(id), args)
    }

    fn peek(&self, gpa: u64) -> u32 {
        let off = usize::try_from(gpa - RAM_BASE).unwrap();
        u32::from_le_bytes(self.vcpu.ram.bytes[off..off + 4].try_into().unwrap())
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
    // APF offered: a call routed to the engine by mistake would answer SLOTS.
    let mut vm = Vm::with_apf(true);
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
}

#[test]
fn vendor_uid_and_features() {
    let mut vm = Vm::new();
    let (_, r) = vm.call(VENDOR_HYP_UID, &[]);
    assert_eq!(r.x[..4], APF_UID.map(u64::from));
    let (_, r) = vm.call(VENDOR_HYP_FEATURES, &[]);
    assert_eq!(r.x[..4], [1, 0, 0, 0], "only FEATURES itself without APF");
    let (_, r) = Vm::with_apf(true).call(VENDOR_HYP_FEATURES, &[]);
    assert_eq!(
        r.x[..4],
        [1, 1 << (0x30 - 32), 0, 0],
        "bit 48 = function 0x30"
    );
}

#[test]
fn async_pf_is_an_smc32_call() {
    let mut vm = Vm::with_apf(true);
    // Only the low 32 bits of each argument count: the sub-function is VERSION,
    // and the control word is RAM_BASE | ENABLED | SEPARATE_READY with a zero
    // upper half.
    let (exit, r) = vm.call(
        VENDOR_HYP_ASYNC_PF,
        &[0xFFFF_FFFF_0000_0000 | ASYNC_PF_FUNC_VERSION],
    );
    assert_eq!(exit, SmcccExit::Return);
    assert_eq!((r.x[0], r.x[1]), (0, u64::from(apf_abi::APF_VERSION)));
    let (_, r) = vm.call(
        VENDOR_HYP_ASYNC_PF,
        &[
            ASYNC_PF_FUNC_ENABLE,
            0xAAAA_BBBB_0000_0000 | RAM_BASE | 0b101,
            1 << 32,
        ],
    );
    assert_eq!(r.x[0], 0);
    let control = vm.engine.control();
    assert!(control.enabled && control.separate_ready);
    assert_eq!(control.gpa, RAM_BASE);
    // A refusal is sign-extended, with x1 = 0: reserved bit 3.
    let (_, r) = vm.call(
        VENDOR_HYP_ASYNC_PF,
        &[ASYNC_PF_FUNC_ENABLE, RAM_BASE | 0b1000, 0],
    );
    assert_eq!(r.x[0], 0xFFFF_FFFF_FFFF_FFFD, "-3 sign-extended");
    assert_eq!(r.x[1], 0);
}

#[test]
fn async_pf_reaches_the_apf_engine() {
    let mut vm = Vm::with_apf(true);
    let machine = Arc::clone(&vm.vcpu.machine);
    let mut ask = |sub: u64, args: &[u64]| {
        let mut x = vec![sub];
        x.extend_from_slice(args);
        let (_, r) = vm.call(VENDOR_HYP_ASYNC_PF, &x);
        (r.x[0], r.x[1])
    };
    assert_eq!(
        ask(ASYNC_PF_FUNC_VERSION, &[]),
        (0, u64::from(apf_abi::APF_VERSION))
    );
    assert_eq!(ask(ASYNC_PF_FUNC_SLOTS, &[]), (0, 64));
    assert_eq!(
        ask(ASYNC_PF_FUNC_SDEI, &[]),
        (0, u64::from(SDEI_EVENT_ASYNC_PF))
    );
    assert_eq!(ask(ASYNC_PF_FUNC_IRQ, &[]), (0, u64::from(APF_DEFAULT_PPI)));
    assert_eq!(ask(99, &[]).0, NOT_SUPPORTED);
    // ENABLE claims the block and queues a wake-all: the PPI goes high, and
    // IRQ_ACK lowers it.
    assert_eq!(ask(ASYNC_PF_FUNC_ENABLE, &[RAM_BASE | 0b101, 0]).0, 0);
    assert_eq!(machine.shared_block_holder(Gpa(RAM_BASE)), Some(0));
    assert!(machine.gic.ppi_level(0, APF_DEFAULT_PPI));
    assert_eq!(ask(ASYNC_PF_FUNC_IRQ_ACK, &[]).0, 0);
    assert!(!machine.gic.ppi_level(0, APF_DEFAULT_PPI));
    assert_eq!(
        ask(ASYNC_PF_FUNC_ENABLE, &[RAM_BASE | 0b101, 0]).0,
        (-2i64).cast_unsigned(),
        "NOT_REQUIRED: already enabled"
    );
    let (_, r) = vm.call(VENDOR_HYP_FEATURES, &[]);
    assert_eq!(r.x[1], 1 << 16, "offered: FEATURES advertises ASYNC_PF");
    let (_, r) = Vm::new().call(VENDOR_HYP_ASYNC_PF, &[ASYNC_PF_FUNC_VERSION]);
    assert_eq!(
        (r.x[0], r.x[1]),
        (NOT_SUPPORTED, 0),
        "not offered: the engine refuses"
    );
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
    let mut vm = Vm::with_apf(true);
    assert_eq!(vm.call(SDEI_VERSION, &[]).1.x[0], 1 << 48);
    let apf = u64::from(SDEI_EVENT_ASYNC_PF);
    let register = [apf, 0x4009_0000, 0, 0, 0];
    assert_eq!(vm.call(SDEI_EVENT_REGISTER, &register).1.x[0], 0);
    assert_eq!(vm.call(SDEI_EVENT_ENABLE, &[apf]).1.x[0], 0);
    assert_eq!(vm.call(SDEI_PE_UNMASK, &[]).1.x[0], 0);
    assert_eq!(
        vm.call(SDEI_EVENT_COMPLETE, &[0]).1.x[0],
        SDEI_DENIED.cast_unsigned()
    );

    // A not-present queued, then thrown away unseen by UNREGISTER: the
    // dispatcher tells the engine, which withdraws the words from the block.
    vm.call(
        VENDOR_HYP_ASYNC_PF,
        &[ASYNC_PF_FUNC_ENABLE, RAM_BASE | 0b101, 0],
    );
    let fault_at_el0 = |vm: &mut Vm, gfn: u64| {
        vm.vcpu.cpu.pstate = 0;
        vm.engine.try_async(&mut vm.vcpu, Gfn(gfn))
    };
    assert!(matches!(
        fault_at_el0(&mut vm, 0x4_0001),
        FaultDecision::Async { .. }
    ));
    assert_eq!(vm.peek(RAM_BASE), REASON_PAGE_NOT_PRESENT);
    let (exit, r) = vm.call(SDEI_EVENT_UNREGISTER, &[apf]);
    assert_eq!((exit, r.x[0]), (SmcccExit::Return, 0));
    assert_eq!(
        (vm.peek(RAM_BASE), vm.peek(RAM_BASE + 4)),
        (REASON_NONE, 0),
        "the engine withdrew the not-present"
    );

    // Delivered and completed: COMPLETE_AND_RESUME restores the context.
    vm.call(SDEI_EVENT_REGISTER, &register);
    vm.call(SDEI_EVENT_ENABLE, &[apf]);
    assert!(matches!(
        fault_at_el0(&mut vm, 0x4_0002),
        FaultDecision::Async { .. }
    ));
    vm.vcpu.cpu.pc = 0x1234;
    assert_eq!(
        deliver_sdei(&mut vm.engine, &mut vm.vcpu),
        Some(SDEI_EVENT_ASYNC_PF)
    );
    vm.vcpu.cpu.x[0] = u64::from(SDEI_EVENT_COMPLETE_AND_RESUME);
    vm.vcpu.cpu.x[1] = 0x4008_0480;
    assert_eq!(vm.dispatch(0), SmcccExit::Return);
    let regs = &vm.vcpu.cpu;
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
    let mut vm = Vm::with_apf(true);
    let (_, r) = vm.call_at(0, u64::from(VENDOR_HYP_ASYNC_PF), &[0]);
    assert_eq!((r.x[0], r.x[1]), (NOT_SUPPORTED, 0), "VERSION not answered");
}

#[test]
fn other_immediates_are_refused() {
    let mut vm = Vm::with_apf(true);
    vm.vcpu.cpu = PlainRegs {
        x: [0x5EED; 31],
        pstate: PSTATE_EL1H_MASKED,
        ..PlainRegs::default()
    };
    vm.vcpu.cpu.x[0] = u64::from(VENDOR_HYP_ASYNC_PF);
    vm.vcpu.cpu.x[1] = ASYNC_PF_FUNC_SLOTS;
    assert_eq!(vm.dispatch(1), SmcccExit::Return);
    assert_eq!(
        (vm.vcpu.cpu.x[0], vm.vcpu.cpu.x[1]),
        (NOT_SUPPORTED, ASYNC_PF_FUNC_SLOTS),
        "SLOTS not answered"
    );
}
