//! The boot block: how the VMM tells its guest what to run, and how the guest
//! reports back.
//!
//! The block sits in guest RAM at [`BOOT_BLOCK_GPA`], just below the image. A guest
//! that finds no [`BOOT_MAGIC`] there (QEMU, a VMM that passes nothing) runs its
//! built-in default configuration. The guest writes `results` as its processes
//! progress and finish; the host reads them while the VM runs and after SYSTEM_OFF.

use core::mem::{offset_of, size_of};

/// Guest-physical address of the boot block (one 4 KiB page below the image).
pub const BOOT_BLOCK_GPA: u64 = crate::platform::IMAGE_LOAD_ADDR - 0x1000;
/// "APFB", little-endian.
pub const BOOT_MAGIC: u32 = 0x4246_5041;
/// Layout version of [`BootBlock`]. 2: [`ProcSpec::write_pct`] (32 -> 40 bytes).
pub const BOOT_VERSION: u32 = 2;
/// Most processes a run can have.
pub const BOOT_MAX_PROCS: usize = 48;

/// Workload kinds (DESIGN §7).
pub mod workload {
    /// Random page touches over a working set.
    pub const SCAN: u32 = 1;
    /// CPU only.
    pub const CALC: u32 = 2;
    /// Hash-table gets in guest memory.
    pub const KV: u32 = 3;
    /// Alternating compute and memory phases, like a compile.
    pub const BUILD: u32 = 4;
}

/// Process states in [`ProcResult::state`].
pub mod proc_state {
    /// Not started.
    pub const NEW: u32 = 0;
    /// Running or sleeping.
    pub const RUNNING: u32 = 1;
    /// Finished its work, or stopped when the run ended.
    pub const DONE: u32 = 2;
    /// Killed by the kernel (for example after an external abort).
    pub const KILLED: u32 = 3;
}

/// What one process should do.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcSpec {
    /// A [`workload`] kind.
    pub kind: u32,
    /// The vCPU the process is pinned to.
    pub vcpu: u32,
    /// Bytes of working set.
    pub mem_bytes: u64,
    /// Units of work to do; 0 = until the host sets [`BootBlock::stop`].
    pub work: u64,
    /// Per-process seed (derived from the run's seed by the VMM).
    pub seed: u64,
    /// `scan`: the percentage of its accesses that write (0..=100; 100 = every
    /// access a read-modify-write). Other kinds ignore it.
    pub write_pct: u32,
    /// Reserved, 0.
    pub reserved: u32,
}

/// [`ProcSpec::write_pct`] when none is given: every access writes.
pub const WRITE_PCT_ALL: u32 = 100;

impl Default for ProcSpec {
    /// An empty slot; `write_pct` as when none is given, so a spec built from the
    /// default keeps today's read-modify-write scan.
    fn default() -> Self {
        ProcSpec {
            kind: 0,
            vcpu: 0,
            mem_bytes: 0,
            work: 0,
            seed: 0,
            write_pct: WRITE_PCT_ALL,
            reserved: 0,
        }
    }
}

/// What one process reports.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProcResult {
    /// A [`proc_state`] value.
    pub state: u32,
    /// The exception syndrome that killed the process, if it was killed.
    pub kill_esr: u32,
    /// Units of work done so far.
    pub progress: u64,
    /// Checksum of the process's data after `progress` units.
    pub checksum: u64,
    /// Reserved.
    pub reserved: u64,
}

/// The boot block.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BootBlock {
    /// [`BOOT_MAGIC`].
    pub magic: u32,
    /// [`BOOT_VERSION`].
    pub version: u32,
    /// vCPUs the guest should bring up.
    pub nr_vcpus: u32,
    /// Entries of `procs` in use.
    pub nr_procs: u32,
    /// Guest RAM base.
    pub ram_base: u64,
    /// Guest RAM size in bytes.
    pub ram_size: u64,
    /// The run's seed.
    pub seed: u64,
    /// Written by the host: non-zero asks the guest to stop its processes and
    /// power off.
    pub stop: u32,
    /// Written by the guest: non-zero once every process has ended.
    pub finished: u32,
    /// The processes.
    pub procs: [ProcSpec; BOOT_MAX_PROCS],
    /// Their results.
    pub results: [ProcResult; BOOT_MAX_PROCS],
}

impl Default for BootBlock {
    fn default() -> Self {
        BootBlock {
            magic: BOOT_MAGIC,
            version: BOOT_VERSION,
            nr_vcpus: 1,
            nr_procs: 0,
            ram_base: crate::platform::RAM_BASE,
            ram_size: 0,
            seed: 0,
            stop: 0,
            finished: 0,
            procs: [ProcSpec::default(); BOOT_MAX_PROCS],
            results: [ProcResult::default(); BOOT_MAX_PROCS],
        }
    }
}

/// Offset of `stop` in the block.
pub const BOOT_OFF_STOP: u64 = offset_of!(BootBlock, stop) as u64;
/// Offset of `finished`.
pub const BOOT_OFF_FINISHED: u64 = offset_of!(BootBlock, finished) as u64;
/// Offset of `procs`.
pub const BOOT_OFF_PROCS: u64 = offset_of!(BootBlock, procs) as u64;
/// Offset of `results`.
pub const BOOT_OFF_RESULTS: u64 = offset_of!(BootBlock, results) as u64;
/// Size of one [`ProcSpec`].
pub const BOOT_PROC_SPEC_SIZE: u64 = size_of::<ProcSpec>() as u64;
/// Size of one [`ProcResult`].
pub const BOOT_PROC_RESULT_SIZE: u64 = size_of::<ProcResult>() as u64;
/// Size of the block.
pub const BOOT_BLOCK_SIZE: u64 = size_of::<BootBlock>() as u64;
/// Size of the block, for buffers.
pub const BOOT_BLOCK_BYTES: usize = size_of::<BootBlock>();

const _: () = {
    assert!(BOOT_OFF_STOP == 40);
    assert!(BOOT_OFF_FINISHED == 44);
    assert!(BOOT_OFF_PROCS == 48);
    assert!(BOOT_PROC_SPEC_SIZE == 40);
    assert!(BOOT_PROC_RESULT_SIZE == 32);
    assert!(BOOT_OFF_RESULTS == BOOT_OFF_PROCS + BOOT_PROC_SPEC_SIZE * BOOT_MAX_PROCS as u64);
    assert!(BOOT_BLOCK_SIZE <= 4096);
};

impl BootBlock {
    /// The block as bytes, to write into guest memory.
    pub fn to_bytes(&self) -> [u8; BOOT_BLOCK_BYTES] {
        let mut out = [0u8; BOOT_BLOCK_BYTES];
        let mut w = Writer {
            buf: &mut out,
            pos: 0,
        };
        w.u32(self.magic);
        w.u32(self.version);
        w.u32(self.nr_vcpus);
        w.u32(self.nr_procs);
        w.u64(self.ram_base);
        w.u64(self.ram_size);
        w.u64(self.seed);
        w.u32(self.stop);
        w.u32(self.finished);
        for p in &self.procs {
            w.u32(p.kind);
            w.u32(p.vcpu);
            w.u64(p.mem_bytes);
            w.u64(p.work);
            w.u64(p.seed);
            w.u32(p.write_pct);
            w.u32(p.reserved);
        }
        for r in &self.results {
            w.u32(r.state);
            w.u32(r.kill_esr);
            w.u64(r.progress);
            w.u64(r.checksum);
            w.u64(r.reserved);
        }
        out
    }

    /// Parses a block read from guest memory. `None` if the magic or version is wrong.
    pub fn from_bytes(bytes: &[u8; BOOT_BLOCK_BYTES]) -> Option<BootBlock> {
        let mut r = Reader { buf: bytes, pos: 0 };
        let mut block = BootBlock {
            magic: r.u32(),
            version: r.u32(),
            nr_vcpus: r.u32(),
            nr_procs: r.u32(),
            ram_base: r.u64(),
            ram_size: r.u64(),
            seed: r.u64(),
            stop: r.u32(),
            finished: r.u32(),
            ..BootBlock::default()
        };
        if block.magic != BOOT_MAGIC || block.version != BOOT_VERSION {
            return None;
        }
        for p in &mut block.procs {
            *p = ProcSpec {
                kind: r.u32(),
                vcpu: r.u32(),
                mem_bytes: r.u64(),
                work: r.u64(),
                seed: r.u64(),
                write_pct: r.u32(),
                reserved: r.u32(),
            };
        }
        for res in &mut block.results {
            *res = ProcResult {
                state: r.u32(),
                kill_esr: r.u32(),
                progress: r.u64(),
                checksum: r.u64(),
                reserved: r.u64(),
            };
        }
        Some(block)
    }
}

struct Writer<'a> {
    buf: &'a mut [u8],
    pos: usize,
}

impl Writer<'_> {
    fn u32(&mut self, v: u32) {
        self.buf[self.pos..self.pos + 4].copy_from_slice(&v.to_le_bytes());
        self.pos += 4;
    }
    fn u64(&mut self, v: u64) {
        self.buf[self.pos..self.pos + 8].copy_from_slice(&v.to_le_bytes());
        self.pos += 8;
    }
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn u32(&mut self) -> u32 {
        let mut b = [0u8; 4];
        b.copy_from_slice(&self.buf[self.pos..self.pos + 4]);
        self.pos += 4;
        u32::from_le_bytes(b)
    }
    fn u64(&mut self) -> u64 {
        let mut b = [0u8; 8];
        b.copy_from_slice(&self.buf[self.pos..self.pos + 8]);
        self.pos += 8;
        u64::from_le_bytes(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_roundtrip_and_field_offsets() {
        let mut block = BootBlock {
            nr_procs: 2,
            seed: 7,
            stop: 1,
            ..BootBlock::default()
        };
        block.procs[1] = ProcSpec {
            kind: workload::SCAN,
            vcpu: 1,
            mem_bytes: 1 << 20,
            work: 9,
            seed: 3,
            write_pct: 40,
            reserved: 0,
        };
        block.results[15].checksum = 0xABCD;
        let bytes = block.to_bytes();
        assert_eq!(BootBlock::from_bytes(&bytes), Some(block));
        let at = |off: u64| usize::try_from(off).unwrap();
        assert_eq!(bytes[at(BOOT_OFF_STOP)], 1);
        let p1 = at(BOOT_OFF_PROCS + BOOT_PROC_SPEC_SIZE);
        assert_eq!(u32::from(bytes[p1]), workload::SCAN);
        assert_eq!(u32::from(bytes[p1 + 32]), 40, "write_pct after seed");
        let r15 = at(BOOT_OFF_RESULTS + 15 * BOOT_PROC_RESULT_SIZE + 16);
        assert_eq!(bytes[r15..r15 + 2], [0xCD, 0xAB]);
        let mut bad = bytes;
        bad[0] ^= 1;
        assert_eq!(BootBlock::from_bytes(&bad), None);
    }
}
