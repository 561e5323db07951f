//! The interpreter's [`Bus`] for one vCPU: guest RAM through the stage-2 TLB, the
//! GIC and UART by MMIO, the GIC CPU interface as system registers.

use crate::gic::{GicCpuInterface, IccReg};
use crate::machine::Machine;
use crate::waker::VcpuWaker;
use apf_abi::Gpa;
use apf_cpu::{AccessSize, AtomicOp, Broadcast, Bus, BusError, SysRegId};
use apf_mem::VcpuTlb;

/// One vCPU's bus, borrowed for one slice of `Cpu::run`.
pub(crate) struct VcpuBus<'a> {
    /// This vCPU's index (the sender of its maintenance broadcasts).
    pub(crate) index: usize,
    /// The TLB itself, not a wrapper: its hit paths inline into the interpreter.
    pub(crate) ram: &'a mut VcpuTlb,
    pub(crate) icc: &'a mut GicCpuInterface,
    pub(crate) machine: &'a Machine,
    pub(crate) waker: &'a VcpuWaker,
    /// MMIO accesses in this slice, for the exit statistics.
    pub(crate) mmio: u64,
}

// The interpreter's `Bus` and the TLB hit path take raw `u64` addresses: they
// become virtual once a stage-1 MMU lands. With it off they are guest
// physical, and become a `Gpa` where they meet the machine (`is_ram`).
impl VcpuBus<'_> {
    /// After a TLB miss: RAM misses go to the stage-2 fault path (an exit), other
    /// addresses are MMIO or nothing.
    fn miss(&self, addr: u64) -> BusError {
        if self.machine.is_ram(Gpa(addr), 1) {
            BusError::Stage2Fault
        } else {
            BusError::ExternalAbort
        }
    }
}

fn bytes(size: AccessSize) -> usize {
    usize::try_from(size.bytes()).unwrap_or(8)
}

impl Bus for VcpuBus<'_> {
    #[inline]
    fn fetch(&mut self, addr: u64) -> Result<u32, BusError> {
        // Instructions execute from RAM only; a fetch from MMIO is an abort.
        self.ram.fetch_insn(addr).map_err(|_| self.miss(addr))
    }

    #[inline]
    fn read(&mut self, addr: u64, size: AccessSize) -> Result<u64, BusError> {
        match self.ram.read(addr, size) {
            Ok(v) => Ok(v),
            Err(_) if self.machine.is_ram(Gpa(addr), 1) => Err(BusError::Stage2Fault),
            Err(_) => {
                self.mmio += 1;
                self.machine
                    .mmio_read(addr, bytes(size))
                    .ok_or(BusError::ExternalAbort)
            }
        }
    }

    #[inline]
    fn write(&mut self, addr: u64, size: AccessSize, value: u64) -> Result<(), BusError> {
        match self.ram.write(addr, size, value) {
            Ok(()) => Ok(()),
            Err(_) if self.machine.is_ram(Gpa(addr), 1) => Err(BusError::Stage2Fault),
            Err(_) => {
                self.mmio += 1;
                if self.machine.mmio_write(addr, bytes(size), value) {
                    // A GIC write may change this vCPU's interrupt line.
                    self.waker.kick();
                    Ok(())
                } else {
                    Err(BusError::ExternalAbort)
                }
            }
        }
    }

    fn compare_exchange(
        &mut self,
        addr: u64,
        size: AccessSize,
        old: u64,
        new: u64,
    ) -> Result<u64, BusError> {
        self.ram
            .compare_exchange(addr, size, old, new)
            .map_err(|_| self.miss(addr))
    }

    fn compare_exchange_pair(&mut self, addr: u64, old: u128, new: u128) -> Result<u128, BusError> {
        self.ram
            .compare_exchange_pair(addr, old, new)
            .map_err(|_| self.miss(addr))
    }

    fn atomic_rmw(
        &mut self,
        addr: u64,
        size: AccessSize,
        op: AtomicOp,
        operand: u64,
    ) -> Result<u64, BusError> {
        self.ram
            .atomic_rmw(addr, size, |old| op.apply(size, old, operand))
            .map_err(|_| self.miss(addr))
    }

    fn sysreg_read(&mut self, reg: SysRegId) -> Option<u64> {
        let icc = IccReg::decode(reg.op0, reg.op1, reg.crn, reg.crm, reg.op2)?;
        let v = self.icc.read(icc);
        // IAR changes the running priority, and so the line.
        self.waker.kick();
        v
    }

    fn sysreg_write(&mut self, reg: SysRegId, value: u64) -> bool {
        let Some(icc) = IccReg::decode(reg.op0, reg.op1, reg.crn, reg.crm, reg.op2) else {
            return false;
        };
        let ok = self.icc.write(icc, value);
        self.waker.kick();
        ok
    }

    /// Broadcasts `op` to the other vCPUs and waits until none can still use what
    /// it invalidates; `true` if this vCPU must drop its own TLB and decoded code
    /// (see `maintenance`).
    fn broadcast(&mut self, op: Broadcast) -> bool {
        let machine = self.machine;
        machine.maintenance.broadcast(
            self.index,
            op,
            |i| {
                if let Some(w) = machine.waker(i) {
                    w.kick();
                }
            },
            || machine.stopping(),
        )
    }

    #[inline]
    fn kicked(&self) -> bool {
        self.waker.is_kicked()
    }
}
