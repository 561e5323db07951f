//! The interpreter's [`Bus`] for one vCPU: guest RAM through the stage-2 TLB, the
//! GIC and UART by MMIO, the GIC CPU interface as system registers.

use crate::gic::{GicCpuInterface, IccReg};
use crate::machine::Machine;
use crate::waker::VcpuWaker;
use apf_abi::Gfn;
use apf_abi::Gpa;
use apf_cpu::{AccessSize, AtomicOp, Broadcast, Bus, BusError, HostPage, SysRegId};
use apf_mem::{Resolve, TlbMiss, VcpuTlb};

/// One vCPU's bus, borrowed for one slice of `Cpu::run`.
pub(crate) struct VcpuBus<'a> {
    /// This vCPU's index (the sender of its maintenance broadcasts).
    pub(crate) index: usize,
    /// The TLB itself, not a wrapper: its hit paths inline into the interpreter.
    pub(crate) ram: &'a mut VcpuTlb,
    pub(crate) icc: &'a mut GicCpuInterface,
    pub(crate) machine: &'a Machine,
    pub(crate) waker: &'a VcpuWaker,
    /// The interrupt line the CPU was given for this slice: a CPU-interface
    /// access that leaves it as it was needs no new slice.
    pub(crate) irq_line: bool,
    /// MMIO accesses in this slice, for the exit statistics.
    pub(crate) mmio: u64,
    /// Stage-2 faults resolved without an exit in this slice.
    pub(crate) mapped: u64,
    /// The last miss that could not be mapped here (its page needs a fetch or
    /// is not RAM), for the stage-2 exit that follows.
    pub(crate) unresolved: Option<(Gfn, Resolve)>,
}

// The interpreter's `Bus` and the TLB hit path take raw `u64` guest-physical
// addresses (the interpreter translates virtual ones itself); they become a
// `Gpa` where they meet the machine (`is_ram`).
impl VcpuBus<'_> {
    /// After a CPU-interface access: the CPU samples its interrupt line only
    /// between slices, so a line that differs from the one it was given ends the
    /// slice (a kick). Most accesses (an EOI with nothing else pending, a PMR
    /// write) leave it as it was and cost no exit. A change another thread makes
    /// meanwhile kicks this vCPU itself, so none is missed.
    fn end_slice_if_line_moved(&mut self) {
        if self.icc.irq_line() != self.irq_line {
            self.waker.kick();
        }
    }

    /// After a TLB miss on RAM: the stage-2 fault path, taken here without an
    /// exit when the page needs no I/O (resident, rescued or zero-filled), as
    /// KVM handles such faults without the VMM. Returns whether the page is now
    /// mapped and the access can be retried; if not, the miss becomes a stage-2
    /// exit, and what `resolve` found is kept for the exit's handler so the
    /// fault is not resolved (and counted) twice.
    ///
    /// Resolving here also guarantees progress: the TLB is direct-mapped, so two
    /// pages one access needs (a table descriptor and the data, two descriptors
    /// of one walk) can share an entry; resolved on exits they would evict each
    /// other on every retry, resolved here each access completes as it maps.
    #[cold]
    fn map_on_miss(&mut self, addr: u64, write: bool) -> bool {
        match self.ram.resolve(Gpa(addr), write) {
            Resolve::Mapped => {
                self.mapped += 1;
                true
            }
            r => {
                self.unresolved = Some((Gpa(addr).gfn(), r));
                false
            }
        }
    }

    /// After a TLB miss: `None` if `addr` is not RAM (MMIO or nothing);
    /// otherwise the access, retried once its page is mapped, or a stage-2
    /// fault if the page needs a fetch.
    fn ram_miss<T>(
        &mut self,
        addr: u64,
        write: bool,
        access: impl FnOnce(&mut VcpuTlb) -> Result<T, TlbMiss>,
    ) -> Option<Result<T, BusError>> {
        if !self.machine.is_ram(Gpa(addr), 1) {
            return None;
        }
        Some(if self.map_on_miss(addr, write) {
            access(self.ram).map_err(|_| BusError::Stage2Fault)
        } else {
            Err(BusError::Stage2Fault)
        })
    }
}

impl VcpuBus<'_> {
    /// [`Bus::read`] after a TLB miss: RAM to map first, or MMIO.
    #[cold]
    #[inline(never)]
    fn read_miss(&mut self, addr: u64, size: AccessSize) -> Result<u64, BusError> {
        self.ram_miss(addr, false, |t| t.read(addr, size))
            .unwrap_or_else(|| {
                self.mmio += 1;
                self.machine
                    .mmio_read(addr, bytes(size))
                    .ok_or(BusError::ExternalAbort)
            })
    }

    /// [`Bus::write`] after a TLB miss: RAM to map first, or MMIO.
    #[cold]
    #[inline(never)]
    fn write_miss(&mut self, addr: u64, size: AccessSize, value: u64) -> Result<(), BusError> {
        self.ram_miss(addr, true, |t| t.write(addr, size, value))
            .unwrap_or_else(|| {
                self.mmio += 1;
                if self.machine.mmio_write(addr, bytes(size), value) {
                    // A GIC write may change this vCPU's interrupt line.
                    self.waker.kick();
                    Ok(())
                } else {
                    Err(BusError::ExternalAbort)
                }
            })
    }
}

fn bytes(size: AccessSize) -> usize {
    usize::try_from(size.bytes()).unwrap_or(8)
}

impl Bus for VcpuBus<'_> {
    #[inline]
    fn fetch(&mut self, addr: u64) -> Result<u32, BusError> {
        // Instructions execute from RAM only; a fetch from MMIO is an abort.
        match self.ram.fetch_insn(addr) {
            Ok(w) => Ok(w),
            Err(_) => self
                .ram_miss(addr, false, |t| t.fetch_insn(addr))
                .unwrap_or(Err(BusError::ExternalAbort)),
        }
    }

    // Always, with the miss out of line, as `write`: the run loop grew with
    // the block compiler and left a hinted read out of line (CoreMark 53 -> 62
    // host instructions per guest instruction).
    #[inline(always)]
    fn read(&mut self, addr: u64, size: AccessSize) -> Result<u64, BusError> {
        match self.ram.read(addr, size) {
            Ok(v) => Ok(v),
            Err(_) => self.read_miss(addr, size),
        }
    }

    fn host_page(&mut self, pa: u64, write: bool) -> Option<HostPage> {
        let page = self.ram.host_page(pa, write)?;
        // SAFETY: `VcpuTlb::host_page` gives a page its hits may access, valid
        // until this vCPU's next `sync` or `park`; `Vcpu::step` makes those only
        // between runs, so the page outlives the run that asked. Other threads
        // touch mapped guest pages only through apf-mem's atomic accesses.
        #[allow(unsafe_code)]
        Some(unsafe { HostPage::new(page) })
    }

    // Always, with the miss out of line: called, a store paid a call and a
    // size dispatch that the caller's constant size folds away.
    #[inline(always)]
    fn write(&mut self, addr: u64, size: AccessSize, value: u64) -> Result<(), BusError> {
        match self.ram.write(addr, size, value) {
            Ok(()) => Ok(()),
            Err(_) => self.write_miss(addr, size, value),
        }
    }

    fn compare_exchange(
        &mut self,
        addr: u64,
        size: AccessSize,
        old: u64,
        new: u64,
    ) -> Result<u64, BusError> {
        match self.ram.compare_exchange(addr, size, old, new) {
            Ok(v) => Ok(v),
            Err(_) => self
                .ram_miss(addr, true, |t| t.compare_exchange(addr, size, old, new))
                .unwrap_or(Err(BusError::ExternalAbort)),
        }
    }

    fn compare_exchange_pair(&mut self, addr: u64, old: u128, new: u128) -> Result<u128, BusError> {
        match self.ram.compare_exchange_pair(addr, old, new) {
            Ok(v) => Ok(v),
            Err(_) => self
                .ram_miss(addr, true, |t| t.compare_exchange_pair(addr, old, new))
                .unwrap_or(Err(BusError::ExternalAbort)),
        }
    }

    fn atomic_rmw(
        &mut self,
        addr: u64,
        size: AccessSize,
        op: AtomicOp,
        operand: u64,
    ) -> Result<u64, BusError> {
        let apply = |old| op.apply(size, old, operand);
        match self.ram.atomic_rmw(addr, size, apply) {
            Ok(v) => Ok(v),
            Err(_) => self
                .ram_miss(addr, true, |t| t.atomic_rmw(addr, size, apply))
                .unwrap_or(Err(BusError::ExternalAbort)),
        }
    }

    fn sysreg_read(&mut self, reg: SysRegId) -> Option<u64> {
        let icc = IccReg::decode(reg.op0, reg.op1, reg.crn, reg.crm, reg.op2)?;
        let v = self.icc.read(icc);
        // IAR changes the running priority, and so the line.
        self.end_slice_if_line_moved();
        v
    }

    fn sysreg_write(&mut self, reg: SysRegId, value: u64) -> bool {
        let Some(icc) = IccReg::decode(reg.op0, reg.op1, reg.crn, reg.crm, reg.op2) else {
            return false;
        };
        let ok = self.icc.write(icc, value);
        self.end_slice_if_line_moved();
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
