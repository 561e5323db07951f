//! The PL011: registers, line-buffered output, the transmit interrupt and its
//! line into the GIC.

use apf_abi::platform::{GICD_BASE, UART_BASE, UART_INTID};
use apf_host::gic::{Gic, GicCpuInterface, IccReg, IrqLine, SpiLine};
use apf_host::uart::{FR_IDLE, INT_TX, LINE_LIMIT, Pl011};
use proptest::prelude::*;
use std::io::{self, Write};
use std::sync::{Arc, Mutex};

/// Records every `write` the UART makes to its sink.
#[derive(Clone, Default)]
struct Sink(Arc<Mutex<Vec<Vec<u8>>>>);

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().push(buf.to_vec());
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Sink {
    fn chunks(&self) -> Vec<Vec<u8>> {
        self.0.lock().unwrap().clone()
    }
}

/// Records every level the UART drives.
#[derive(Clone, Default)]
struct Line(Arc<Mutex<Vec<bool>>>);

impl IrqLine for Line {
    fn set_level(&self, high: bool) {
        self.0.lock().unwrap().push(high);
    }
}

impl Line {
    fn levels(&self) -> Vec<bool> {
        self.0.lock().unwrap().clone()
    }
}

fn uart() -> (Pl011, Sink, Line) {
    let (sink, line) = (Sink::default(), Line::default());
    (
        Pl011::new(Box::new(sink.clone()), Box::new(line.clone())),
        sink,
        line,
    )
}

const DR: u64 = UART_BASE;
const FR: u64 = UART_BASE + 0x18;
const CR: u64 = UART_BASE + 0x30;
const IMSC: u64 = UART_BASE + 0x38;
const RIS: u64 = UART_BASE + 0x3C;
const MIS: u64 = UART_BASE + 0x40;
const ICR: u64 = UART_BASE + 0x44;

fn puts(u: &Pl011, s: &str) {
    for b in s.bytes() {
        assert!(u.mmio_write(DR, 1, u64::from(b)));
    }
}

#[test]
fn reset_values_and_identification() {
    let (u, _, _) = uart();
    assert_eq!(u.mmio_read(FR, 4), Some(FR_IDLE));
    assert_eq!(
        FR_IDLE, 0x90,
        "TXFE and RXFE set, BUSY and the full flags clear"
    );
    assert_eq!(u.mmio_read(CR, 4), Some(0x300));
    assert_eq!(
        u.mmio_read(UART_BASE + 0x34, 4),
        Some(0x12),
        "IFLS: half-full triggers"
    );
    for off in [0x38, 0x3C, 0x40, 0x24, 0x28, 0x2C, 0x48] {
        assert_eq!(u.mmio_read(UART_BASE + off, 4), Some(0), "{off:#x}");
    }
    let ids: Vec<u64> = (0..8)
        .map(|i| u.mmio_read(UART_BASE + 0xFE0 + 4 * i, 4).unwrap())
        .collect();
    assert_eq!(ids, vec![0x11, 0x10, 0x14, 0x00, 0x0D, 0xF0, 0x05, 0xB1]);
    assert_eq!(u.mmio_read(DR, 4), Some(0), "nothing to receive");
}

#[test]
fn output_is_written_a_line_at_a_time() {
    let (u, sink, _) = uart();
    puts(&u, "hello");
    assert!(sink.chunks().is_empty(), "no newline yet");
    assert!(
        u.mmio_write(DR, 4, 0xFFFF_FF00 | u64::from(b'!')),
        "a word write sends its low byte"
    );
    puts(&u, "\nnext");
    assert_eq!(sink.chunks(), vec![b"hello!\n".to_vec()]);
    u.flush();
    assert_eq!(sink.chunks()[1], b"next");
    puts(&u, "tail");
    drop(u);
    assert_eq!(
        sink.chunks()[2],
        b"tail",
        "dropping the UART writes the partial line"
    );
}

#[test]
fn a_line_never_grows_past_the_limit() {
    let (u, sink, _) = uart();
    for _ in 0..LINE_LIMIT + 10 {
        u.mmio_write(DR, 1, u64::from(b'x'));
    }
    assert_eq!(sink.chunks().len(), 1);
    assert_eq!(sink.chunks()[0].len(), LINE_LIMIT);
    u.flush();
    assert_eq!(sink.chunks()[1].len(), 10);
}

#[test]
fn the_transmit_interrupt_follows_mask_and_clear() {
    let (u, _, line) = uart();
    puts(&u, "a");
    assert_eq!(
        u.mmio_read(RIS, 4),
        Some(INT_TX),
        "raw status set by the transmitted byte"
    );
    assert_eq!(u.mmio_read(MIS, 4), Some(0));
    assert!(line.levels().is_empty(), "masked: the line stays low");
    u.mmio_write(IMSC, 4, INT_TX);
    assert_eq!(u.mmio_read(MIS, 4), Some(INT_TX));
    assert_eq!(line.levels(), vec![true]);
    puts(&u, "b");
    assert_eq!(line.levels(), vec![true], "already high: no new edge");
    u.mmio_write(ICR, 4, INT_TX);
    assert_eq!(u.mmio_read(RIS, 4), Some(0));
    assert_eq!(line.levels(), vec![true, false]);
    puts(&u, "c");
    assert_eq!(line.levels(), vec![true, false, true]);
    u.mmio_write(IMSC, 4, 0);
    assert_eq!(line.levels(), vec![true, false, true, false]);
    u.mmio_write(IMSC, 4, u64::MAX);
    assert_eq!(u.mmio_read(IMSC, 4), Some(0x7FF), "eleven interrupt bits");
}

#[test]
fn registers_keep_their_widths_and_read_only_ones_ignore_writes() {
    let (u, _, _) = uart();
    for (off, written, read) in [
        (0x24, 0x1_FFFF, 0xFFFF),
        (0x28, 0xFF, 0x3F),
        (0x2C, 0x1FF, 0xFF),
        (0x34, 0xFF, 0x3F),
        (0x48, 0xF, 0x7),
        (0x20, 0x1FF, 0xFF),
    ] {
        assert!(u.mmio_write(UART_BASE + off, 4, written));
        assert_eq!(u.mmio_read(UART_BASE + off, 4), Some(read), "{off:#x}");
    }
    for off in [0x18, 0x3C, 0x40, 0xFE0, 0xFFC] {
        let before = u.mmio_read(UART_BASE + off, 4);
        assert!(u.mmio_write(UART_BASE + off, 4, 0xFFFF));
        assert_eq!(
            u.mmio_read(UART_BASE + off, 4),
            before,
            "{off:#x} is read-only"
        );
    }
    assert_eq!(
        u.mmio_read(CR, 1),
        Some(0x00),
        "a byte read sees the low byte"
    );
    assert_eq!(u.mmio_read(CR, 2), Some(0x300));
}

#[test]
fn accesses_outside_the_registers_are_refused() {
    let (u, _, _) = uart();
    for (addr, size) in [
        (DR, 8),
        (FR + 1, 1),
        (UART_BASE + 2, 2),
        (UART_BASE + 0x50, 4),
        (UART_BASE + 0xFDC, 4),
        (UART_BASE - 4, 4),
        (UART_BASE + 0x1000, 4),
    ] {
        assert_eq!(u.mmio_read(addr, size), None, "{addr:#x}/{size}");
        assert!(!u.mmio_write(addr, size, 0), "{addr:#x}/{size}");
    }
}

struct Broken;

impl Write for Broken {
    fn write(&mut self, _: &[u8]) -> io::Result<usize> {
        Err(io::Error::other("disk full"))
    }
    fn flush(&mut self) -> io::Result<()> {
        Err(io::Error::other("disk full"))
    }
}

#[test]
fn a_failing_sink_loses_output_but_not_the_uart() {
    let line = Line::default();
    let u = Pl011::new(Box::new(Broken), Box::new(line));
    puts(&u, "one\ntwo\n");
    assert_eq!(u.mmio_read(FR, 4), Some(FR_IDLE));
    assert_eq!(u.mmio_read(RIS, 4), Some(INT_TX));
}

#[test]
fn the_uart_interrupt_reaches_the_gic_as_spi_33() {
    let gic = Arc::new(Gic::new(1).unwrap());
    let spi = SpiLine::new(gic.clone(), UART_INTID).unwrap();
    let u = Pl011::new(Box::new(Sink::default()), Box::new(spi));
    let mut cpu = GicCpuInterface::new(gic.clone(), 0).unwrap();
    assert!(gic.mmio_write(GICD_BASE, 4, 0b10));
    assert!(gic.mmio_write(GICD_BASE + 0x84, 4, 1 << 1));
    assert!(gic.mmio_write(GICD_BASE + 0x104, 4, 1 << 1));
    assert!(gic.mmio_write(GICD_BASE + 0x421, 1, 0xA0));
    cpu.write(IccReg::Pmr, 0xF0);
    cpu.write(IccReg::Igrpen1, 1);
    u.mmio_write(IMSC, 4, INT_TX);
    puts(&u, "x");
    assert!(cpu.irq_line());
    assert_eq!(cpu.read(IccReg::Iar1), Some(u64::from(UART_INTID)));
    u.mmio_write(ICR, 4, INT_TX);
    cpu.write(IccReg::Eoir1, u64::from(UART_INTID));
    assert!(!cpu.irq_line(), "the level fell before the EOI");
}

proptest! {
    /// A read is refused exactly when the write of the same shape is, and no
    /// access sequence changes the flags or identification.
    #[test]
    fn mmio_decoding_is_total_and_consistent(
        accesses in prop::collection::vec((UART_BASE - 8..UART_BASE + 0x1008, prop::sample::select(vec![1usize, 2, 4, 8]), any::<u64>()), 1..200)
    ) {
        let (u, _, _) = uart();
        for (addr, size, value) in accesses {
            let read = u.mmio_read(addr, size);
            prop_assert_eq!(u.mmio_write(addr, size, value), read.is_some(), "{:#x}/{}", addr, size);
        }
        prop_assert_eq!(u.mmio_read(FR, 4), Some(FR_IDLE));
        prop_assert_eq!(u.mmio_read(UART_BASE + 0xFE0, 4), Some(0x11));
    }
}
