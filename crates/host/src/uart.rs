//! An Arm PL011 UART (DDI 0183) as a transmit-only console.
//!
//! Models: the data register (a write transmits the byte at once, so the
//! transmitter is never busy and its FIFO is always empty), the flag register
//! (TXFE and RXFE set, BUSY and the full flags clear), the control, line
//! control, baud-rate, FIFO-level, DMA-control and IrDA registers as storage,
//! the interrupt mask / raw / masked status and clear registers with the
//! transmit interrupt (raised by every transmitted byte, as QEMU's PL011 does,
//! cleared through UARTICR), the interrupt line into the GIC, and the
//! peripheral and PrimeCell identification registers.
//!
//! Leaves out: receiving (the receive FIFO is always empty, so no receive or
//! error interrupts), modem lines, and the enables: bytes are transmitted
//! whether or not UARTCR.UARTEN and TXE are set, as on QEMU, so images that rely
//! on QEMU's leniency still print.
//!
//! Output goes to a sink one line at a time (a line ends with `\n`, or at
//! [`LINE_LIMIT`] bytes so a guest that never ends a line cannot grow the
//! buffer without bound); [`Pl011::flush`] and dropping the UART write a partial
//! line. The UART is shared by every vCPU thread; its state sits behind a mutex
//! that is held while the interrupt line is driven, so line changes reach the
//! GIC in the order the registers changed.

use crate::gic::IrqLine;
use crate::sync::lock;
use apf_abi::platform::{UART_BASE, UART_SIZE};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::sync::Mutex;

/// The longest line the UART buffers before writing it out anyway.
pub const LINE_LIMIT: usize = 4096;

const UARTDR: u64 = 0x000;
const UARTRSR: u64 = 0x004;
const UARTFR: u64 = 0x018;
const UARTILPR: u64 = 0x020;
const UARTIBRD: u64 = 0x024;
const UARTFBRD: u64 = 0x028;
const UARTLCR_H: u64 = 0x02C;
const UARTCR: u64 = 0x030;
const UARTIFLS: u64 = 0x034;
const UARTIMSC: u64 = 0x038;
const UARTRIS: u64 = 0x03C;
const UARTMIS: u64 = 0x040;
const UARTICR: u64 = 0x044;
const UARTDMACR: u64 = 0x048;
const ID_REGS: u64 = 0xFE0;

/// UARTFR.RXFE | UARTFR.TXFE.
pub const FR_IDLE: u64 = 1 << 4 | 1 << 7;
/// UARTRIS.TXRIS: the transmit interrupt.
pub const INT_TX: u64 = 1 << 5;
/// The interrupt bits UARTIMSC and UARTICR implement.
const INT_ALL: u64 = 0x7FF;
/// UARTPeriphID0..3 (part 0x011, designer Arm, revision 1) and UARTPCellID0..3.
const IDS: [u64; 8] = [0x11, 0x10, 0x14, 0x00, 0x0D, 0xF0, 0x05, 0xB1];

/// Register state and the pending line.
#[derive(Debug)]
struct State {
    ilpr: u64,
    ibrd: u64,
    fbrd: u64,
    lcr_h: u64,
    cr: u64,
    ifls: u64,
    imsc: u64,
    ris: u64,
    dmacr: u64,
    line: Vec<u8>,
    /// The level last driven on the interrupt line.
    irq: bool,
    /// Set once the sink failed, so the failure is reported once.
    sink_failed: bool,
}

/// The registers the guest programmed, as a snapshot holds them. Output already
/// written, and a partial line not yet written, are not state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pl011State {
    /// UARTILPR.
    pub ilpr: u64,
    /// UARTIBRD.
    pub ibrd: u64,
    /// UARTFBRD.
    pub fbrd: u64,
    /// UARTLCR_H.
    pub lcr_h: u64,
    /// UARTCR.
    pub cr: u64,
    /// UARTIFLS.
    pub ifls: u64,
    /// UARTIMSC.
    pub imsc: u64,
    /// UARTRIS: the raw (pending) interrupt status.
    pub ris: u64,
    /// UARTDMACR.
    pub dmacr: u64,
}

/// The PL011.
pub struct Pl011 {
    state: Mutex<State>,
    sink: Mutex<Box<dyn Write + Send>>,
    irq: Box<dyn IrqLine>,
}

impl std::fmt::Debug for Pl011 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pl011")
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

impl Pl011 {
    /// A UART at reset writing to `sink`, driving `irq`.
    pub fn new(sink: Box<dyn Write + Send>, irq: Box<dyn IrqLine>) -> Pl011 {
        Pl011 {
            state: Mutex::new(State {
                ilpr: 0,
                ibrd: 0,
                fbrd: 0,
                lcr_h: 0,
                cr: 0x300,
                ifls: 0x12,
                imsc: 0,
                ris: 0,
                dmacr: 0,
                line: Vec::new(),
                irq: false,
                sink_failed: false,
            }),
            sink: Mutex::new(sink),
            irq,
        }
    }

    /// The register offset of an access, if it is one the UART takes: inside
    /// its frame, 1, 2 or 4 bytes at the start of a 32-bit register.
    fn offset(addr: u64, size: usize) -> Option<u64> {
        let off = addr.checked_sub(UART_BASE).filter(|&o| o < UART_SIZE)?;
        (matches!(size, 1 | 2 | 4) && off % 4 == 0).then_some(off)
    }

    /// MMIO read. `None` outside the frame, for unsupported sizes, and for
    /// offsets that are no register: the caller injects an external abort.
    pub fn mmio_read(&self, addr: u64, size: usize) -> Option<u64> {
        let off = Self::offset(addr, size)?;
        let s = lock(&self.state);
        let value = match off {
            // The receive FIFO is always empty.
            UARTDR | UARTRSR | UARTICR => 0,
            UARTFR => FR_IDLE,
            UARTILPR => s.ilpr,
            UARTIBRD => s.ibrd,
            UARTFBRD => s.fbrd,
            UARTLCR_H => s.lcr_h,
            UARTCR => s.cr,
            UARTIFLS => s.ifls,
            UARTIMSC => s.imsc,
            UARTRIS => s.ris,
            UARTMIS => s.ris & s.imsc,
            UARTDMACR => s.dmacr,
            _ if off >= ID_REGS => IDS[usize::try_from((off - ID_REGS) / 4).ok()?],
            _ => return None,
        };
        let mask = if size == 4 {
            u64::MAX
        } else {
            (1 << (8 * size)) - 1
        };
        Some(value & mask)
    }

    /// MMIO write; `false` as for [`Pl011::mmio_read`]'s `None`.
    pub fn mmio_write(&self, addr: u64, size: usize, value: u64) -> bool {
        let Some(off) = Self::offset(addr, size) else {
            return false;
        };
        let mut s = lock(&self.state);
        match off {
            UARTDR => {
                self.transmit(&mut s, value.to_le_bytes()[0]);
                s.ris |= INT_TX;
            }
            // Writing UARTECR clears the (never set) receive errors.
            UARTRSR => {}
            UARTILPR => s.ilpr = value & 0xFF,
            UARTIBRD => s.ibrd = value & 0xFFFF,
            UARTFBRD => s.fbrd = value & 0x3F,
            UARTLCR_H => s.lcr_h = value & 0xFF,
            UARTCR => s.cr = value & 0xFF87,
            UARTIFLS => s.ifls = value & 0x3F,
            UARTIMSC => s.imsc = value & INT_ALL,
            UARTICR => s.ris &= !value,
            UARTDMACR => s.dmacr = value & 0x7,
            // Read-only registers ignore writes.
            UARTFR | UARTRIS | UARTMIS => {}
            _ if off >= ID_REGS => {}
            _ => return false,
        }
        self.update_irq(&mut s);
        true
    }

    fn update_irq(&self, s: &mut State) {
        let level = s.ris & s.imsc != 0;
        if level != s.irq {
            s.irq = level;
            self.irq.set_level(level);
        }
    }

    fn transmit(&self, s: &mut State, byte: u8) {
        s.line.push(byte);
        if byte == b'\n' || s.line.len() >= LINE_LIMIT {
            self.write_line(s);
        }
    }

    fn write_line(&self, s: &mut State) {
        if s.line.is_empty() {
            return;
        }
        let mut sink = lock(&self.sink);
        let result = sink.write_all(&s.line).and_then(|()| sink.flush());
        s.line.clear();
        if let Err(e) = result
            && !s.sink_failed
        {
            tracing::warn!(error = %e, "UART output lost: the sink failed");
            s.sink_failed = true;
        }
    }

    /// The registers.
    pub fn save_state(&self) -> Pl011State {
        let s = lock(&self.state);
        Pl011State {
            ilpr: s.ilpr,
            ibrd: s.ibrd,
            fbrd: s.fbrd,
            lcr_h: s.lcr_h,
            cr: s.cr,
            ifls: s.ifls,
            imsc: s.imsc,
            ris: s.ris,
            dmacr: s.dmacr,
        }
    }

    /// Installs `state` (bits a register does not implement are dropped as a
    /// write would drop them) and drives the interrupt line to match. Restore
    /// the GIC first: its saved line level then already agrees, so an
    /// edge-triggered SPI sees no new edge.
    pub fn restore_state(&self, state: &Pl011State) {
        let mut s = lock(&self.state);
        s.ilpr = state.ilpr & 0xFF;
        s.ibrd = state.ibrd & 0xFFFF;
        s.fbrd = state.fbrd & 0x3F;
        s.lcr_h = state.lcr_h & 0xFF;
        s.cr = state.cr & 0xFF87;
        s.ifls = state.ifls & 0x3F;
        s.imsc = state.imsc & INT_ALL;
        s.ris = state.ris & INT_ALL;
        s.dmacr = state.dmacr & 0x7;
        s.irq = s.ris & s.imsc != 0;
        self.irq.set_level(s.irq);
    }

    /// Writes out a partial line.
    pub fn flush(&self) {
        let mut s = lock(&self.state);
        self.write_line(&mut s);
    }
}

impl Drop for Pl011 {
    fn drop(&mut self) {
        self.flush();
    }
}
