//! The register boundary between the firmware services (SDEI, PSCI, SMCCC) and a
//! vCPU, and the identity the platform gives each vCPU (its MPIDR).
//!
//! The firmware services see a vCPU only through [`GuestRegs`]: the general
//! registers, PC, PSTATE (in SPSR format) and the two EL1 exception registers an
//! SDEI COMPLETE_AND_RESUME writes. The interpreter's CPU implements it (in
//! `vcpu::context`); [`PlainRegs`] implements it for tests.

/// The registers a firmware call reads and writes.
pub trait GuestRegs {
    /// General register `n` (0..=30). Any other `n` reads as zero.
    fn x(&self, n: usize) -> u64;
    /// Sets general register `n` (0..=30). Any other `n` is ignored.
    fn set_x(&mut self, n: usize, v: u64);
    /// The PC.
    fn pc(&self) -> u64;
    /// Sets the PC.
    fn set_pc(&mut self, pc: u64);
    /// PSTATE, in SPSR_ELx format.
    fn pstate(&self) -> u64;
    /// Sets PSTATE from an SPSR_ELx-format value.
    fn set_pstate(&mut self, v: u64);
    /// ELR_EL1.
    fn elr_el1(&self) -> u64;
    /// Sets ELR_EL1.
    fn set_elr_el1(&mut self, v: u64);
    /// SPSR_EL1.
    fn spsr_el1(&self) -> u64;
    /// Sets SPSR_EL1.
    fn set_spsr_el1(&mut self, v: u64);
    /// The current exception level, PSTATE.EL (bits 3:2 of the SPSR format).
    fn el(&self) -> u8 {
        u8::try_from((self.pstate() >> 2) & 0b11).unwrap_or(0)
    }
}

/// PSTATE.M for EL1 using SP_EL1 (EL1h).
pub const PSTATE_MODE_EL1H: u64 = 0b0101;
/// PSTATE.{D,A,I,F}, bits 9:6 in SPSR format.
pub const PSTATE_DAIF: u64 = 0b1111 << 6;
/// EL1h with every exception masked: how firmware enters an EL1 handler
/// (SDEI dispatch, COMPLETE_AND_RESUME) and how PSCI CPU_ON starts a CPU.
pub const PSTATE_EL1H_MASKED: u64 = PSTATE_DAIF | PSTATE_MODE_EL1H;

/// The affinity fields of an MPIDR (Aff3 in 39:32, Aff2..Aff0 in 23:0); the
/// rest of the register (RES1 bit 31, U, MT) is not part of a CPU's address.
pub const MPIDR_AFFINITY_MASK: u64 = 0xFF_00FF_FFFF;
/// MPIDR_EL1 bit 31, RES1.
const MPIDR_RES1: u64 = 1 << 31;
/// vCPUs per Aff1 cluster, as QEMU `virt` lays them out with a GICv3 (the SGI
/// target list addresses 16 PEs per cluster).
pub const CPUS_PER_CLUSTER: usize = 16;

/// The affinity of vCPU `index`: Aff0 = index % 16, Aff1 = index / 16.
pub fn affinity_of(index: usize) -> u64 {
    let aff0 = (index % CPUS_PER_CLUSTER) as u64;
    let aff1 = ((index / CPUS_PER_CLUSTER) & 0xFF) as u64;
    aff1 << 8 | aff0
}

/// The MPIDR_EL1 value of vCPU `index`.
pub fn mpidr_el1_of(index: usize) -> u64 {
    MPIDR_RES1 | affinity_of(index)
}

/// The vCPU whose affinity is `mpidr`'s affinity fields, if it is one of the
/// first `vcpus`. Bits outside the affinity fields are ignored.
pub fn vcpu_of_affinity(mpidr: u64, vcpus: usize) -> Option<usize> {
    let aff = mpidr & MPIDR_AFFINITY_MASK;
    if aff >> 16 != 0 {
        return None; // Aff2 and Aff3 are always 0 on this platform.
    }
    let aff0 = (aff & 0xFF) as usize;
    let aff1 = ((aff >> 8) & 0xFF) as usize;
    if aff0 >= CPUS_PER_CLUSTER {
        return None;
    }
    let index = aff1 * CPUS_PER_CLUSTER + aff0;
    (index < vcpus).then_some(index)
}

/// A plain set of registers: the firmware services' test double, and a
/// snapshot type for callers that want one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PlainRegs {
    /// x0..x30.
    pub x: [u64; 31],
    /// PC.
    pub pc: u64,
    /// PSTATE in SPSR format.
    pub pstate: u64,
    /// ELR_EL1.
    pub elr_el1: u64,
    /// SPSR_EL1.
    pub spsr_el1: u64,
}

impl GuestRegs for PlainRegs {
    fn x(&self, n: usize) -> u64 {
        self.x.get(n).copied().unwrap_or(0)
    }
    fn set_x(&mut self, n: usize, v: u64) {
        if let Some(r) = self.x.get_mut(n) {
            *r = v;
        }
    }
    fn pc(&self) -> u64 {
        self.pc
    }
    fn set_pc(&mut self, pc: u64) {
        self.pc = pc;
    }
    fn pstate(&self) -> u64 {
        self.pstate
    }
    fn set_pstate(&mut self, v: u64) {
        self.pstate = v;
    }
    fn elr_el1(&self) -> u64 {
        self.elr_el1
    }
    fn set_elr_el1(&mut self, v: u64) {
        self.elr_el1 = v;
    }
    fn spsr_el1(&self) -> u64 {
        self.spsr_el1
    }
    fn set_spsr_el1(&mut self, v: u64) {
        self.spsr_el1 = v;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn affinity_round_trips_for_every_vcpu() {
        for i in 0..300 {
            assert_eq!(vcpu_of_affinity(mpidr_el1_of(i), 300), Some(i));
        }
        assert_eq!(mpidr_el1_of(17), 0x8000_0101);
    }

    #[test]
    fn foreign_affinities_name_no_vcpu() {
        assert_eq!(vcpu_of_affinity(4, 4), None, "beyond the vCPU count");
        assert_eq!(
            vcpu_of_affinity(0x10, 64),
            None,
            "Aff0 16 is not in a cluster"
        );
        assert_eq!(vcpu_of_affinity(1 << 16, 64), None, "Aff2 is always 0");
        assert_eq!(vcpu_of_affinity(1 << 32, 64), None, "Aff3 is always 0");
        assert_eq!(
            vcpu_of_affinity(0xC000_0001, 2),
            Some(1),
            "U and RES1 bits are not affinity"
        );
    }

    #[test]
    fn plain_regs_ignore_out_of_range_registers() {
        let mut r = PlainRegs::default();
        r.set_x(31, 5);
        r.set_x(usize::MAX, 5);
        assert_eq!(r.x(31), 0);
        assert_eq!(r, PlainRegs::default());
    }
}
