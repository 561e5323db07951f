//! The GICv3 model against the architecture's behaviour (IHI 0069): register
//! reset values and access rules, level and edge semantics, the priority mask,
//! preemption and the binary point, acknowledge / EOI / deactivate in both EOI
//! modes, SGI targeting, SPI routing, and the kicks that wake a vCPU.

use apf_abi::platform::{GICD_BASE, GICR_BASE, GICR_SGI_OFFSET, GICR_STRIDE};
use apf_host::gic::{
    ConnectError, CpuInterfaceError, Gic, GicCpuInterface, GicNewError, INTID_SPURIOUS, IccReg,
    IrqLine, Kick, PpiLevelError, SpiLine, SpiLineError,
};
use apf_host::waker::VcpuWaker;
use proptest::prelude::*;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

#[derive(Default)]
struct Counter(AtomicUsize);

impl Kick for Counter {
    fn kick(&self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

impl Counter {
    fn take(&self) -> usize {
        self.0.swap(0, Ordering::SeqCst)
    }
}

struct Rig {
    gic: Arc<Gic>,
    cpu: Vec<GicCpuInterface>,
    kicks: Vec<Arc<Counter>>,
}

fn gicd(off: u64) -> u64 {
    GICD_BASE + off
}
fn gicr(vcpu: usize, off: u64) -> u64 {
    GICR_BASE + vcpu as u64 * GICR_STRIDE + off
}
fn sgi_frame(vcpu: usize, off: u64) -> u64 {
    gicr(vcpu, GICR_SGI_OFFSET + off)
}

const ISENABLER: u64 = 0x100;
const ICENABLER: u64 = 0x180;
const ISPENDR: u64 = 0x200;
const ICPENDR: u64 = 0x280;
const ISACTIVER: u64 = 0x300;
const IGROUPR: u64 = 0x080;
const IPRIORITYR: u64 = 0x400;

impl Rig {
    /// `n` vCPUs, the distributor's group 1 enabled, every CPU interface with
    /// group 1 enabled and PMR 0xF0.
    fn new(n: usize) -> Rig {
        let gic = Arc::new(Gic::new(n).unwrap());
        let kicks: Vec<Arc<Counter>> = (0..n).map(|_| Arc::default()).collect();
        for (i, k) in kicks.iter().enumerate() {
            gic.connect(i, k.clone()).unwrap();
        }
        let mut cpu: Vec<_> = (0..n)
            .map(|i| GicCpuInterface::new(gic.clone(), i).unwrap())
            .collect();
        assert!(gic.mmio_write(gicd(0), 4, 0b10));
        for c in &mut cpu {
            assert!(c.write(IccReg::Pmr, 0xF0));
            assert!(c.write(IccReg::Igrpen1, 1));
        }
        Rig { gic, cpu, kicks }
    }

    fn r(&self, addr: u64, size: usize) -> u64 {
        self.gic
            .mmio_read(addr, size)
            .unwrap_or_else(|| panic!("read {addr:#x}/{size} refused"))
    }
    fn w(&self, addr: u64, size: usize, v: u64) {
        assert!(
            self.gic.mmio_write(addr, size, v),
            "write {addr:#x}/{size} refused"
        );
    }

    /// Makes SGI/PPI `intid` on `vcpu` group 1, enabled, at `priority`, and
    /// edge-triggered if `edge` (PPIs only).
    fn local(&self, vcpu: usize, intid: u32, priority: u8, edge: bool) {
        let bit = 1u64 << intid;
        let group = self.r(sgi_frame(vcpu, IGROUPR), 4);
        self.w(sgi_frame(vcpu, IGROUPR), 4, group | bit);
        self.w(
            sgi_frame(vcpu, IPRIORITYR + u64::from(intid)),
            1,
            u64::from(priority),
        );
        if edge {
            let cfg = self.r(sgi_frame(vcpu, 0xC04), 4);
            self.w(sgi_frame(vcpu, 0xC04), 4, cfg | 2 << (2 * (intid - 16)));
        }
        self.w(sgi_frame(vcpu, ISENABLER), 4, bit);
    }

    fn iar(&mut self, vcpu: usize) -> u64 {
        self.cpu[vcpu].read(IccReg::Iar1).unwrap()
    }
    fn eoi(&mut self, vcpu: usize, intid: u64) {
        assert!(self.cpu[vcpu].write(IccReg::Eoir1, intid));
    }
    fn line(&self, vcpu: usize) -> bool {
        self.cpu[vcpu].irq_line()
    }
    fn pending0(&self, vcpu: usize) -> u64 {
        self.r(sgi_frame(vcpu, ISPENDR), 4)
    }
    fn active0(&self, vcpu: usize) -> u64 {
        self.r(sgi_frame(vcpu, ISACTIVER), 4)
    }
}

#[test]
fn identification_and_reset_values() {
    let rig = Rig::new(3);
    let gic = Gic::new(3).unwrap();
    assert_eq!(
        gic.mmio_read(gicd(0), 4),
        Some(0x50),
        "ARE and DS read as one, groups off"
    );
    let typer = rig.r(gicd(4), 4);
    assert_eq!(typer & 0x1F, 1, "ITLinesNumber: 64 INTIDs");
    assert_eq!((typer >> 5) & 7, 2, "CPUNumber: 3 PEs");
    assert_eq!((typer >> 19) & 0x1F, 9, "IDbits: 10");
    assert_ne!(typer & 1 << 25, 0, "No1N");
    assert_eq!(
        typer & (1 << 10 | 1 << 17 | 1 << 16),
        0,
        "no security extension, LPIs, MBIs"
    );
    assert_eq!(rig.r(gicd(8), 4) & 0xFFF, 0x43B);
    assert_eq!((rig.r(gicd(0xFFE8), 4) >> 4) & 0xF, 3, "GICD_PIDR2.ArchRev");
    for v in 0..3 {
        let typer = rig.r(gicr(v, 8), 8);
        assert_eq!(typer >> 32, v as u64, "affinity");
        assert_eq!((typer >> 8) & 0xFFFF, v as u64, "processor number");
        assert_eq!(typer & 1 << 4 != 0, v == 2, "Last only on the last");
        assert_eq!(
            rig.r(gicr(v, 8), 4) | rig.r(gicr(v, 0xC), 4) << 32,
            typer,
            "32-bit halves"
        );
        assert_eq!((rig.r(gicr(v, 0xFFE8), 4) >> 4) & 0xF, 3);
        assert_eq!(
            gic.mmio_read(gicr(v, 0x14), 4),
            Some(0b110),
            "WAKER: asleep at reset"
        );
        assert_eq!(
            rig.r(sgi_frame(v, 0xC00), 4),
            0xAAAA_AAAA,
            "SGIs are edge-triggered"
        );
        assert_eq!(rig.r(sgi_frame(v, 0xC04), 4), 0, "PPIs level at reset");
    }
    rig.w(gicr(1, 0x14), 4, 0);
    assert_eq!(rig.r(gicr(1, 0x14), 4), 0, "awake: ChildrenAsleep follows");
    rig.w(gicr(1, 0x14), 4, 0b10);
    assert_eq!(rig.r(gicr(1, 0x14), 4), 0b110);
}

#[test]
fn accesses_the_registers_do_not_support_are_refused() {
    let rig = Rig::new(2);
    let refused = [
        (gicd(0), 2),
        (gicd(2), 4),
        (gicd(0), 8),
        (gicd(ISENABLER + 4), 1),
        (gicd(0x6100 + 4), 8), // IROUTER: misaligned doubleword
        (gicd(0x6100), 2),
        (gicr(0, 8), 2),
        (gicr(0, 0xC), 8),
        (sgi_frame(0, ISENABLER), 1),
        (GICD_BASE - 4, 4),
        (gicr(2, 0), 4), // beyond the last redistributor
        (GICD_BASE + 0x1_0000, 4),
    ];
    for (addr, size) in refused {
        assert_eq!(rig.gic.mmio_read(addr, size), None, "read {addr:#x}/{size}");
        assert!(!rig.gic.mmio_write(addr, size, 0), "write {addr:#x}/{size}");
    }
    // Reserved and unimplemented registers inside the frames read as zero and
    // ignore writes.
    for addr in [
        gicd(0x10),
        gicd(0xC000),
        gicd(ISENABLER),
        gicd(ISENABLER + 8),
        gicr(0, 0x70),
        sgi_frame(0, 0x900),
    ] {
        rig.w(addr, 4, u64::MAX);
        assert_eq!(rig.r(addr, 4), 0, "{addr:#x}");
    }
}

#[test]
fn priorities_keep_five_bits_and_are_byte_and_word_accessible() {
    let rig = Rig::new(1);
    rig.w(sgi_frame(0, IPRIORITYR + 17), 1, 0xFF);
    assert_eq!(rig.r(sgi_frame(0, IPRIORITYR + 17), 1), 0xF8);
    rig.w(sgi_frame(0, IPRIORITYR + 16), 4, 0x1122_3344);
    assert_eq!(rig.r(sgi_frame(0, IPRIORITYR + 16), 4), 0x1020_3040);
    assert_eq!(rig.r(sgi_frame(0, IPRIORITYR + 19), 1), 0x10);
    rig.w(gicd(IPRIORITYR + 33), 1, 0x87);
    assert_eq!(rig.r(gicd(IPRIORITYR + 32), 4), 0x8000);
    rig.w(gicd(IPRIORITYR + 8), 4, u64::MAX);
    assert_eq!(
        rig.r(gicd(IPRIORITYR + 8), 4),
        0,
        "SGI/PPI priorities live in the redistributor"
    );
}

#[test]
fn a_level_ppi_is_pending_while_its_line_is_high() {
    let mut rig = Rig::new(1);
    rig.local(0, 17, 0x80, false);
    assert!(!rig.line(0));
    rig.gic.set_ppi_level(0, 17, true).unwrap();
    assert!(rig.line(0));
    assert_eq!(rig.cpu[0].read(IccReg::Hppir1), Some(17));
    assert_eq!(rig.iar(0), 17);
    assert!(!rig.line(0), "active: not signalled again");
    assert_eq!(
        (rig.active0(0), rig.pending0(0)),
        (1 << 17, 1 << 17),
        "active and pending"
    );
    rig.w(sgi_frame(0, ICPENDR), 4, 1 << 17);
    assert_eq!(
        rig.pending0(0),
        1 << 17,
        "ICPENDR cannot clear a level that is still high"
    );
    rig.eoi(0, 17);
    assert!(
        rig.line(0),
        "still asserted: pending again after deactivation"
    );
    assert_eq!(rig.iar(0), 17);
    rig.gic.set_ppi_level(0, 17, false).unwrap();
    assert_eq!(
        rig.pending0(0),
        0,
        "lowering the line ends the pending state"
    );
    rig.eoi(0, 17);
    assert!(!rig.line(0));
    assert_eq!(rig.iar(0), u64::from(INTID_SPURIOUS));
    // A software-set latch on a level interrupt is pending until cleared.
    rig.w(sgi_frame(0, ISPENDR), 4, 1 << 17);
    assert!(rig.line(0));
    rig.w(sgi_frame(0, ICPENDR), 4, 1 << 17);
    assert!(!rig.line(0));
}

#[test]
fn an_edge_ppi_latches_each_rising_edge() {
    let mut rig = Rig::new(1);
    rig.local(0, 20, 0x80, true);
    assert_eq!(rig.r(sgi_frame(0, 0xC04), 4), 2 << 8);
    rig.gic.set_ppi_level(0, 20, true).unwrap();
    rig.gic.set_ppi_level(0, 20, false).unwrap();
    assert!(rig.line(0), "latched after the line fell");
    rig.gic.set_ppi_level(0, 20, true).unwrap();
    assert_eq!(rig.iar(0), 20);
    assert_eq!(
        rig.pending0(0),
        0,
        "acknowledge consumed the edge though the line is high"
    );
    rig.gic.set_ppi_level(0, 20, true).unwrap();
    assert_eq!(rig.pending0(0), 0, "no new edge while the line stays high");
    rig.gic.set_ppi_level(0, 20, false).unwrap();
    rig.gic.set_ppi_level(0, 20, true).unwrap();
    assert_eq!(
        (rig.active0(0), rig.pending0(0)),
        (1 << 20, 1 << 20),
        "a new edge while active"
    );
    assert!(!rig.line(0));
    rig.eoi(0, 20);
    assert_eq!(rig.iar(0), 20);
    rig.eoi(0, 20);
    assert_eq!(rig.iar(0), u64::from(INTID_SPURIOUS));
}

#[test]
fn the_priority_mask_masks_equal_and_lower_priorities() {
    let mut rig = Rig::new(1);
    rig.local(0, 18, 0x80, false);
    rig.gic.set_ppi_level(0, 18, true).unwrap();
    rig.cpu[0].write(IccReg::Pmr, 0x80);
    assert!(!rig.line(0));
    assert_eq!(rig.iar(0), u64::from(INTID_SPURIOUS));
    assert_eq!(
        rig.cpu[0].read(IccReg::Hppir1),
        Some(18),
        "HPPIR ignores the mask"
    );
    rig.cpu[0].write(IccReg::Pmr, 0x88);
    assert!(rig.line(0));
    rig.cpu[0].write(IccReg::Pmr, 0xFF);
    assert_eq!(
        rig.cpu[0].read(IccReg::Pmr),
        Some(0xF8),
        "five implemented bits"
    );
    rig.cpu[0].write(IccReg::Pmr, 0);
    assert!(!rig.line(0));
}

#[test]
fn the_highest_priority_wins_and_ties_go_to_the_lowest_intid() {
    let mut rig = Rig::new(1);
    for (intid, prio) in [(16, 0xA0), (19, 0x40), (21, 0x40), (1, 0x60)] {
        rig.local(0, intid, prio, false);
    }
    rig.w(
        sgi_frame(0, ISPENDR),
        4,
        1 << 16 | 1 << 19 | 1 << 21 | 1 << 1,
    );
    assert_eq!(rig.cpu[0].read(IccReg::Hppir1), Some(19));
    // With the binary point at its minimum every priority bit preempts, so the
    // order of acknowledges is the priority order; each stacks on the last.
    let mut order = vec![];
    loop {
        let intid = rig.iar(0);
        if intid == u64::from(INTID_SPURIOUS) {
            break;
        }
        order.push(intid);
    }
    assert_eq!(
        order,
        vec![19],
        "19 runs at 0x40; 21 (0x40) cannot preempt it"
    );
    assert_eq!(rig.cpu[0].read(IccReg::Rpr), Some(0x40));
    rig.eoi(0, 19);
    assert_eq!(rig.iar(0), 21);
    rig.eoi(0, 21);
    assert_eq!(rig.iar(0), 1);
    assert_eq!(rig.cpu[0].read(IccReg::Rpr), Some(0x60));
    assert_eq!(
        rig.iar(0),
        u64::from(INTID_SPURIOUS),
        "16 at 0xA0 cannot preempt 0x60"
    );
    rig.eoi(0, 1);
    assert_eq!(rig.iar(0), 16);
    rig.eoi(0, 16);
    assert_eq!(rig.cpu[0].read(IccReg::Rpr), Some(0xFF));
}

#[test]
fn a_higher_priority_interrupt_preempts_and_eoi_unwinds_in_order() {
    let mut rig = Rig::new(1);
    rig.local(0, 17, 0x80, false);
    rig.local(0, 18, 0x40, false);
    rig.gic.set_ppi_level(0, 17, true).unwrap();
    assert_eq!(rig.iar(0), 17);
    assert_eq!(rig.cpu[0].read(IccReg::Rpr), Some(0x80));
    rig.gic.set_ppi_level(0, 18, true).unwrap();
    assert!(rig.line(0), "0x40 preempts 0x80");
    assert_eq!(rig.iar(0), 18);
    assert_eq!(rig.cpu[0].read(IccReg::Rpr), Some(0x40));
    assert_eq!(rig.cpu[0].read(IccReg::Ap1r0), Some(1 << 8 | 1 << 16));
    rig.gic.set_ppi_level(0, 18, false).unwrap();
    rig.eoi(0, 18);
    assert_eq!(
        rig.cpu[0].read(IccReg::Rpr),
        Some(0x80),
        "back to the preempted one"
    );
    rig.gic.set_ppi_level(0, 17, false).unwrap();
    rig.eoi(0, 17);
    assert_eq!(rig.cpu[0].read(IccReg::Ap1r0), Some(0));
    assert_eq!(rig.active0(0), 0);
}

#[test]
fn the_binary_point_limits_preemption_to_group_priority() {
    let mut rig = Rig::new(1);
    assert_eq!(
        rig.cpu[0].read(IccReg::Bpr1),
        Some(3),
        "minimum with 5 priority bits"
    );
    rig.cpu[0].write(IccReg::Bpr1, 0);
    assert_eq!(
        rig.cpu[0].read(IccReg::Bpr1),
        Some(3),
        "clamped to the minimum"
    );
    rig.cpu[0].write(IccReg::Bpr1, 7);
    assert_eq!(rig.cpu[0].read(IccReg::Bpr1), Some(7));
    rig.local(0, 17, 0x40, false);
    rig.local(0, 18, 0x20, false);
    rig.gic.set_ppi_level(0, 17, true).unwrap();
    assert_eq!(rig.iar(0), 17);
    assert_eq!(
        rig.cpu[0].read(IccReg::Rpr),
        Some(0),
        "group priority 0x00 (bit 7 only)"
    );
    rig.gic.set_ppi_level(0, 18, true).unwrap();
    assert!(
        !rig.line(0),
        "0x20 and 0x40 share group priority 0 with BPR 7"
    );
    rig.gic.set_ppi_level(0, 17, false).unwrap();
    rig.eoi(0, 17);
    assert_eq!(rig.iar(0), 18);
}

#[test]
fn nothing_is_signalled_without_the_group_enables_or_in_group_0() {
    let mut rig = Rig::new(1);
    rig.local(0, 17, 0x80, false);
    rig.gic.set_ppi_level(0, 17, true).unwrap();
    assert!(rig.line(0));
    rig.cpu[0].write(IccReg::Igrpen1, 0);
    assert!(!rig.line(0));
    assert_eq!(
        rig.cpu[0].read(IccReg::Hppir1),
        Some(u64::from(INTID_SPURIOUS))
    );
    assert_eq!(rig.iar(0), u64::from(INTID_SPURIOUS));
    rig.cpu[0].write(IccReg::Igrpen1, 1);
    rig.w(gicd(0), 4, 0b01);
    assert!(!rig.line(0), "distributor group 1 disabled");
    rig.w(gicd(0), 4, 0b10);
    assert!(rig.line(0));
    rig.w(sgi_frame(0, IGROUPR), 4, 0);
    assert!(!rig.line(0), "group 0 is never signalled as an IRQ");
    rig.w(sgi_frame(0, IGROUPR), 4, 1 << 17);
    rig.w(sgi_frame(0, ICENABLER), 4, 1 << 17);
    assert!(!rig.line(0), "disabled");
    assert_eq!(
        rig.pending0(0),
        1 << 17,
        "a disabled interrupt stays pending"
    );
}

#[test]
fn eoimode_1_splits_priority_drop_and_deactivation() {
    let mut rig = Rig::new(1);
    rig.local(0, 17, 0x80, false);
    rig.cpu[0].write(IccReg::Ctlr, 0b10);
    assert_eq!(rig.cpu[0].read(IccReg::Ctlr), Some(4 << 8 | 0b10));
    rig.gic.set_ppi_level(0, 17, true).unwrap();
    assert_eq!(rig.iar(0), 17);
    rig.eoi(0, 17);
    assert_eq!(rig.cpu[0].read(IccReg::Rpr), Some(0xFF), "priority dropped");
    assert_eq!(rig.active0(0), 1 << 17, "still active");
    assert!(!rig.line(0));
    assert!(rig.cpu[0].write(IccReg::Dir, 17));
    assert_eq!(rig.active0(0), 0);
    assert!(rig.line(0), "level still high");
    // In EOImode 0 a DIR does nothing.
    rig.cpu[0].write(IccReg::Ctlr, 0);
    assert_eq!(rig.iar(0), 17);
    rig.cpu[0].write(IccReg::Dir, 17);
    assert_eq!(rig.active0(0), 1 << 17);
}

#[test]
fn eoi_of_special_or_unimplemented_intids_and_with_nothing_active_is_ignored() {
    let mut rig = Rig::new(1);
    rig.local(0, 17, 0x80, false);
    rig.gic.set_ppi_level(0, 17, true).unwrap();
    assert_eq!(rig.iar(0), 17);
    for intid in [1023, 1020, 64, 0xFF_FFFF] {
        rig.eoi(0, intid);
        assert_eq!(
            rig.cpu[0].read(IccReg::Rpr),
            Some(0x80),
            "EOI {intid} ignored"
        );
    }
    rig.eoi(0, 17);
    rig.eoi(0, 17);
    assert_eq!(rig.cpu[0].read(IccReg::Ap1r0), Some(0));
}

#[test]
fn sgis_reach_their_targets() {
    let mut rig = Rig::new(20);
    for v in 0..20 {
        rig.local(v, 3, 0x80, false);
    }
    // vCPU 0 to vCPUs 1 and 2 (cluster 0, target list bits 1 and 2).
    assert!(rig.cpu[0].write(IccReg::Sgi1r, 3 << 24 | 0b110));
    assert_eq!(
        (0..20).map(|v| rig.line(v)).collect::<Vec<_>>(),
        (0..20).map(|v| v == 1 || v == 2).collect::<Vec<_>>()
    );
    assert_eq!(rig.iar(1), 3);
    assert_eq!(rig.iar(2), 3);
    // vCPU 17 is Aff1 1, Aff0 1.
    rig.cpu[5].write(IccReg::Sgi1r, 3 << 24 | 1 << 16 | 0b10);
    assert!(rig.line(17));
    assert_eq!(rig.iar(17), 3);
    // Targets that do not exist, RS and Aff2/Aff3 name nobody.
    for v in [
        3 << 24 | 1 << 16 | 1 << 4,
        3 << 24 | 1 << 44 | 1,
        3 << 24 | 1 << 32 | 1,
        3 << 24 | 1 << 48 | 1,
    ] {
        rig.cpu[5].write(IccReg::Sgi1r, v);
        assert!((0..20).all(|t| !rig.line(t)), "{v:#x}");
    }
    // IRM: everyone but the sender.
    rig.cpu[4].write(IccReg::Sgi1r, 1 << 40 | 3 << 24);
    assert_eq!(
        (0..20).filter(|&v| rig.line(v)).count(),
        16,
        "19 targets (not the sender, 4), minus 1, 2 and 17 where SGI 3 is still active"
    );
    assert!(!rig.line(4));
    assert_eq!(rig.iar(0), 3);
}

#[test]
fn an_sgi_configured_as_group_0_on_the_target_is_not_forwarded() {
    let mut rig = Rig::new(2);
    rig.local(1, 5, 0x80, false);
    rig.w(sgi_frame(1, IGROUPR), 4, 0);
    rig.cpu[0].write(IccReg::Sgi1r, 5 << 24 | 0b10);
    assert_eq!(rig.pending0(1), 0);
    assert_eq!(rig.iar(1), u64::from(INTID_SPURIOUS));
}

#[test]
fn spis_follow_their_route() {
    let mut rig = Rig::new(2);
    let uart = SpiLine::new(rig.gic.clone(), 33).unwrap();
    rig.w(gicd(IGROUPR + 4), 4, 1 << 1);
    rig.w(gicd(IPRIORITYR + 33), 1, 0x90);
    rig.w(gicd(0x6000 + 8 * 33), 8, 0xFFFF_FFFF_FF00_0001);
    assert_eq!(
        rig.r(gicd(0x6000 + 8 * 33), 8),
        0xFF_0000_0001,
        "IRM and reserved bits read as 0"
    );
    rig.w(gicd(0x6000 + 8 * 33 + 4), 4, 0);
    assert_eq!(
        rig.r(gicd(0x6000 + 8 * 33), 4),
        1,
        "route = vCPU 1 (affinity 0.0.0.1)"
    );
    rig.w(gicd(ISENABLER + 4), 4, 1 << 1);
    assert_eq!(rig.r(gicd(ISENABLER + 4), 4), 1 << 1);
    uart.set_level(true);
    assert!(!rig.line(0));
    assert!(rig.line(1));
    assert_eq!(rig.r(gicd(ISPENDR + 4), 4), 1 << 1);
    assert_eq!(rig.iar(1), 33);
    assert_eq!(rig.r(gicd(ISACTIVER + 4), 4), 1 << 1);
    uart.set_level(false);
    rig.eoi(1, 33);
    assert_eq!(rig.r(gicd(ISACTIVER + 4), 4), 0);
    // Re-routed to vCPU 0; the SPI's ICFGR (GICD_ICFGR2) makes it edge-triggered.
    rig.w(gicd(0x6000 + 8 * 33), 4, 0);
    rig.w(gicd(0xC08), 4, 2 << 2);
    assert_eq!(rig.r(gicd(0xC08), 4), 2 << 2);
    uart.set_level(true);
    uart.set_level(false);
    assert!(rig.line(0) && !rig.line(1));
    assert_eq!(rig.iar(0), 33);
    rig.w(gicd(0x6000 + 8 * 33), 4, 7);
    uart.set_level(true);
    assert!(
        !rig.line(0) && !rig.line(1),
        "routed to no PE: stays pending"
    );
}

#[test]
fn kicks_go_to_the_vcpus_whose_line_may_have_changed() {
    let mut rig = Rig::new(2);
    rig.local(1, 3, 0x80, false);
    rig.kicks.iter().for_each(|k| {
        k.take();
    });
    rig.gic.set_ppi_level(1, 17, true).unwrap();
    assert_eq!((rig.kicks[0].take(), rig.kicks[1].take()), (0, 1));
    rig.cpu[0].write(IccReg::Sgi1r, 3 << 24 | 0b10);
    assert!(rig.kicks[1].take() >= 1, "the SGI target");
    rig.kicks[0].take();
    rig.w(sgi_frame(1, ICENABLER), 4, 1);
    assert_eq!(
        (rig.kicks[0].take(), rig.kicks[1].take()),
        (0, 1),
        "MMIO on vCPU 1's redistributor"
    );
    assert_eq!(rig.iar(1), 3);
    assert!(!rig.line(1), "acknowledge lowers the line");
    // Only vCPU 1's own thread touches its CPU interface; it compares its line
    // after the access itself (the bus), so the GIC kicks nobody.
    assert_eq!((rig.kicks[0].take(), rig.kicks[1].take()), (0, 0));
    rig.eoi(1, 3);
    assert_eq!((rig.kicks[0].take(), rig.kicks[1].take()), (0, 0));
    rig.w(gicd(0), 4, 0b10);
    assert_eq!(
        (rig.kicks[0].take(), rig.kicks[1].take()),
        (1, 1),
        "distributor changes kick everyone"
    );
}

#[test]
fn a_vcpu_waker_is_a_kick() {
    let gic = Gic::new(1).unwrap();
    let waker = Arc::new(VcpuWaker::for_current_thread());
    gic.connect(0, waker.clone()).unwrap();
    assert!(!waker.is_kicked());
    gic.set_ppi_level(0, 17, true).unwrap();
    assert!(waker.is_kicked());
}

#[test]
fn host_api_errors() {
    let gic = Arc::new(Gic::new(2).unwrap());
    assert_eq!(Gic::new(4097).unwrap_err(), GicNewError::TooManyVcpus(4097));
    assert_eq!(
        gic.set_ppi_level(2, 17, true),
        Err(PpiLevelError::NoSuchVcpu { vcpu: 2, vcpus: 2 })
    );
    for intid in [0, 15, 32, 1023] {
        assert_eq!(
            gic.set_ppi_level(0, intid, true),
            Err(PpiLevelError::NotAPpi(intid))
        );
    }
    assert_eq!(
        SpiLine::new(gic.clone(), 31).unwrap_err(),
        SpiLineError::NotAnSpi(31)
    );
    assert_eq!(
        SpiLine::new(gic.clone(), 64).unwrap_err(),
        SpiLineError::NotAnSpi(64)
    );
    let k: Arc<dyn Kick> = Arc::new(Counter::default());
    assert_eq!(gic.connect(0, k.clone()), Ok(()));
    assert_eq!(
        gic.connect(0, k.clone()),
        Err(ConnectError::AlreadyConnected(0))
    );
    assert_eq!(
        gic.connect(9, k),
        Err(ConnectError::NoSuchVcpu { vcpu: 9, vcpus: 2 })
    );
    assert_eq!(
        GicCpuInterface::new(gic, 2).unwrap_err(),
        CpuInterfaceError::NoSuchVcpu { vcpu: 2, vcpus: 2 }
    );
}

#[test]
fn icc_register_encodings_and_access_directions() {
    let table = [
        ((3, 0, 4, 6, 0), IccReg::Pmr),
        ((3, 0, 12, 12, 0), IccReg::Iar1),
        ((3, 0, 12, 12, 1), IccReg::Eoir1),
        ((3, 0, 12, 12, 2), IccReg::Hppir1),
        ((3, 0, 12, 12, 3), IccReg::Bpr1),
        ((3, 0, 12, 12, 4), IccReg::Ctlr),
        ((3, 0, 12, 12, 5), IccReg::Sre),
        ((3, 0, 12, 12, 7), IccReg::Igrpen1),
        ((3, 0, 12, 9, 0), IccReg::Ap1r0),
        ((3, 0, 12, 8, 4), IccReg::Ap0r0),
        ((3, 0, 12, 11, 1), IccReg::Dir),
        ((3, 0, 12, 11, 3), IccReg::Rpr),
        ((3, 0, 12, 11, 5), IccReg::Sgi1r),
    ];
    for ((op0, op1, crn, crm, op2), reg) in table {
        assert_eq!(IccReg::decode(op0, op1, crn, crm, op2), Some(reg));
    }
    // Group 0, the EL3 and virtual interfaces, and ASGI1R are not implemented.
    for enc in [
        (3, 0, 12, 8, 0),
        (3, 0, 12, 12, 6),
        (3, 6, 12, 12, 4),
        (3, 4, 12, 9, 0),
        (3, 0, 12, 11, 6),
        (2, 0, 12, 12, 0),
    ] {
        assert_eq!(
            IccReg::decode(enc.0, enc.1, enc.2, enc.3, enc.4),
            None,
            "{enc:?}"
        );
    }
    let mut rig = Rig::new(1);
    for reg in [IccReg::Iar1, IccReg::Hppir1, IccReg::Rpr] {
        assert!(!rig.cpu[0].write(reg, 0), "{reg:?} is read-only");
    }
    for reg in [IccReg::Eoir1, IccReg::Dir, IccReg::Sgi1r] {
        assert_eq!(rig.cpu[0].read(reg), None, "{reg:?} is write-only");
    }
    assert_eq!(rig.cpu[0].read(IccReg::Sre), Some(7));
    rig.cpu[0].write(IccReg::Sre, 0);
    assert_eq!(
        rig.cpu[0].read(IccReg::Sre),
        Some(7),
        "system register interface always on"
    );
    // Nothing is ever active in group 0: AP0R0 ignores what Linux writes.
    assert!(rig.cpu[0].write(IccReg::Ap0r0, 0xFFFF_FFFF));
    assert_eq!(rig.cpu[0].read(IccReg::Ap0r0), Some(0));
    assert_eq!(rig.iar(0), u64::from(INTID_SPURIOUS));
}

fn gic_address() -> impl Strategy<Value = u64> {
    prop_oneof![
        (0..0x1_0000u64).prop_map(gicd),
        (0..3 * GICR_STRIDE).prop_map(|o| GICR_BASE + o),
        any::<u64>(),
    ]
}

proptest! {
    /// The MMIO decoder: reads fit the access size, a read is refused exactly
    /// when the write of the same shape is, and the identification registers
    /// survive any write.
    #[test]
    fn mmio_decoding_is_total_and_consistent(
        accesses in prop::collection::vec((gic_address(), prop::sample::select(vec![1usize, 2, 4, 8]), any::<u64>()), 1..200)
    ) {
        let gic = Gic::new(2).unwrap();
        for (addr, size, value) in accesses {
            let read = gic.mmio_read(addr, size);
            if let Some(v) = read {
                prop_assert!(size == 8 || v >> (8 * size) == 0, "{:#x}/{} read {:#x}", addr, size, v);
            }
            prop_assert_eq!(gic.mmio_write(addr, size, value), read.is_some(), "{:#x}/{}", addr, size);
        }
        prop_assert_eq!(gic.mmio_read(gicd(0), 4).map(|v| v & 0x50), Some(0x50));
        prop_assert_eq!(gic.mmio_read(gicd(4), 4), Gic::new(2).unwrap().mmio_read(gicd(4), 4));
        prop_assert_eq!(gic.mmio_read(gicr(1, 8), 8), Some(1 << 32 | 1 << 8 | 1 << 4));
    }
}
