//! Model-checked (shuttle): vCPUs' ENABLEs, disables, resets and restores racing
//! for one APF shared block. Each engine claims through the real [`Machine`], as
//! the run loop's vCPU view does, and every view operation is a point where
//! shuttle may switch vCPUs (a real vCPU thread can be preempted anywhere).
//!
//! The invariant: two vCPUs never both hold the same block. Once the calls
//! return, a block is held in the machine by exactly the vCPU whose engine is
//! enabled on it, or by none if no engine is.

use apf_abi::control::{CONTROL_ENABLED, CONTROL_SEPARATE_READY};
use apf_abi::platform::{RAM_BASE, UART_INTID};
use apf_abi::sdei::SDEI_EVENT_ASYNC_PF;
use apf_abi::shared::SHARED_BLOCK_ALIGN;
use apf_abi::smccc::{
    ASYNC_PF_FUNC_ENABLE, SMCCC_RET_INVALID_PARAMETER, SMCCC_RET_NOT_REQUIRED, SMCCC_RET_SUCCESS,
};
use apf_abi::{Gfn, Gpa};
use apf_host::apf::fake::FakeVcpu;
use apf_host::apf::{
    ApfCommand, ApfEngine, ApfVcpu, FaultDecision, GuestMemoryError, SdeiCancelError,
    SdeiInjectError,
};
use apf_host::gic::{Gic, SpiLine};
use apf_host::machine::Machine;
use apf_host::uart::Pl011;
use shuttle::thread;
use std::sync::Arc;

#[path = "support/shuttle_word.rs"]
mod shuttle_word;
use shuttle_word::ShuttleWord;

type Engine = ApfEngine<ShuttleWord>;

const RAM: usize = 0x1000;
const A: u64 = RAM_BASE + 0x400;
const B: u64 = RAM_BASE + 0x800;
const PPI: u32 = 17;
const ITERATIONS: usize = 2000;

/// vCPU `index` as its engine sees it: the fake's own state, and the shared
/// block registry of the machine every vCPU shares.
struct View {
    fake: FakeVcpu,
    machine: Arc<Machine>,
    index: usize,
}

impl ApfVcpu for View {
    fn exception_level(&self) -> u8 {
        self.fake.exception_level()
    }
    fn sdei_running(&self) -> bool {
        self.fake.sdei_running()
    }
    fn sdei_deliverable(&self, event: u32) -> bool {
        self.fake.sdei_deliverable(event)
    }
    fn sdei_inject(&mut self, event: u32) -> Result<(), SdeiInjectError> {
        self.fake.sdei_inject(event)
    }
    fn sdei_cancel(&mut self, event: u32) -> Result<(), SdeiCancelError> {
        self.fake.sdei_cancel(event)
    }
    fn set_ppi_level(&mut self, intid: u32, level: bool) {
        self.fake.set_ppi_level(intid, level);
    }
    fn claim_shared_block(&mut self, gpa: u64, len: u64) -> bool {
        thread::yield_now();
        let ok = self.machine.claim_shared_block(self.index, Gpa(gpa), len);
        thread::yield_now();
        ok
    }
    fn release_shared_block(&mut self, gpa: u64) {
        thread::yield_now();
        self.machine.release_shared_block(self.index, Gpa(gpa));
        thread::yield_now();
    }
    fn read_u32(&mut self, gpa: u64) -> Result<u32, GuestMemoryError> {
        thread::yield_now();
        self.assert_holds(gpa);
        self.fake.read_u32(gpa)
    }
    fn write_u32(&mut self, gpa: u64, value: u32) -> Result<(), GuestMemoryError> {
        thread::yield_now();
        self.assert_holds(gpa);
        self.fake.write_u32(gpa, value)
    }
}

impl View {
    /// The engine touches guest memory only in its shared block: it must hold it,
    /// or it may be another vCPU's.
    fn assert_holds(&self, gpa: u64) {
        let block = gpa & !(SHARED_BLOCK_ALIGN - 1);
        assert_eq!(
            self.machine.shared_block_holder(Gpa(block)),
            Some(self.index),
            "vCPU {} touches the block at {block:#x} it does not hold",
            self.index
        );
    }
}

struct Vcpu {
    engine: Engine,
    view: View,
}

impl Vcpu {
    /// The guest's ENABLE, as the run loop (`Vcpu::hypercall`) passes it on.
    fn enable(&mut self, block: Option<u64>) -> i64 {
        let raw = block.map_or(0, |b| b | CONTROL_ENABLED | CONTROL_SEPARATE_READY);
        self.engine
            .hypercall(&mut self.view, ASYNC_PF_FUNC_ENABLE, raw, 0)
            .status
    }

    /// What the run loop does at CPU_OFF.
    fn power_off(&mut self) {
        self.engine.reset(&mut self.view);
    }

    /// The VMM's SET_CONTROL (a restore).
    fn restore(&mut self, block: u64) -> bool {
        let raw = block | CONTROL_ENABLED | CONTROL_SEPARATE_READY;
        self.engine
            .command(&mut self.view, ApfCommand::SetControl(raw))
            .is_ok()
    }

    fn block(&self) -> Option<u64> {
        let word = self.engine.control();
        word.enabled.then_some(word.gpa)
    }
}

/// Two configured vCPUs on one machine; vCPU 0 enabled at `A`.
fn rig() -> (Arc<Machine>, Vcpu, Vcpu) {
    let gic = Arc::new(Gic::new(2).unwrap());
    let line = SpiLine::new(Arc::clone(&gic), UART_INTID).unwrap();
    let uart = Pl011::new(Box::new(std::io::sink()), Box::new(line));
    let machine = Arc::new(Machine::new(gic, uart, RAM_BASE..RAM_BASE + RAM as u64));
    let mut vcpus = (0..2).zip(0u32..).map(|(index, id)| {
        let mut engine = Engine::new_generic(id, true);
        let mut fake = FakeVcpu::new(RAM);
        engine
            .configure(&mut fake, SDEI_EVENT_ASYNC_PF, PPI)
            .unwrap();
        Vcpu {
            engine,
            view: View {
                fake,
                machine: Arc::clone(&machine),
                index,
            },
        }
    });
    let (mut v0, v1) = (vcpus.next().unwrap(), vcpus.next().unwrap());
    assert_eq!(v0.enable(Some(A)), SMCCC_RET_SUCCESS);
    (machine, v0, v1)
}

/// Neither vCPU believes it owns a block the other holds, and the machine's
/// record of each block is the vCPU whose engine is enabled on it.
fn assert_exclusive(machine: &Machine, v: [&Vcpu; 2]) {
    let [b0, b1] = v.map(Vcpu::block);
    assert!(
        b0.is_none() || b0 != b1,
        "both vCPUs enabled at {b0:#x?}: both engines write that block"
    );
    for block in [A, B] {
        let engine = v.iter().position(|v| v.block() == Some(block));
        assert_eq!(
            machine.shared_block_holder(Gpa(block)),
            engine,
            "the machine's holder of {block:#x} is not the vCPU enabled on it"
        );
    }
}

/// Runs `op0` on vCPU 0 (enabled at `A`) and `op1` on vCPU 1 (disabled) at once.
fn race(op0: fn(&mut Vcpu), op1: fn(&mut Vcpu)) {
    let (machine, mut v0, mut v1) = rig();
    let t0 = thread::spawn(move || {
        op0(&mut v0);
        v0
    });
    op1(&mut v1);
    let v0 = t0.join().unwrap();
    assert_exclusive(&machine, [&v0, &v1]);
}

fn check(op0: fn(&mut Vcpu), op1: fn(&mut Vcpu)) {
    shuttle::check_random(move || race(op0, op1), ITERATIONS);
    shuttle::check_pct(move || race(op0, op1), ITERATIONS, 3);
}

fn enable_a(v: &mut Vcpu) {
    let status = v.enable(Some(A));
    assert!(
        status == SMCCC_RET_SUCCESS || status == SMCCC_RET_INVALID_PARAMETER,
        "ENABLE(A): {status}"
    );
}

fn enable_b(v: &mut Vcpu) {
    let status = v.enable(Some(B));
    assert!(
        status == SMCCC_RET_SUCCESS || status == SMCCC_RET_INVALID_PARAMETER,
        "ENABLE(B): {status}"
    );
}

/// The race of issue 12: vCPU 0, enabled at A, asks for B and is told
/// NOT_REQUIRED; it must hold A throughout, so vCPU 1 never gets A.
#[test]
fn shuttle_not_required_enable_keeps_its_block() {
    check(
        |v0| {
            assert_eq!(v0.enable(Some(B)), SMCCC_RET_NOT_REQUIRED);
            assert_eq!(v0.block(), Some(A));
        },
        enable_a,
    );
}

/// vCPU 0 disables while vCPU 1 asks for its block: granted only once given back.
#[test]
fn shuttle_disable_vs_enable_of_its_block() {
    check(
        |v0| assert_eq!(v0.enable(None), SMCCC_RET_SUCCESS),
        enable_a,
    );
}

/// vCPU 0 is powered off (reset) while vCPU 1 asks for its block.
#[test]
fn shuttle_power_off_vs_enable_of_its_block() {
    check(Vcpu::power_off, enable_a);
}

/// The VMM moves vCPU 0 from A to B while vCPU 1 asks for B: one of them gets
/// B, and vCPU 0 holds A until it has B.
#[test]
fn shuttle_restore_to_another_block_vs_enable_of_it() {
    check(
        |v0| {
            let moved = v0.restore(B);
            assert_eq!(v0.block(), Some(if moved { B } else { A }));
        },
        enable_b,
    );
}

/// The VMM moves vCPU 0 from A to B while vCPU 1 asks for A.
#[test]
fn shuttle_restore_to_another_block_vs_enable_of_the_old_one() {
    check(|v0| assert!(v0.restore(B), "B is free"), enable_a);
}

/// A restore refused after its claim (the new block cannot be written) leaves
/// vCPU 0 holding A, while vCPU 1 asks for A.
#[test]
fn shuttle_refused_restore_keeps_its_block() {
    check(
        |v0| {
            v0.view.fake.fail_writes = true;
            assert!(!v0.restore(B), "B cannot be written");
            assert_eq!(v0.block(), Some(A));
        },
        enable_a,
    );
}

/// An ENABLE refused after its claim gives the block back: vCPU 1 asks for A
/// and cannot write it while vCPU 0 disables.
#[test]
fn shuttle_refused_enable_gives_its_block_back() {
    check(
        |v0| assert_eq!(v0.enable(None), SMCCC_RET_SUCCESS),
        |v1| {
            v1.view.fake.fail_writes = true;
            assert_eq!(v1.enable(Some(A)), SMCCC_RET_INVALID_PARAMETER);
        },
    );
}

/// The VMM moves vCPU 0 from A to B while a not-present is queued at A, and
/// vCPU 1 asks for A: vCPU 0 withdraws that not-present from A before A can
/// be given to vCPU 1.
#[test]
fn shuttle_restore_withdraws_from_the_old_block_before_giving_it_up() {
    check(
        |v0| {
            let fault = v0.engine.try_async(&mut v0.view, Gfn(1));
            assert!(matches!(fault, FaultDecision::Async { .. }), "{fault:?}");
            assert!(v0.restore(B), "B is free");
        },
        enable_a,
    );
}
