//! The APF engine driven by a sequence of operations against a model of what the
//! guest may see. Shared by the property test (`tests/apf_model.rs`) and the fuzz
//! target (`fuzz/fuzz_targets/apf_engine.rs`), which include this file.
//!
//! Invariants checked after every operation and at the end:
//! - every not-present that reached the guest is followed by a page-ready with its
//!   token or by a wake-all, and never by two page-readies;
//! - no page-ready for a token whose not-present the guest did not take;
//! - no token 0, and `~0` only as a wake-all;
//! - never more than 64 outstanding;
//! - a failed injection leaves the shared block as it found it;
//! - the engine holds its shared block exactly while it is enabled.

#![allow(dead_code)]

use apf_abi::Gfn;
use apf_abi::Token;
use apf_abi::control::{CONTROL_ENABLED, CONTROL_SEPARATE_READY};
use apf_abi::sdei::SDEI_EVENT_ASYNC_PF;
use apf_abi::smccc::{ASYNC_PF_FUNC_ENABLE, ASYNC_PF_FUNC_IRQ_ACK};
use apf_host::apf::fake::FakeVcpu;
use apf_host::apf::{ApfCommand, ApfEngine, FaultDecision, ItemHandle, SyncReason};
use std::collections::{HashMap, HashSet};

pub const PPI: u32 = 17;
pub const BLOCK: u64 = 0x4000_2000;

macro_rules! check {
    ($cond:expr $(,)?) => { if !$cond { return Err(format!("check failed: {}", stringify!($cond))); } };
    ($cond:expr, $($fmt:tt)+) => { if !$cond { return Err(format!($($fmt)+)); } };
}
macro_rules! check_eq {
    ($a:expr, $b:expr $(,)?) => { check!($a == $b, "{:?} != {:?}", $a, $b) };
    ($a:expr, $b:expr, $($fmt:tt)+) => { check!($a == $b, $($fmt)+) };
}

#[derive(Debug, Clone)]
pub enum Op {
    Fault { gfn: u64, el1: bool },
    Complete { pick: usize, ok: bool, twice: bool },
    Entry,
    TakeReady,
    Ack,
    SpuriousAck,
    Enable { separate: bool },
    Disable,
    Reset,
    VmmReenable,
    MaskPe(bool),
    FailWrites(bool),
    FailInject(bool),
}

pub struct World {
    pub engine: ApfEngine,
    pub vcpu: FakeVcpu,
    /// Cookies of asynchronous faults whose completion has not been sent.
    in_flight: Vec<u64>,
    /// Guest side: tokens of not-presents the guest took and still sleeps on.
    pub sleepers: HashSet<Token>,
    /// Guest side: tokens of not-presents taken since the last enable, and whether
    /// their page-ready came (a wake-all may have woken the sleeper before it).
    taken: HashMap<Token, bool>,
    /// Guest side: its driver is on, with this ready channel.
    guest_on: Option<bool>,
    /// Guest side: it took a page-ready and has not acknowledged it yet.
    unacked: bool,
}

impl World {
    pub fn new() -> World {
        let mut engine = ApfEngine::new(3, true);
        let mut vcpu = FakeVcpu::new(0x10000);
        engine
            .configure(&mut vcpu, SDEI_EVENT_ASYNC_PF, PPI)
            .unwrap();
        World {
            engine,
            vcpu,
            in_flight: Vec::new(),
            sleepers: HashSet::new(),
            taken: Default::default(),
            guest_on: None,
            unacked: false,
        }
    }

    pub fn block(&self) -> [u32; 4] {
        [0, 4, 8, 12].map(|off| self.vcpu.peek(BLOCK + off))
    }

    pub fn step(&mut self, op: &Op) -> Result<(), String> {
        match *op {
            Op::Fault { gfn, el1 } => {
                self.vcpu.el = u8::from(el1);
                let before = self.block();
                match self.engine.try_async(&mut self.vcpu, Gfn(gfn)) {
                    FaultDecision::Async { token, cookie } => {
                        check!(token.0 != 0 && !token.is_wake_all(), "bad token {token:?}");
                        self.in_flight.push(cookie);
                    }
                    FaultDecision::Sync(
                        SyncReason::InjectFailed | SyncReason::BlockWriteFailed,
                    ) => {
                        // (a failed write may not have been able to undo itself, but
                        // then it never wrote anything either)
                        check_eq!(
                            self.block(),
                            before,
                            "failed injection left the block changed"
                        );
                    }
                    FaultDecision::Sync(_) | FaultDecision::Halt => {}
                }
                self.vcpu.el = 0;
            }
            Op::Complete { pick, ok, twice } => {
                if !self.in_flight.is_empty() {
                    let cookie = self.in_flight.swap_remove(pick % self.in_flight.len());
                    let handle = ItemHandle::from_cookie(cookie).unwrap();
                    self.engine.port().complete(handle, ok);
                    if twice {
                        check!(!self.engine.port().complete(handle, ok), "duplicate taken");
                    }
                }
            }
            Op::Entry => {
                self.engine.service(&mut self.vcpu);
                if self.vcpu.enter_guest(&mut self.engine)
                    && let Some(token) = self.vcpu.guest_sdei_handler(BLOCK)
                {
                    check!(
                        self.guest_on.is_some(),
                        "not-present to a guest with APF off"
                    );
                    check!(token.0 != 0 && !token.is_wake_all());
                    check!(
                        self.taken.insert(token, false).is_none(),
                        "token {token:?} issued twice"
                    );
                    self.sleepers.insert(token);
                }
            }
            Op::TakeReady => {
                self.engine.service(&mut self.vcpu);
                if let (true, Some(separate)) = (self.vcpu.ppi(PPI), self.guest_on)
                    && let Some(token) = self.vcpu.guest_ppi_handler(BLOCK, separate)
                {
                    self.unacked = true;
                    if token.is_wake_all() {
                        self.sleepers.clear();
                    } else {
                        let readied = self.taken.get_mut(&token);
                        check!(
                            readied.is_some(),
                            "page-ready {token:?} without a not-present the guest took"
                        );
                        let readied = readied.unwrap();
                        check!(!*readied, "second page-ready for {token:?}");
                        *readied = true;
                        self.sleepers.remove(&token);
                    }
                }
            }
            // A guest acknowledges what it handled; acknowledging a page-ready it has
            // not read would lose it, and that would be the guest's own bug.
            Op::Ack => {
                if std::mem::take(&mut self.unacked) {
                    self.engine
                        .hypercall(&mut self.vcpu, ASYNC_PF_FUNC_IRQ_ACK, 0, 0);
                }
            }
            Op::SpuriousAck => {
                if !self.vcpu.ppi(PPI) {
                    self.engine
                        .hypercall(&mut self.vcpu, ASYNC_PF_FUNC_IRQ_ACK, 0, 0);
                }
            }
            Op::Enable { separate } => {
                let flags = CONTROL_ENABLED | if separate { CONTROL_SEPARATE_READY } else { 0 };
                let r =
                    self.engine
                        .hypercall(&mut self.vcpu, ASYNC_PF_FUNC_ENABLE, BLOCK | flags, 0);
                if r.status == 0 {
                    self.guest_on = Some(separate);
                }
            }
            Op::Disable => {
                let r = self
                    .engine
                    .hypercall(&mut self.vcpu, ASYNC_PF_FUNC_ENABLE, 0, 0);
                if r.status == 0 {
                    // The guest's offline path: disable, then wake local sleepers.
                    self.guest_on = None;
                    self.sleepers.clear();
                    self.taken.clear();
                    self.unacked = false;
                }
            }
            Op::Reset => {
                self.engine.reset(&mut self.vcpu);
                self.vcpu.ram.fill(0);
                self.vcpu.sdei.pending = false;
                self.vcpu.sdei.running = false;
                self.guest_on = None;
                self.sleepers.clear();
                self.taken.clear();
                self.unacked = false;
            }
            // The VMM re-applies the control word, as a restore does; the guest
            // goes on with what it was doing (an ACK it owes included). A block
            // the engine cannot write is refused: a restore's target has memory
            // that works.
            Op::VmmReenable if !self.vcpu.fail_writes => {
                let word = self.engine.control().encode();
                self.engine
                    .command(&mut self.vcpu, ApfCommand::SetControl(word))
                    .map_err(|e| format!("re-applying the control word: {e}"))?;
            }
            Op::VmmReenable => {}
            Op::MaskPe(m) => self.vcpu.sdei.pe_masked = m,
            Op::FailWrites(f) => self.vcpu.fail_writes = f,
            Op::FailInject(f) => self.vcpu.fail_inject = f,
        }
        check!(self.engine.outstanding() <= 64);
        let control = self.engine.control();
        let holds: &[u64] = if control.enabled { &[control.gpa] } else { &[] };
        check_eq!(
            self.vcpu.claimed.as_slice(),
            holds,
            "the engine holds {:x?} with control word {control:?}",
            self.vcpu.claimed
        );
        Ok(())
    }

    /// Every fetch finishes and the guest runs until nothing is left to deliver.
    pub fn settle(&mut self) -> Result<(), String> {
        self.vcpu.fail_writes = false;
        self.vcpu.fail_inject = false;
        self.vcpu.sdei.pe_masked = false;
        for cookie in std::mem::take(&mut self.in_flight) {
            self.engine
                .port()
                .complete(ItemHandle::from_cookie(cookie).unwrap(), true);
        }
        for _ in 0..400 {
            self.step(&Op::Entry)?;
            self.step(&Op::TakeReady)?;
            self.step(&Op::Ack)?;
        }
        check_eq!(self.engine.outstanding(), 0, "work items left behind");
        Ok(())
    }
}

/// Runs a whole sequence: enable, the operations, settle, and the wake-all rule of
/// §d.30 for page-readies lost to failed block writes.
pub fn run(ops: &[Op]) -> Result<(), String> {
    let mut world = World::new();
    world.step(&Op::Enable { separate: false })?;
    for op in ops {
        world.step(op)?;
    }
    world.settle()?;
    if !world.sleepers.is_empty() {
        let lost = world.engine.counters().snapshot().ready_write_failed;
        check!(lost > 0, "sleepers {:?} never woken", world.sleepers);
        let word = world.engine.control().encode();
        world
            .engine
            .command(&mut world.vcpu, ApfCommand::SetControl(word))
            .map_err(|e| e.to_string())?;
        world.settle()?;
        check!(
            world.sleepers.is_empty(),
            "wake-all did not free {:?}",
            world.sleepers
        );
    }
    Ok(())
}
