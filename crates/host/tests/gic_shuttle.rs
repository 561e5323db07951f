//! Model-checked (shuttle) races in the GIC: interrupts raised from other
//! threads while the target vCPU halts, and PEs racing to acknowledge one SPI.
//! The GIC under test is the real one, built on shuttle's atomics.

#[path = "support/shuttle_word.rs"]
mod shuttle_word;

use shuttle_word::ShuttleWord;

use apf_abi::platform::{GICD_BASE, GICR_BASE, GICR_SGI_OFFSET};
use apf_host::gic::{Gic, GicCpuInterface, INTID_SPURIOUS, IccReg, IrqLine, Kick, SpiLine};
use shuttle::sync::atomic::AtomicBool;
use shuttle::thread;
use std::sync::Arc;
use std::sync::atomic::Ordering;

/// A vCPU's kick flag, as the run loop's waker keeps it.
#[derive(Default)]
struct Flag(AtomicBool);

impl Kick for Flag {
    fn kick(&self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

type TestGic = Gic<ShuttleWord>;
type Cpu = GicCpuInterface<ShuttleWord>;

const ITERATIONS: usize = 3000;

/// A GIC with `n` vCPUs, group 1 on, each CPU interface unmasked, and SGI 3 /
/// PPI 17 group 1 at priority 0x80 on every vCPU (SGI 3 enabled if
/// `sgi_enabled`).
fn rig(n: usize, sgi_enabled: bool) -> (Arc<TestGic>, Vec<Cpu>, Vec<Arc<Flag>>) {
    let gic = Arc::new(TestGic::new_generic(n).unwrap());
    let flags: Vec<Arc<Flag>> = (0..n).map(|_| Arc::default()).collect();
    for (v, f) in flags.iter().enumerate() {
        gic.connect(v, f.clone()).unwrap();
    }
    assert!(gic.mmio_write(GICD_BASE, 4, 0b10));
    let mut cpus = vec![];
    for v in 0..n {
        let sgi = GICR_BASE + v as u64 * 0x2_0000 + GICR_SGI_OFFSET;
        assert!(gic.mmio_write(sgi + 0x80, 4, 1 << 3 | 1 << 17));
        assert!(gic.mmio_write(sgi + 0x403, 1, 0x80));
        assert!(gic.mmio_write(sgi + 0x411, 1, 0x80));
        if sgi_enabled {
            assert!(gic.mmio_write(sgi + 0x100, 4, 1 << 3));
        }
        let mut cpu = Cpu::new(gic.clone(), v).unwrap();
        cpu.write(IccReg::Pmr, 0xF0);
        cpu.write(IccReg::Igrpen1, 1);
        cpus.push(cpu);
    }
    (gic, cpus, flags)
}

/// The run loop's halt: consume the kick, look at the line, and wait for the
/// next kick if it is low.
fn halt_until_irq(cpu: &Cpu, kick: &Flag) {
    loop {
        kick.0.store(false, Ordering::SeqCst);
        if cpu.irq_line() {
            return;
        }
        while !kick.0.load(Ordering::SeqCst) {
            thread::yield_now();
        }
    }
}

fn sgi_is_never_lost_by_a_halting_target() {
    let (_gic, mut cpus, flags) = rig(2, true);
    let mut target = cpus.pop().unwrap();
    let mut sender = cpus.pop().unwrap();
    let t = thread::spawn(move || {
        sender.write(IccReg::Sgi1r, 3 << 24 | 0b10);
    });
    halt_until_irq(&target, &flags[1]);
    assert_eq!(target.read(IccReg::Iar1), Some(3));
    t.join().unwrap();
}

#[test]
fn an_sgi_wakes_a_halting_target_random() {
    shuttle::check_random(sgi_is_never_lost_by_a_halting_target, ITERATIONS);
}

#[test]
fn an_sgi_wakes_a_halting_target_pct() {
    shuttle::check_pct(sgi_is_never_lost_by_a_halting_target, ITERATIONS, 3);
}

fn enable_from_another_vcpu_wakes_the_target() {
    let (gic, mut cpus, flags) = rig(2, false);
    let mut target = cpus.pop().unwrap();
    let sgi1 = GICR_BASE + 0x2_0000 + GICR_SGI_OFFSET;
    // SGI 3 is pending on vCPU 1 but disabled; vCPU 0 enables it by MMIO
    // while vCPU 1 halts.
    assert!(gic.mmio_write(sgi1 + 0x200, 4, 1 << 3));
    let g = gic.clone();
    let t = thread::spawn(move || {
        assert!(g.mmio_write(sgi1 + 0x100, 4, 1 << 3));
    });
    halt_until_irq(&target, &flags[1]);
    assert_eq!(target.read(IccReg::Iar1), Some(3));
    t.join().unwrap();
}

#[test]
fn an_enable_by_mmio_wakes_a_halting_target() {
    shuttle::check_pct(enable_from_another_vcpu_wakes_the_target, ITERATIONS, 3);
}

fn ppi_raised_while_acknowledging() {
    // The APF engine raises its PPI on its own vCPU; a timer PPI from the same
    // thread races an SGI from another: both are taken, one at a time.
    let (gic, mut cpus, flags) = rig(2, true);
    let mut target = cpus.pop().unwrap();
    let mut sender = cpus.pop().unwrap();
    let sgi1 = GICR_BASE + 0x2_0000 + GICR_SGI_OFFSET;
    assert!(gic.mmio_write(sgi1 + 0x100, 4, 1 << 17));
    let t = thread::spawn(move || {
        sender.write(IccReg::Sgi1r, 3 << 24 | 0b10);
    });
    gic.set_ppi_level(1, 17, true).unwrap();
    let mut taken = vec![];
    while taken.len() < 2 {
        halt_until_irq(&target, &flags[1]);
        let intid = target.read(IccReg::Iar1).unwrap();
        assert_ne!(intid, u64::from(INTID_SPURIOUS), "the line was up");
        taken.push(intid);
        if intid == 17 {
            gic.set_ppi_level(1, 17, false).unwrap();
        }
        target.write(IccReg::Eoir1, intid);
    }
    taken.sort_unstable();
    assert_eq!(taken, vec![3, 17]);
    assert!(!target.irq_line());
    t.join().unwrap();
}

#[test]
fn an_sgi_and_a_ppi_arriving_together_are_both_taken() {
    shuttle::check_pct(ppi_raised_while_acknowledging, ITERATIONS, 3);
}

fn two_pes_race_for_one_spi() {
    let (gic, cpus, _flags) = rig(2, true);
    let spi = SpiLine::new(gic.clone(), 33).unwrap();
    assert!(gic.mmio_write(GICD_BASE + 0x84, 4, 1 << 1));
    assert!(gic.mmio_write(GICD_BASE + 0x421, 1, 0x80));
    assert!(
        gic.mmio_write(GICD_BASE + 0xC08, 4, 2 << 2),
        "edge-triggered"
    );
    assert!(gic.mmio_write(GICD_BASE + 0x104, 4, 1 << 1));
    spi.set_level(true);
    let router = {
        let g = gic.clone();
        thread::spawn(move || assert!(g.mmio_write(GICD_BASE + 0x6000 + 8 * 33, 8, 1)))
    };
    let handles: Vec<_> = cpus
        .into_iter()
        .map(|mut cpu| thread::spawn(move || cpu.read(IccReg::Iar1).unwrap()))
        .collect();
    let acks = handles
        .into_iter()
        .map(|h| h.join().unwrap())
        .filter(|&i| i == 33)
        .count();
    router.join().unwrap();
    let pending = gic.mmio_read(GICD_BASE + 0x204, 4).unwrap() & 1 << 1 != 0;
    let active = gic.mmio_read(GICD_BASE + 0x304, 4).unwrap() & 1 << 1 != 0;
    assert!(acks <= 1, "one edge, acknowledged {acks} times");
    assert_eq!(
        (acks == 1, acks == 0),
        (active, pending),
        "taken once, or still pending"
    );
}

#[test]
fn one_spi_edge_is_acknowledged_at_most_once() {
    shuttle::check_pct(two_pes_race_for_one_spi, ITERATIONS, 3);
    shuttle::check_random(two_pes_race_for_one_spi, ITERATIONS);
}
