//! Model-checked (shuttle) races between fetch completions arriving on worker
//! threads and the vCPU's own paths: servicing, IRQ_ACK, disable and reset. The
//! engine under test is the real one, instantiated on shuttle's atomics.

use apf_abi::Gfn;
use apf_abi::Token;
use apf_abi::control::{CONTROL_ENABLED, CONTROL_SEPARATE_READY};
use apf_abi::sdei::SDEI_EVENT_ASYNC_PF;
use apf_abi::smccc::{ASYNC_PF_FUNC_ENABLE, ASYNC_PF_FUNC_IRQ_ACK};
use apf_host::apf::fake::FakeVcpu;
use apf_host::apf::{ApfEngine, FaultDecision, ItemHandle};
use shuttle::thread;
use std::sync::Arc;

#[path = "support/shuttle_word.rs"]
mod shuttle_word;
use shuttle_word::ShuttleWord;

const BLOCK: u64 = 0x4000_0400;
const PPI: u32 = 17;

type Engine = ApfEngine<ShuttleWord>;

fn enabled() -> (Engine, FakeVcpu) {
    let mut engine = Engine::new_generic(1, true);
    let mut vcpu = FakeVcpu::new(0x1000);
    engine
        .configure(&mut vcpu, SDEI_EVENT_ASYNC_PF, PPI)
        .unwrap();
    let raw = BLOCK | CONTROL_ENABLED | CONTROL_SEPARATE_READY;
    assert_eq!(
        engine
            .hypercall(&mut vcpu, ASYNC_PF_FUNC_ENABLE, raw, 0)
            .status,
        0
    );
    assert_eq!(vcpu.guest_ppi_handler(BLOCK, true), Some(Token::WAKE_ALL));
    engine.hypercall(&mut vcpu, ASYNC_PF_FUNC_IRQ_ACK, 0, 0);
    (engine, vcpu)
}

/// Faults `n` pages whose not-presents the guest takes; returns (token, handle).
fn fault_pages(engine: &mut Engine, vcpu: &mut FakeVcpu, n: u64) -> Vec<(Token, ItemHandle)> {
    (0..n)
        .map(|gfn| {
            let FaultDecision::Async { token, cookie } = engine.try_async(vcpu, Gfn(gfn)) else {
                panic!("fault {gfn} not async");
            };
            assert!(vcpu.enter_guest(engine));
            assert_eq!(vcpu.guest_sdei_handler(BLOCK), Some(token));
            (token, ItemHandle::from_cookie(cookie).unwrap())
        })
        .collect()
}

/// One guest round: service, take a page-ready if raised, acknowledge it.
fn guest_round(engine: &mut Engine, vcpu: &mut FakeVcpu, readied: &mut Vec<Token>) {
    engine.service(vcpu);
    if vcpu.ppi(PPI) {
        if let Some(t) = vcpu.guest_ppi_handler(BLOCK, true) {
            readied.push(t);
        }
        engine.hypercall(vcpu, ASYNC_PF_FUNC_IRQ_ACK, 0, 0);
    }
}

fn spawn_completers(
    port: &Arc<apf_host::apf::CompletionPort<ShuttleWord>>,
    handles: &[(Token, ItemHandle)],
) -> Vec<thread::JoinHandle<()>> {
    handles
        .iter()
        .enumerate()
        .map(|(i, &(_, h))| {
            let port = Arc::clone(port);
            thread::spawn(move || {
                port.complete(h, true);
                if i == 0 {
                    port.complete(h, true); // a duplicated completion
                }
            })
        })
        .collect()
}

/// Completions race the vCPU servicing and acknowledging: every token gets exactly
/// one page-ready, whatever the interleaving.
fn completions_vs_service_and_ack() {
    let (mut engine, mut vcpu) = enabled();
    let handles = fault_pages(&mut engine, &mut vcpu, 3);
    let workers = spawn_completers(engine.port(), &handles);
    let mut readied = Vec::new();
    for _ in 0..3 {
        guest_round(&mut engine, &mut vcpu, &mut readied);
        thread::yield_now();
    }
    for w in workers {
        w.join().unwrap();
    }
    for _ in 0..4 {
        guest_round(&mut engine, &mut vcpu, &mut readied);
    }
    readied.sort();
    let mut want: Vec<Token> = handles.iter().map(|(t, _)| *t).collect();
    want.sort();
    assert_eq!(readied, want, "each token exactly one page-ready");
    assert_eq!(engine.outstanding(), 0);
    assert_eq!(engine.counters().snapshot().completions, 3);
}

/// Completions race a disable (or a reset) and the reuse of their slots by new
/// faults: nothing from before is delivered after it, a stale completion never
/// completes the slot's new item, and nothing leaks.
fn completions_vs_disable(reset: bool) {
    let (mut engine, mut vcpu) = enabled();
    let old = fault_pages(&mut engine, &mut vcpu, 2);
    let workers = spawn_completers(engine.port(), &old);
    let mut readied = Vec::new();
    guest_round(&mut engine, &mut vcpu, &mut readied);
    if reset {
        engine.reset(&mut vcpu);
    } else {
        assert_eq!(
            engine
                .hypercall(&mut vcpu, ASYNC_PF_FUNC_ENABLE, 0, 0)
                .status,
            0
        );
    }
    assert!(!vcpu.ppi(PPI), "line left high");
    assert_eq!(engine.outstanding(), 0);
    let raw = BLOCK | CONTROL_ENABLED | CONTROL_SEPARATE_READY;
    assert_eq!(
        engine
            .hypercall(&mut vcpu, ASYNC_PF_FUNC_ENABLE, raw, 0)
            .status,
        0
    );
    let mut after = Vec::new();
    guest_round(&mut engine, &mut vcpu, &mut after);
    assert_eq!(after, vec![Token::WAKE_ALL]);
    // New faults take the same slots while the old completions may still arrive.
    let new = fault_pages(&mut engine, &mut vcpu, 2);
    for w in workers {
        w.join().unwrap();
    }
    for _ in 0..3 {
        guest_round(&mut engine, &mut vcpu, &mut after);
    }
    assert_eq!(
        after,
        vec![Token::WAKE_ALL],
        "a stale completion completed a new item"
    );
    for (_, h) in &new {
        assert!(engine.port().complete(*h, true));
    }
    for _ in 0..3 {
        guest_round(&mut engine, &mut vcpu, &mut after);
    }
    let mut want: Vec<Token> = new.iter().map(|(t, _)| *t).collect();
    want.insert(0, Token::WAKE_ALL);
    after[1..].sort();
    want[1..].sort();
    assert_eq!(after, want);
    assert_eq!(engine.outstanding(), 0);
}

#[test]
fn shuttle_completions_vs_service_and_ack() {
    shuttle::check_random(completions_vs_service_and_ack, 3000);
    shuttle::check_pct(completions_vs_service_and_ack, 3000, 3);
}

#[test]
fn shuttle_completions_vs_disable() {
    shuttle::check_random(|| completions_vs_disable(false), 3000);
    shuttle::check_pct(|| completions_vs_disable(false), 3000, 3);
}

#[test]
fn shuttle_completions_vs_reset() {
    shuttle::check_random(|| completions_vs_disable(true), 3000);
    shuttle::check_pct(|| completions_vs_disable(true), 3000, 3);
}
