//! Every HVC a guest can make, with arbitrary register values, in arbitrary
//! sequences with faults, fetch completions and guest entries in between: the
//! SMCCC dispatcher, SDEI, PSCI and the APF engine of two vCPUs, through the
//! functions the run loop calls (`smccc::dispatch` for every HVC,
//! `smccc::deliver_sdei` at guest entry) over the run loop's own
//! `VcpuContext`, with plain registers and RAM in place of the interpreter's.
//!
//! Invariants, after every operation:
//! - nothing panics;
//! - every call's x0 is the value the specification defines, checked against an
//!   independent model: SDEI 1.0 (DEN 0054A) for the SDEI calls (state machine,
//!   return codes, CONTEXT values, the registers COMPLETE restores), PSCI 1.1 for
//!   the power calls, SMCCC for the rest; ASYNC_PF answers one of its four codes;
//!   a refused call changes no register but x0;
//! - the SDEI state the platform reports (STATUS, running, masked) is the
//!   model's, and a dispatch enters the registered handler with x0..x3 as DESIGN
//!   §4 says, only for a registered, enabled event on an unmasked PE;
//! - the APF engine never holds more than 64 items, and its page-ready line is
//!   high exactly while a page-ready awaits IRQ_ACK;
//! - the machine records a vCPU as holding a shared block exactly while its
//!   engine is enabled on it (the engine claims and releases it itself).

#![no_main]

use apf_abi::platform::{RAM_BASE, UART_INTID};
use apf_abi::ppi::APF_DEFAULT_PPI;
use apf_abi::psci::*;
use apf_abi::sdei::*;
use apf_abi::shared::SHARED_BLOCK_ALIGN;
use apf_abi::smccc::*;
use apf_abi::{Gfn, Gpa};
use apf_host::apf::{ApfEngine, ApfVcpu, FaultDecision, ItemHandle};
use apf_host::gic::{Gic, SpiLine};
use apf_host::machine::Machine;
use apf_host::psci::{PowerState, Psci, PsciAction, enter_cpu};
use apf_host::regs::{GuestRegs, PSTATE_EL1H_MASKED, PSTATE_MODE_EL1H, PlainRegs};
use apf_host::sdei::{SDEI_EVENT_SW_SIGNALED, SdeiVcpu};
use apf_host::smccc::{Firmware, SmcccExit, deliver_sdei, dispatch};
use apf_host::uart::Pl011;
use apf_host::vcpu::{FlatRam, VcpuContext};
use input::Input;
use libfuzzer_sys::fuzz_target;
use std::sync::Arc;

mod input;

const VCPUS: usize = 2;
const RAM_BYTES: usize = 0x4000;
const RAM_END: u64 = RAM_BASE + RAM_BYTES as u64;

/// Values worth more than their share of random draws.
const VALUES: [u64; 28] = [
    0,
    1,
    2,
    3,
    4,
    5,
    6,
    17,
    18,
    SDEI_EVENT_ASYNC_PF as u64,
    SDEI_EVENT_SW_SIGNALED as u64,
    0x4040_0002,
    (1 << 32) | SDEI_EVENT_ASYNC_PF as u64,
    0xFFFF_FFFF,
    u64::MAX,
    RAM_BASE,
    RAM_BASE | 0b101,
    RAM_BASE | 0b111,
    (RAM_BASE + 0x40) | 0b101,
    (RAM_BASE + 0x48) | 0b101,
    RAM_BASE + 0x1000,
    RAM_BASE + 0x1002,
    RAM_END,
    0x0900_0000 | 0b101,
    0x8000_0001,
    1 << 31,
    0xdead_0000_0000_0001,
    0x1000,
];

/// Function IDs worth more than their share of random draws.
const FUNCTIONS: [u32; 34] = [
    SMCCC_VERSION,
    SMCCC_ARCH_FEATURES,
    VENDOR_HYP_UID,
    VENDOR_HYP_FEATURES,
    VENDOR_HYP_ASYNC_PF,
    VENDOR_HYP_ASYNC_PF,
    VENDOR_HYP_ASYNC_PF,
    0x8600_0031,
    PSCI_VERSION,
    PSCI_CPU_SUSPEND,
    PSCI_CPU_OFF,
    PSCI_CPU_ON,
    PSCI_CPU_ON_32,
    PSCI_AFFINITY_INFO,
    PSCI_AFFINITY_INFO_32,
    PSCI_MIGRATE_INFO_TYPE,
    PSCI_FEATURES,
    SDEI_VERSION,
    SDEI_EVENT_REGISTER,
    SDEI_EVENT_ENABLE,
    SDEI_EVENT_DISABLE,
    SDEI_EVENT_CONTEXT,
    SDEI_EVENT_COMPLETE,
    SDEI_EVENT_COMPLETE_AND_RESUME,
    SDEI_EVENT_UNREGISTER,
    SDEI_EVENT_STATUS,
    SDEI_EVENT_GET_INFO,
    SDEI_EVENT_ROUTING_SET,
    SDEI_PE_MASK,
    SDEI_PE_UNMASK,
    SDEI_INTERRUPT_BIND,
    SDEI_PRIVATE_RESET,
    SDEI_SHARED_RESET,
    0xC400_0033,
];

impl Input<'_> {
    fn word(&mut self) -> u64 {
        u64::from_le_bytes(self.bytes())
    }
    fn value(&mut self) -> u64 {
        match usize::from(self.byte()) {
            i if i < VALUES.len() => VALUES[i],
            i if i < 200 => i as u64,
            _ => self.word(),
        }
    }
    fn function(&mut self) -> u64 {
        match usize::from(self.byte()) {
            i if i < FUNCTIONS.len() * 6 => u64::from(FUNCTIONS[i % FUNCTIONS.len()]),
            i if i < 250 => 0xC400_0020 + (i as u64 % 0x20),
            _ => self.word(),
        }
    }
}

// ---------------------------------------------------------------- SDEI model

/// The platform's two private events in the order the model keeps them:
/// (number, critical).
const EVENTS: [(u32, bool); 2] = [(SDEI_EVENT_SW_SIGNALED, false), (SDEI_EVENT_ASYNC_PF, true)];

fn event_index(number: u64) -> Option<usize> {
    EVENTS.iter().position(|&(n, _)| u64::from(n) == number)
}

#[derive(Debug, Clone, Copy, Default)]
struct ModelHandler {
    registered: bool,
    enabled: bool,
    entry: u64,
    arg: u64,
}

#[derive(Debug, Clone, Copy)]
struct ModelRunning {
    event: usize,
    x: [u64; SDEI_SAVED_REGS],
    pc: u64,
    pstate: u64,
}

/// SDEI 1.0 as DEN 0054A describes it for private, signaled events.
#[derive(Debug, Clone)]
struct SdeiModel {
    masked: bool,
    handlers: [ModelHandler; 2],
    running: Option<ModelRunning>,
}

impl SdeiModel {
    fn new() -> Self {
        SdeiModel {
            masked: true,
            handlers: [ModelHandler::default(); 2],
            running: None,
        }
    }

    fn running_is(&self, i: usize) -> bool {
        self.running.is_some_and(|r| r.event == i)
    }

    fn status(&self, i: usize) -> u64 {
        let h = &self.handlers[i];
        let bit = |set: bool, bit: u64| if set { bit } else { 0 };
        bit(h.registered, SDEI_STATUS_REGISTERED)
            | bit(h.enabled, SDEI_STATUS_ENABLED)
            | bit(self.running_is(i), SDEI_STATUS_RUNNING)
    }

    fn unregister(&mut self, i: usize) -> i64 {
        let running = self.running_is(i);
        if !self.handlers[i].registered {
            return if running { SDEI_PENDING } else { SDEI_DENIED };
        }
        self.handlers[i] = ModelHandler::default();
        if running { SDEI_PENDING } else { SDEI_SUCCESS }
    }

    /// The call's x0, and for COMPLETE the context it must restore:
    /// (x0..x17, pc, pstate, elr/spsr when resuming at `addr`).
    fn call(&mut self, id: u32, x: [u64; 5]) -> Expect {
        let code = |c: i64| Expect::Value(c.cast_unsigned());
        match id {
            SDEI_VERSION => Expect::Value(SDEI_VERSION_1_0),
            SDEI_EVENT_REGISTER => {
                let (entry, flags) = (x[1], x[3]);
                let Some(i) = event_index(x[0])
                    .filter(|_| entry != 0 && entry.is_multiple_of(4) && flags <= SDEI_RM_PE)
                else {
                    return code(SDEI_INVALID_PARAMETERS);
                };
                if self.handlers[i].registered || self.running_is(i) {
                    return code(SDEI_DENIED);
                }
                self.handlers[i] = ModelHandler {
                    registered: true,
                    enabled: false,
                    entry,
                    arg: x[2],
                };
                code(SDEI_SUCCESS)
            }
            SDEI_EVENT_ENABLE | SDEI_EVENT_DISABLE => {
                let Some(i) = event_index(x[0]) else {
                    return code(SDEI_INVALID_PARAMETERS);
                };
                if !self.handlers[i].registered {
                    return code(SDEI_DENIED);
                }
                self.handlers[i].enabled = id == SDEI_EVENT_ENABLE;
                code(SDEI_SUCCESS)
            }
            SDEI_EVENT_CONTEXT => match (usize::try_from(x[0]).ok(), self.running) {
                (Some(n), _) if n >= SDEI_SAVED_REGS => code(SDEI_INVALID_PARAMETERS),
                (None, _) => code(SDEI_INVALID_PARAMETERS),
                (Some(_), None) => code(SDEI_DENIED),
                (Some(n), Some(r)) => Expect::Value(r.x[n]),
            },
            SDEI_EVENT_COMPLETE | SDEI_EVENT_COMPLETE_AND_RESUME => {
                let resume = (id == SDEI_EVENT_COMPLETE_AND_RESUME).then_some(x[0]);
                if resume.is_some_and(|a| !a.is_multiple_of(4)) {
                    return code(SDEI_DENIED);
                }
                match self.running.take() {
                    None => code(SDEI_DENIED),
                    Some(r) => Expect::Completed { saved: r, resume },
                }
            }
            SDEI_EVENT_UNREGISTER => match event_index(x[0]) {
                None => code(SDEI_INVALID_PARAMETERS),
                Some(i) => code(self.unregister(i)),
            },
            SDEI_EVENT_STATUS => match event_index(x[0]) {
                None => code(SDEI_INVALID_PARAMETERS),
                Some(i) => Expect::Value(self.status(i)),
            },
            SDEI_EVENT_GET_INFO => match (event_index(x[0]), x[1]) {
                (None, _) => code(SDEI_INVALID_PARAMETERS),
                (Some(_), SDEI_INFO_TYPE) => Expect::Value(SDEI_TYPE_PRIVATE),
                (Some(_), SDEI_INFO_SIGNALED) => Expect::Value(1),
                (Some(i), SDEI_INFO_PRIORITY) => Expect::Value(u64::from(EVENTS[i].1)),
                (Some(_), _) => code(SDEI_INVALID_PARAMETERS),
            },
            SDEI_EVENT_ROUTING_SET => code(SDEI_INVALID_PARAMETERS),
            SDEI_PE_MASK => {
                let changed = !self.masked;
                self.masked = true;
                Expect::Value(u64::from(changed))
            }
            SDEI_PE_UNMASK => {
                self.masked = false;
                code(SDEI_SUCCESS)
            }
            SDEI_PRIVATE_RESET => {
                let mut ret = SDEI_SUCCESS;
                for i in 0..EVENTS.len() {
                    if self.unregister(i) == SDEI_PENDING {
                        ret = SDEI_DENIED;
                    }
                }
                code(ret)
            }
            SDEI_SHARED_RESET => code(SDEI_SUCCESS),
            _ => code(SDEI_NOT_SUPPORTED),
        }
    }
}

/// What a call must leave in the registers.
#[derive(Debug)]
enum Expect {
    /// x0 = this; no other register changes.
    Value(u64),
    /// x0 is one of these; no other register changes.
    OneOf(&'static [i64]),
    /// x0 and x1 as ASYNC_PF answered (checked separately).
    AsyncPf,
    /// x0..x3 = these.
    Words([u64; 4]),
    /// An SDEI handler completed: the saved context is back.
    Completed {
        saved: ModelRunning,
        resume: Option<u64>,
    },
    /// CPU_ON accepted: x0 = SUCCESS, the target starts later.
    StartCpu(usize),
    /// CPU_OFF, SYSTEM_OFF, SYSTEM_RESET: the caller does not return.
    NoReturn,
}

// ---------------------------------------------------------------- the world

/// One vCPU: registers, SDEI state and RAM as the run loop holds them, the
/// SDEI model, the APF engine.
struct Vcpu {
    ctx: VcpuContext<PlainRegs, FlatRam>,
    model: SdeiModel,
    apf: ApfEngine,
    /// Fetches the engine started and nobody has completed.
    inflight: Vec<ItemHandle>,
    start: Option<(u64, u64)>,
}

/// Puts `regs` at exception level `el` (PSTATE.M: EL0t or EL1h), as a call or
/// a fault from there finds them.
fn set_el(regs: &mut PlainRegs, el: u8) {
    let mode = if el == 0 { 0 } else { PSTATE_MODE_EL1H };
    regs.pstate = (regs.pstate & !0b1111) | mode;
}

struct World {
    vcpus: Vec<Vcpu>,
    psci: Psci,
    /// Its GIC takes the PPI lines, its registry the shared blocks.
    machine: Arc<Machine>,
    offered: bool,
    separate_ready: bool,
    stopped: bool,
}

impl World {
    fn new(offered: bool, separate_ready: bool) -> World {
        let mut world = World {
            vcpus: Vec::new(),
            psci: Psci::new(VCPUS, RAM_BASE..RAM_END),
            machine: {
                let gic = Arc::new(Gic::new(VCPUS).expect("a 2-vCPU GIC"));
                let line = SpiLine::new(Arc::clone(&gic), UART_INTID).expect("the UART's SPI");
                let uart = Pl011::new(Box::new(std::io::sink()), Box::new(line));
                Arc::new(Machine::new(gic, uart, RAM_BASE..RAM_END))
            },
            offered,
            separate_ready,
            stopped: false,
        };
        for (index, id) in (0..VCPUS).zip(0u32..) {
            let mut apf = ApfEngine::new(id, offered);
            if !separate_ready {
                apf.limit_to_v1_0();
            }
            // Each vCPU has RAM of its own: the engine touches only the block it
            // holds, and holding is exclusive, so sharing would show nothing.
            world.vcpus.push(Vcpu {
                ctx: VcpuContext {
                    index,
                    cpu: PlainRegs::default(),
                    sdei: SdeiVcpu::new(),
                    ram: FlatRam {
                        base: RAM_BASE,
                        bytes: vec![0; RAM_BYTES],
                    },
                    machine: Arc::clone(&world.machine),
                },
                model: SdeiModel::new(),
                apf,
                inflight: Vec::new(),
                start: None,
            });
            if offered {
                let (apf, vcpu) = world.split(index);
                apf.configure(vcpu, SDEI_EVENT_ASYNC_PF, APF_DEFAULT_PPI)
                    .expect("the VMM's settings are valid");
            }
        }
        world.power_on(0, RAM_BASE, 0);
        world
    }

    /// vCPU `i`'s engine and what it acts on.
    fn split(&mut self, i: usize) -> (&mut ApfEngine, &mut VcpuContext<PlainRegs, FlatRam>) {
        let v = &mut self.vcpus[i];
        (&mut v.apf, &mut v.ctx)
    }

    fn on(&self, i: usize) -> bool {
        self.psci.power_state(i) == Some(PowerState::On)
    }

    /// `Vcpu::power_on`.
    fn power_on(&mut self, i: usize, entry: u64, context: u64) {
        let v = &mut self.vcpus[i];
        v.ctx.cpu = PlainRegs::default();
        enter_cpu(&mut v.ctx.cpu, entry, context);
        v.ctx.sdei.reset();
        v.model = SdeiModel::new();
        v.apf.reset(&mut v.ctx);
        self.psci.mark_on(i);
    }

    /// The run loop after CPU_OFF.
    fn power_off(&mut self, i: usize) {
        let (apf, vcpu) = self.split(i);
        apf.reset(vcpu);
    }

    /// The model's answer to a call.
    fn expect(&mut self, i: usize, el: u8, imm: u16, x: &[u64; 6]) -> Expect {
        let id = (x[0] & 0xFFFF_FFFF) as u32;
        let v = &mut self.vcpus[i];
        if imm != 0 || el != 1 {
            return Expect::Value(SMCCC_RET_NOT_SUPPORTED.cast_unsigned());
        }
        let narrow = |n: u64| {
            if id & SMCCC_64BIT != 0 {
                n
            } else {
                n & 0xFFFF_FFFF
            }
        };
        let args = [narrow(x[1]), narrow(x[2]), narrow(x[3])];
        let code = |c: i64| Expect::Value(c.cast_unsigned());
        match id {
            SMCCC_VERSION => Expect::Value(u64::from(SMCCC_VERSION_1_1)),
            SMCCC_ARCH_FEATURES => {
                let q = x[1] & 0xFFFF_FFFF;
                code(
                    if q == u64::from(SMCCC_VERSION) || q == u64::from(SMCCC_ARCH_FEATURES) {
                        SMCCC_RET_SUCCESS
                    } else {
                        SMCCC_RET_NOT_SUPPORTED
                    },
                )
            }
            VENDOR_HYP_UID => Expect::Words(APF_UID.map(u64::from)),
            VENDOR_HYP_FEATURES => Expect::Words([
                1,
                u64::from(self.offered) << (VENDOR_HYP_FUNC_ASYNC_PF - 32),
                0,
                0,
            ]),
            VENDOR_HYP_ASYNC_PF => Expect::AsyncPf,
            PSCI_VERSION => Expect::Value(u64::from(PSCI_VERSION_1_1)),
            PSCI_FEATURES => code(match u32::try_from(args[0]) {
                Ok(
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
                    | SMCCC_VERSION,
                ) => PSCI_RET_SUCCESS,
                _ => PSCI_RET_NOT_SUPPORTED,
            }),
            PSCI_CPU_ON | PSCI_CPU_ON_32 => {
                let Some(target) = target_of(args[0]) else {
                    return code(PSCI_RET_INVALID_PARAMETERS);
                };
                let entry = args[1];
                if !entry.is_multiple_of(4) || !(RAM_BASE..=RAM_END - 4).contains(&entry) {
                    return code(PSCI_RET_INVALID_ADDRESS);
                }
                match self.psci.power_state(target) {
                    Some(PowerState::Off) => Expect::StartCpu(target),
                    Some(PowerState::OnPending) => code(PSCI_RET_ON_PENDING),
                    _ => code(PSCI_RET_ALREADY_ON),
                }
            }
            PSCI_AFFINITY_INFO | PSCI_AFFINITY_INFO_32 => match (target_of(args[0]), args[1]) {
                (Some(t), 0) => code(match self.psci.power_state(t) {
                    Some(PowerState::On) => PSCI_AFFINITY_ON,
                    Some(PowerState::Off) => PSCI_AFFINITY_OFF,
                    _ => PSCI_AFFINITY_ON_PENDING,
                }),
                _ => code(PSCI_RET_INVALID_PARAMETERS),
            },
            PSCI_MIGRATE_INFO_TYPE => Expect::Value(2),
            PSCI_CPU_OFF | PSCI_SYSTEM_OFF | PSCI_SYSTEM_RESET => Expect::NoReturn,
            SDEI_FIRST..=SDEI_LAST => v.model.call(id, [x[1], x[2], x[3], x[4], x[5]]),
            _ => Expect::OneOf(&[SMCCC_RET_NOT_SUPPORTED]),
        }
    }

    /// An HVC by vCPU `i` at `el` with `x` in x0..x5, through `dispatch` as
    /// `Vcpu::hypercall` calls it.
    fn call(&mut self, i: usize, el: u8, imm: u16, x: [u64; 6]) {
        let regs = &mut self.vcpus[i].ctx.cpu;
        set_el(regs, el);
        for (n, value) in x.iter().enumerate() {
            regs.set_x(n, *value);
        }
        let before = regs.clone();
        let expect = self.expect(i, el, imm, &x);

        let v = &mut self.vcpus[i];
        let mut fw = Firmware {
            index: i,
            psci: &self.psci,
            engine: &mut v.apf,
            vcpu: &mut v.ctx,
        };
        let action = match dispatch(&mut fw, imm) {
            SmcccExit::Return => None,
            SmcccExit::Psci(a) => Some(a),
        };
        self.check_call(i, &before, expect, action);
        match action {
            Some(PsciAction::StartCpu {
                target,
                entry,
                context,
            }) => self.vcpus[target].start = Some((entry, context)),
            Some(PsciAction::CpuOff) => self.power_off(i),
            Some(PsciAction::SystemOff | PsciAction::SystemReset) => self.stopped = true,
            None => {}
        }
    }

    fn check_call(&self, i: usize, before: &PlainRegs, expect: Expect, action: Option<PsciAction>) {
        let regs = &self.vcpus[i].ctx.cpu;
        let unchanged_but = |from: usize| {
            for n in from..31 {
                assert_eq!(regs.x(n), before.x(n), "x{n} changed: {expect:?}");
            }
            assert_eq!((regs.pc, regs.pstate), (before.pc, before.pstate));
            assert_eq!(
                (regs.elr_el1, regs.spsr_el1),
                (before.elr_el1, before.spsr_el1)
            );
        };
        let x0 = regs.x(0);
        match expect {
            Expect::Value(want) => {
                assert_eq!(x0, want, "x0 of {:#x}", before.x(0));
                unchanged_but(1);
            }
            Expect::OneOf(codes) => {
                assert!(
                    codes.contains(&x0.cast_signed()),
                    "x0 = {x0:#x} of {:#x}",
                    before.x(0)
                );
                unchanged_but(1);
            }
            Expect::AsyncPf => {
                let status = x0.cast_signed();
                assert!(
                    [
                        SMCCC_RET_SUCCESS,
                        SMCCC_RET_NOT_SUPPORTED,
                        SMCCC_RET_NOT_REQUIRED,
                        SMCCC_RET_INVALID_PARAMETER
                    ]
                    .contains(&status),
                    "ASYNC_PF returned {status}"
                );
                if !self.offered {
                    assert_eq!(status, SMCCC_RET_NOT_SUPPORTED);
                }
                if status != SMCCC_RET_SUCCESS {
                    assert_eq!(regs.x(1), 0);
                }
                unchanged_but(2);
            }
            Expect::Words(w) => {
                assert_eq!([regs.x(0), regs.x(1), regs.x(2), regs.x(3)], w);
                unchanged_but(4);
            }
            Expect::Completed { saved, resume } => {
                for (n, v) in saved.x.iter().enumerate() {
                    assert_eq!(regs.x(n), *v, "COMPLETE restores x{n}");
                }
                match resume {
                    None => assert_eq!((regs.pc, regs.pstate), (saved.pc, saved.pstate)),
                    Some(addr) => {
                        assert_eq!((regs.pc, regs.pstate), (addr, PSTATE_EL1H_MASKED));
                        assert_eq!((regs.elr_el1, regs.spsr_el1), (saved.pc, saved.pstate));
                    }
                }
            }
            Expect::StartCpu(target) => {
                assert!(
                    matches!(action, Some(PsciAction::StartCpu { target: t, .. }) if t == target),
                    "{action:?}"
                );
                assert_eq!(x0, 0);
            }
            Expect::NoReturn => assert!(
                matches!(
                    action,
                    Some(PsciAction::CpuOff | PsciAction::SystemOff | PsciAction::SystemReset)
                ),
                "{action:?}"
            ),
        }
    }

    /// `Vcpu::step` up to guest entry: collect completions and send page-readies,
    /// then deliver SDEI.
    fn enter(&mut self, i: usize) {
        let v = &mut self.vcpus[i];
        v.apf.service(&mut v.ctx);
        let deliverable = v.ctx.sdei.has_deliverable();
        let before = v.ctx.cpu.clone();
        let delivered = deliver_sdei(&mut v.apf, &mut v.ctx);
        assert_eq!(
            delivered.is_some(),
            deliverable,
            "has_deliverable agrees with deliver"
        );
        let Some(event) = delivered else {
            return;
        };
        let index = event_index(u64::from(event)).expect("one of ours");
        let h = v.model.handlers[index];
        assert!(
            h.registered && h.enabled && !v.model.masked && v.model.running.is_none(),
            "dispatch of {event:#x} against {:?}",
            v.model
        );
        let r = &v.ctx.cpu;
        assert_eq!(
            [r.x(0), r.x(1), r.x(2), r.x(3)],
            [u64::from(event), h.arg, before.pc, before.pstate]
        );
        assert!((4..SDEI_SAVED_REGS).all(|n| r.x(n) == 0));
        assert_eq!((r.pc, r.pstate), (h.entry, PSTATE_EL1H_MASKED));
        v.model.running = Some(ModelRunning {
            event: index,
            x: std::array::from_fn(|n| before.x(n)),
            pc: before.pc,
            pstate: before.pstate,
        });
    }

    /// A stage-2 fault at `el` on `gfn` that needs I/O.
    fn fault(&mut self, i: usize, el: u8, gfn: Gfn) {
        set_el(&mut self.vcpus[i].ctx.cpu, el);
        let (apf, vcpu) = self.split(i);
        match apf.try_async(vcpu, gfn) {
            FaultDecision::Async { cookie, .. } => {
                let handle = ItemHandle::from_cookie(cookie).expect("the engine's own cookie");
                self.vcpus[i].inflight.push(handle);
            }
            FaultDecision::Halt => {
                // The run loop waits for the page or an interrupt; here the guest
                // just goes on (an interrupt came).
                self.vcpus[i].apf.end_halt();
            }
            FaultDecision::Sync(_) => {}
        }
    }

    /// The guest takes a notification off a channel (token, then reason).
    fn guest_takes(&mut self, i: usize, ready: bool) {
        let block = self.vcpus[i].apf.control();
        if !block.enabled {
            return;
        }
        let base = block.gpa + if ready { 8 } else { 0 };
        let vcpu = &mut self.vcpus[i].ctx;
        let _ = vcpu.write_u32(base + 4, 0);
        let _ = vcpu.write_u32(base, 0);
    }

    fn check_state(&self) {
        for (i, v) in self.vcpus.iter().enumerate() {
            assert_eq!(v.ctx.sdei.is_masked(), v.model.masked, "vcpu{i} masked");
            assert_eq!(
                v.ctx.sdei.is_running(),
                v.model.running.is_some(),
                "vcpu{i} running"
            );
            for (e, &(number, _)) in EVENTS.iter().enumerate() {
                let mut probe = v.ctx.sdei.clone();
                let mut regs = PlainRegs::default();
                regs.set_x(1, u64::from(number));
                let got = match probe.call(SDEI_EVENT_STATUS, &mut regs) {
                    apf_host::sdei::SdeiOutcome::Return(s) => s,
                    other => panic!("STATUS answered {other:?}"),
                };
                assert_eq!(got, v.model.status(e), "vcpu{i} STATUS of {number:#x}");
            }
            assert!(v.apf.outstanding() <= 64);
            let gic = &self.machine.gic;
            assert!(
                (16..32)
                    .filter(|&p| p != APF_DEFAULT_PPI)
                    .all(|p| !gic.ppi_level(i, p)),
                "vcpu{i}: the engine drives only its PPI"
            );
            let line = gic.ppi_level(i, APF_DEFAULT_PPI);
            assert_eq!(
                line,
                v.apf.page_ready_pending().is_some(),
                "vcpu{i}: PPI line vs page-ready awaiting IRQ_ACK"
            );
            if !self.offered || !self.separate_ready {
                assert!(!v.apf.control().separate_ready);
            }
            let control = v.apf.control();
            if control.enabled {
                assert_eq!(
                    self.machine.shared_block_holder(Gpa(control.gpa)),
                    Some(i),
                    "vcpu{i} is enabled on a block the machine does not give it"
                );
            }
        }
        // Every block held is the block of an enabled engine (none leaks).
        for gpa in (RAM_BASE..RAM_END).step_by(usize::try_from(SHARED_BLOCK_ALIGN).expect("64")) {
            if let Some(holder) = self.machine.shared_block_holder(Gpa(gpa)) {
                let control = self.vcpus[holder].apf.control();
                assert!(
                    control.enabled && control.gpa == gpa,
                    "vcpu{holder} holds {gpa:#x} with control {control:?}"
                );
            }
        }
    }
}

/// The vCPU an MPIDR names on a 2-vCPU machine (Aff0 0 or 1, the rest 0).
fn target_of(mpidr: u64) -> Option<usize> {
    let aff = mpidr & 0xFF_00FF_FFFF;
    usize::try_from(aff).ok().filter(|&t| t < VCPUS)
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input(data);
    let setup = input.byte();
    let mut world = World::new(setup & 1 == 0, setup & 2 == 0);
    let mut ops = 0;
    while !input.is_empty() && !world.stopped && ops < 512 {
        ops += 1;
        let op = input.byte();
        let i = usize::from(op >> 7);
        if !world.on(i) {
            if let Some((entry, context)) = world.vcpus[i].start.take() {
                world.power_on(i, entry, context);
            }
            continue;
        }
        match op & 0x7F {
            0..=63 => {
                let el = u8::from(op & 0x3F != 0x3F);
                let imm = if op & 0x3F == 0x3E {
                    u16::from(input.byte()) | 1
                } else {
                    0
                };
                let x = [
                    input.function(),
                    input.value(),
                    input.value(),
                    input.value(),
                    input.value(),
                    input.value(),
                ];
                world.call(i, el, imm, x);
            }
            64..=79 => {
                let b = input.byte();
                world.fault(
                    i,
                    u8::from(b & 0x80 != 0),
                    Gfn(u64::from(b & 0x3F) + 0x40000),
                );
            }
            80..=95 => {
                let b = input.byte();
                let inflight = &mut world.vcpus[i].inflight;
                if !inflight.is_empty() {
                    let k = usize::from(b) % inflight.len();
                    let handle = if b & 0x40 != 0 {
                        inflight[k]
                    } else {
                        inflight.swap_remove(k)
                    };
                    world.vcpus[i].apf.port().complete(handle, b & 0x80 == 0);
                }
            }
            96..=111 => world.enter(i),
            112..=119 => world.guest_takes(i, false),
            _ => world.guest_takes(i, true),
        }
        world.check_state();
    }
});
