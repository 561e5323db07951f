//! Exclusives and atomics are correct across vCPU threads: two CPUs increment
//! one counter through LDXR/STXR (or LDADD) over a bus of shared atomics, and
//! the shuttle model checker explores their interleavings (every bus access is
//! a scheduling point). A lost update would leave the count short.

use std::sync::Arc;

use apf_cpu::{AccessSize, AtomicOp, Bus, BusError, Cpu, CpuConfig, Exit, SysRegId};
use shuttle::sync::atomic::{AtomicU64, Ordering};

const CODE: u64 = 0x1000;
const COUNTER: u64 = 0x8000;
const ROUNDS: u64 = 3;

const LDXR_STXR: [u32; 7] = [
    0xC85F_7C22, // loop: ldxr x2, [x1]
    0x9100_0442, // add x2, x2, #1
    0xC803_7C22, // stxr w3, x2, [x1]
    0x35FF_FFA3, // cbnz w3, loop
    0xF100_0484, // subs x4, x4, #1
    0x54FF_FF61, // b.ne loop
    0xD400_0002, // hvc #0
];

const LDADD: [u32; 4] = [
    0xF825_0022, // loop: ldadd x5, x2, [x1]
    0xF100_0484, // subs x4, x4, #1
    0x54FF_FFC1, // b.ne loop
    0xD400_0002, // hvc #0
];

/// Code (read-only) and one shared doubleword.
#[derive(Debug)]
struct SharedBus {
    code: &'static [u32],
    counter: Arc<AtomicU64>,
}

impl SharedBus {
    fn check(addr: u64, size: AccessSize) -> Result<(), BusError> {
        if addr == COUNTER && size == AccessSize::Double {
            Ok(())
        } else {
            Err(BusError::ExternalAbort)
        }
    }
}

impl Bus for SharedBus {
    fn fetch(&mut self, addr: u64) -> Result<u32, BusError> {
        let index =
            usize::try_from(addr.wrapping_sub(CODE) / 4).map_err(|_| BusError::ExternalAbort)?;
        self.code.get(index).copied().ok_or(BusError::ExternalAbort)
    }
    fn read(&mut self, addr: u64, size: AccessSize) -> Result<u64, BusError> {
        SharedBus::check(addr, size)?;
        Ok(self.counter.load(Ordering::SeqCst))
    }
    fn write(&mut self, addr: u64, size: AccessSize, value: u64) -> Result<(), BusError> {
        SharedBus::check(addr, size)?;
        self.counter.store(value, Ordering::SeqCst);
        Ok(())
    }
    fn compare_exchange(
        &mut self,
        addr: u64,
        size: AccessSize,
        old: u64,
        new: u64,
    ) -> Result<u64, BusError> {
        SharedBus::check(addr, size)?;
        Ok(
            match self
                .counter
                .compare_exchange(old, new, Ordering::SeqCst, Ordering::SeqCst)
            {
                Ok(v) | Err(v) => v,
            },
        )
    }
    fn compare_exchange_pair(&mut self, _: u64, _: u128, _: u128) -> Result<u128, BusError> {
        Err(BusError::ExternalAbort)
    }
    fn atomic_rmw(
        &mut self,
        addr: u64,
        size: AccessSize,
        op: AtomicOp,
        operand: u64,
    ) -> Result<u64, BusError> {
        SharedBus::check(addr, size)?;
        let mut cur = self.counter.load(Ordering::SeqCst);
        loop {
            let new = op.apply(size, cur, operand);
            match self
                .counter
                .compare_exchange(cur, new, Ordering::SeqCst, Ordering::SeqCst)
            {
                Ok(_) => return Ok(cur),
                Err(v) => cur = v,
            }
        }
    }
    fn sysreg_read(&mut self, _: SysRegId) -> Option<u64> {
        None
    }
    fn sysreg_write(&mut self, _: SysRegId, _: u64) -> bool {
        false
    }
    fn kicked(&self) -> bool {
        false
    }
}

fn vcpu(code: &'static [u32], counter: Arc<AtomicU64>) {
    let mut bus = SharedBus { code, counter };
    let mut cpu = Cpu::new(CpuConfig::default());
    cpu.set_pc(CODE);
    cpu.set_x(1, COUNTER);
    cpu.set_x(4, ROUNDS);
    cpu.set_x(5, 1);
    // Bounded: a livelocked exclusive loop fails the test instead of hanging.
    assert_eq!(cpu.run(&mut bus, 10_000), Exit::Hvc { imm: 0 });
}

fn increments_from_two_vcpus(code: &'static [u32]) {
    let counter = Arc::new(AtomicU64::new(0));
    let handles: Vec<_> = (0..2)
        .map(|_| {
            let counter = Arc::clone(&counter);
            shuttle::thread::spawn(move || vcpu(code, counter))
        })
        .collect();
    for h in handles {
        h.join().expect("vCPU thread");
    }
    assert_eq!(counter.load(Ordering::SeqCst), 2 * ROUNDS);
}

#[test]
fn ldxr_stxr_loses_no_update_across_threads() {
    shuttle::check_random(|| increments_from_two_vcpus(&LDXR_STXR), 2000);
}

#[test]
fn ldadd_loses_no_update_across_threads() {
    shuttle::check_random(|| increments_from_two_vcpus(&LDADD), 500);
}

#[test]
fn ldxr_stxr_under_pct_scheduling() {
    // PCT: randomised priorities with up to 3 forced preemptions per run.
    shuttle::check_pct(|| increments_from_two_vcpus(&LDXR_STXR), 2000, 3);
}
