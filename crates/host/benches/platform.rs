//! What the platform's firmware and interrupt paths cost per operation, side
//! by side: the interrupt-line check the run loop makes after every kick, an
//! interrupt's acknowledge + EOI, an SGI to another vCPU, a trivial SMCCC call
//! through the dispatcher, and an SDEI dispatch + COMPLETE_AND_RESUME.

use apf_abi::platform::{GICD_BASE, GICR_BASE, GICR_SGI_OFFSET, GICR_STRIDE, RAM_BASE, UART_INTID};
use apf_abi::sdei::{
    SDEI_EVENT_ASYNC_PF, SDEI_EVENT_COMPLETE_AND_RESUME, SDEI_EVENT_ENABLE, SDEI_EVENT_REGISTER,
    SDEI_PE_UNMASK,
};
use apf_abi::smccc::SMCCC_VERSION;
use apf_host::apf::ApfEngine;
use apf_host::gic::{Gic, GicCpuInterface, IccReg, SpiLine};
use apf_host::machine::Machine;
use apf_host::psci::Psci;
use apf_host::regs::{PSTATE_EL1H_MASKED, PlainRegs};
use apf_host::sdei::SdeiVcpu;
use apf_host::smccc::{Firmware, dispatch};
use apf_host::uart::Pl011;
use apf_host::vcpu::{FlatRam, VcpuContext};
use criterion::{Criterion, criterion_group, criterion_main};
use std::hint::black_box;
use std::sync::Arc;

/// One vCPU of a machine without APF, as the dispatcher sees it.
fn vcpu() -> VcpuContext<PlainRegs, FlatRam> {
    let gic = Arc::new(Gic::new(1).unwrap());
    let line = SpiLine::new(Arc::clone(&gic), UART_INTID).unwrap();
    let uart = Pl011::new(Box::new(std::io::sink()), Box::new(line));
    VcpuContext {
        index: 0,
        cpu: PlainRegs {
            pstate: PSTATE_EL1H_MASKED,
            ..PlainRegs::default()
        },
        sdei: SdeiVcpu::new(),
        ram: FlatRam {
            base: RAM_BASE,
            bytes: Vec::new(),
        },
        machine: Arc::new(Machine::new(gic, uart, RAM_BASE..RAM_BASE)),
    }
}

/// Two vCPUs, SGI 3 and PPI 17 group 1, enabled, priority 0x80 on both.
fn gic() -> (Arc<Gic>, GicCpuInterface, GicCpuInterface) {
    let gic = Arc::new(Gic::new(2).unwrap());
    assert!(gic.mmio_write(GICD_BASE, 4, 0b10));
    for v in 0..2u64 {
        let sgi = GICR_BASE + v * GICR_STRIDE + GICR_SGI_OFFSET;
        assert!(gic.mmio_write(sgi + 0x80, 4, 1 << 3 | 1 << 17));
        assert!(gic.mmio_write(sgi + 0x100, 4, 1 << 3 | 1 << 17));
        assert!(gic.mmio_write(sgi + 0x403, 1, 0x80));
        assert!(gic.mmio_write(sgi + 0x411, 1, 0x80));
    }
    let mut cpus = (0..2).map(|v| {
        let mut c = GicCpuInterface::new(gic.clone(), v).unwrap();
        c.write(IccReg::Pmr, 0xF0);
        c.write(IccReg::Igrpen1, 1);
        c
    });
    let (a, b) = (cpus.next().unwrap(), cpus.next().unwrap());
    (gic, a, b)
}

fn interrupts(c: &mut Criterion) {
    let mut group = c.benchmark_group("gic");
    let (gic, mut cpu0, mut cpu1) = gic();
    group.bench_function("irq_line, nothing pending", |b| {
        b.iter(|| black_box(cpu0.irq_line()))
    });
    gic.set_ppi_level(0, 17, true).unwrap();
    group.bench_function("irq_line, a PPI pending", |b| {
        b.iter(|| black_box(cpu0.irq_line()))
    });
    group.bench_function("IAR1 + EOIR1 of a level PPI", |b| {
        b.iter(|| {
            let intid = cpu0.read(IccReg::Iar1).unwrap();
            cpu0.write(IccReg::Eoir1, black_box(intid));
        });
    });
    gic.set_ppi_level(0, 17, false).unwrap();
    group.bench_function("SGI to another vCPU, taken there", |b| {
        b.iter(|| {
            cpu0.write(IccReg::Sgi1r, 3 << 24 | 0b10);
            let intid = cpu1.read(IccReg::Iar1).unwrap();
            cpu1.write(IccReg::Eoir1, black_box(intid));
        });
    });
    group.finish();
}

fn firmware(c: &mut Criterion) {
    let mut group = c.benchmark_group("firmware");
    let psci = Psci::new(1, 0x4000_0000..0x5000_0000);
    let mut engine = ApfEngine::new(0, false);
    let mut vcpu = vcpu();
    group.bench_function("SMCCC_VERSION through dispatch", |b| {
        let mut fw = Firmware {
            index: 0,
            psci: &psci,
            engine: &mut engine,
            vcpu: &mut vcpu,
        };
        b.iter(|| {
            fw.vcpu.cpu.x[0] = u64::from(SMCCC_VERSION);
            black_box(dispatch(&mut fw, 0));
        });
    });
    let VcpuContext {
        cpu: regs, sdei, ..
    } = &mut vcpu;
    let event = u64::from(SDEI_EVENT_ASYNC_PF);
    for (id, args) in [
        (SDEI_EVENT_REGISTER, [event, 0x4009_0000, 0]),
        (SDEI_EVENT_ENABLE, [event, 0, 0]),
        (SDEI_PE_UNMASK, [0; 3]),
    ] {
        regs.x[1..4].copy_from_slice(&args);
        sdei.call(id, &mut *regs);
    }
    group.bench_function("SDEI inject + dispatch + COMPLETE_AND_RESUME", |b| {
        b.iter(|| {
            sdei.inject(SDEI_EVENT_ASYNC_PF).unwrap();
            black_box(sdei.deliver(&mut *regs));
            regs.x[1] = 0x4008_0480;
            black_box(sdei.call(SDEI_EVENT_COMPLETE_AND_RESUME, &mut *regs));
        });
    });
    group.finish();
}

criterion_group!(benches, interrupts, firmware);
criterion_main!(benches);
