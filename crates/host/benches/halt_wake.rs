//! Halt-to-wake latency of a vCPU thread: another thread makes the halt condition
//! true and kicks; measured from just before the kick to the halted thread seeing
//! it. Two cases: the kick lands in the poll window (no sleep, no cross-CPU
//! wake-up), or after it (the thread parked and must be woken).

use apf_host::waker::VcpuWaker;
use criterion::{Criterion, criterion_group, criterion_main};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

const POLL: Duration = Duration::from_micros(30);

fn wait_for(counter: &AtomicU64, value: u64) {
    while counter.load(Ordering::Acquire) < value {
        std::hint::spin_loop();
    }
}

fn latency(c: &mut Criterion) {
    let mut group = c.benchmark_group("halt_to_wake");
    for (name, kick_after) in [
        ("in_poll_window", Duration::from_micros(5)),
        ("parked", Duration::from_micros(300)),
    ] {
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let cond = Arc::new(AtomicBool::new(false));
                // Rounds the vCPU thread has entered (halting) and finished (woken).
                let entered = Arc::new(AtomicU64::new(0));
                let finished = Arc::new(AtomicU64::new(0));
                let woke_ns = Arc::new(AtomicU64::new(0));
                let epoch = Instant::now();
                let (tx, rx) = std::sync::mpsc::channel();
                let vcpu = {
                    let (cond, entered, finished, woke_ns) = (
                        Arc::clone(&cond),
                        Arc::clone(&entered),
                        Arc::clone(&finished),
                        Arc::clone(&woke_ns),
                    );
                    std::thread::spawn(move || {
                        let waker = Arc::new(VcpuWaker::for_current_thread());
                        tx.send(Arc::clone(&waker)).unwrap();
                        for _ in 0..iters {
                            entered.fetch_add(1, Ordering::AcqRel);
                            waker.halt(POLL, None, || cond.load(Ordering::Acquire));
                            let ns = u64::try_from(epoch.elapsed().as_nanos()).unwrap_or(u64::MAX);
                            woke_ns.store(ns, Ordering::Release);
                            cond.store(false, Ordering::Release);
                            finished.fetch_add(1, Ordering::AcqRel);
                        }
                    })
                };
                let waker = rx.recv().unwrap();
                let mut total = Duration::ZERO;
                for round in 1..=iters {
                    wait_for(&entered, round);
                    let started = Instant::now();
                    while started.elapsed() < kick_after {
                        std::hint::spin_loop();
                    }
                    woke_ns.store(0, Ordering::Release);
                    let kicked_at = epoch.elapsed();
                    cond.store(true, Ordering::Release);
                    waker.kick();
                    wait_for(&finished, round);
                    let woke = Duration::from_nanos(woke_ns.load(Ordering::Acquire));
                    total += woke.saturating_sub(kicked_at);
                }
                vcpu.join().unwrap();
                total
            });
        });
    }
    group.finish();
}

criterion_group!(benches, latency);
criterion_main!(benches);
