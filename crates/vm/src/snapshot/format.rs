//! A snapshot directory on disk:
//!
//! - `memory`: guest RAM as a sparse file, page `n` at `n * 4096`; pages the
//!   guest never touched are holes.
//! - `state`: one header line, `apf-snapshot <format> <length> <crc32>`, then
//!   `length` bytes of JSON ([`SnapshotState`]) whose CRC-32 the header gives.
//!   It is written last: a directory without it is not a snapshot.
//!
//! The state holds the configuration, every vCPU's and the platform's state,
//! the workloads' progress as the host saw it, and the memory image's map: which
//! pages it holds (extents) and each one's checksum.

use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::time::Duration;

use apf_host::machine::MachineState;
use apf_host::vcpu::VcpuState;
use serde::{Deserialize, Serialize};

use crate::config::VmConfig;
pub use crate::error::SnapshotError;

/// The format this apf writes and reads. Bump it whenever [`SnapshotState`] or
/// the layout changes in a way an older reader would misread.
pub const FORMAT: u32 = 1;

const MAGIC: &str = "apf-snapshot";
/// The state file's name in a snapshot directory.
pub const STATE_FILE: &str = "state";
/// The memory image's name in a snapshot directory.
pub const MEMORY_FILE: &str = "memory";

/// The memory image's map.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryMap {
    /// Pages of guest RAM (the image's length is this many pages).
    pub pages: u64,
    /// The pages the image holds, as `[first, count]` runs in order.
    pub extents: Vec<[u64; 2]>,
    /// Each held page's checksum, in the order of the extents.
    pub sums: Vec<u32>,
}

impl MemoryMap {
    /// Each held page with its checksum, in order.
    pub fn held(&self) -> impl Iterator<Item = (u64, u32)> + '_ {
        self.extents
            .iter()
            .flat_map(|&[first, count]| first..first.saturating_add(count))
            .zip(self.sums.iter().copied())
    }

    /// Each page's checksum by page number (0 for holes, which are never read).
    pub fn sums_by_page(&self) -> Box<[u32]> {
        let mut sums = vec![0u32; usize::try_from(self.pages).unwrap_or(0)];
        for (n, sum) in self.held() {
            if let Some(s) = usize::try_from(n).ok().and_then(|n| sums.get_mut(n)) {
                *s = sum;
            }
        }
        sums.into_boxed_slice()
    }

    /// Pages held.
    pub fn held_pages(&self) -> u64 {
        self.extents.iter().map(|e| e[1]).sum()
    }

    /// Records page `n` (called in increasing order).
    pub(crate) fn push(&mut self, n: u64, sum: u32) {
        match self.extents.last_mut() {
            Some([first, count]) if *first + *count == n => *count += 1,
            _ => self.extents.push([n, 1]),
        }
        self.sums.push(sum);
    }

    fn check(&self, dir: &Path) -> Result<(), SnapshotError> {
        let bad = |what: String| SnapshotError::Inconsistent {
            dir: dir.to_path_buf(),
            what,
        };
        let mut next = 0u64;
        for &[first, count] in &self.extents {
            let end = first.saturating_add(count);
            if first < next || count == 0 || end > self.pages {
                return Err(bad(format!(
                    "memory extent [{first}, +{count}] is out of order or past the {} pages of RAM",
                    self.pages
                )));
            }
            next = end;
        }
        if self.held_pages() != self.sums.len() as u64 {
            return Err(bad(format!(
                "the memory map holds {} pages but {} checksums",
                self.held_pages(),
                self.sums.len()
            )));
        }
        Ok(())
    }
}

/// The host's view of the built-in guest's processes at the snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProgressState {
    /// Which processes the host had seen end.
    pub ended: Vec<bool>,
    /// Each process's units of work done, as its results said.
    pub progress: Vec<u64>,
    /// Whether every process with work to do had done it.
    pub work_done: bool,
}

/// Which guest a snapshot holds: it decides how the restored run is watched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GuestKind {
    /// The built-in guest: processes report in its boot block.
    BuiltIn,
    /// A Linux guest: its init reports on the console.
    Linux,
}

/// Everything a restore needs besides the memory image.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SnapshotState {
    /// The apf that wrote it (informative; [`FORMAT`] decides compatibility).
    pub apf_version: String,
    /// The configuration it ran with.
    pub config: VmConfig,
    /// The guest.
    pub guest: GuestKind,
    /// How long the VM had run when its vCPUs stopped.
    pub taken_at: Duration,
    /// Everything the guest had printed.
    pub console: String,
    /// The platform: GIC, UART, PSCI.
    pub machine: MachineState,
    /// Each vCPU, in index order.
    pub vcpus: Vec<VcpuState>,
    /// The processes as the host saw them.
    pub progress: ProgressState,
    /// The memory image's map.
    pub memory: MemoryMap,
}

/// Writes `state` as the directory's state file (after the memory image).
pub(crate) fn write_state(dir: &Path, state: &SnapshotState) -> Result<(), SnapshotError> {
    let werr = |source| SnapshotError::Write {
        dir: dir.to_path_buf(),
        source,
    };
    let body = serde_json::to_vec(state).map_err(|e| werr(std::io::Error::other(e)))?;
    let header = format!(
        "{MAGIC} {FORMAT} {} {:08x}\n",
        body.len(),
        crc32fast::hash(&body)
    );
    let mut f = File::create(dir.join(STATE_FILE)).map_err(werr)?;
    f.write_all(header.as_bytes()).map_err(werr)?;
    f.write_all(&body).map_err(werr)?;
    f.sync_all().map_err(werr)
}

/// Reads and checks a snapshot's state, and that its memory image is whole.
pub fn read_state(dir: &Path) -> Result<SnapshotState, SnapshotError> {
    let d = || dir.to_path_buf();
    let bytes = std::fs::read(dir.join(STATE_FILE)).map_err(|source| SnapshotError::Missing {
        dir: d(),
        file: STATE_FILE,
        source,
    })?;
    let nl = bytes
        .iter()
        .position(|&b| b == b'\n')
        .ok_or_else(|| SnapshotError::NotASnapshot { dir: d() })?;
    let header =
        std::str::from_utf8(&bytes[..nl]).map_err(|_| SnapshotError::NotASnapshot { dir: d() })?;
    let fields: Vec<&str> = header.split(' ').collect();
    if fields.first() != Some(&MAGIC) || fields.len() != 4 {
        return Err(SnapshotError::NotASnapshot { dir: d() });
    }
    if fields[1] != FORMAT.to_string() {
        return Err(SnapshotError::Version {
            dir: d(),
            found: fields[1].to_string(),
            reads: FORMAT,
        });
    }
    let (Ok(len), Ok(crc)) = (fields[2].parse::<u64>(), u32::from_str_radix(fields[3], 16)) else {
        return Err(SnapshotError::NotASnapshot { dir: d() });
    };
    let body = &bytes[nl + 1..];
    if body.len() as u64 != len {
        return Err(SnapshotError::Truncated {
            dir: d(),
            file: STATE_FILE,
            found: (nl + 1 + body.len()) as u64,
            expected: nl as u64 + 1 + len,
        });
    }
    let found = crc32fast::hash(body);
    if found != crc {
        return Err(SnapshotError::StateChecksum {
            dir: d(),
            expected: crc,
            found,
        });
    }
    let state: SnapshotState = serde_json::from_slice(body).map_err(|e| SnapshotError::Parse {
        dir: d(),
        message: e.to_string(),
    })?;
    state.memory.check(dir)?;
    let ram_pages = state.config.ram.0 / apf_abi::PAGE_SIZE;
    if state.memory.pages != ram_pages {
        return Err(SnapshotError::Inconsistent {
            dir: d(),
            what: format!(
                "the memory image has {} pages but the configuration's RAM has {ram_pages}",
                state.memory.pages
            ),
        });
    }
    if state.vcpus.len() as u64 != u64::from(state.config.vcpus) {
        return Err(SnapshotError::Inconsistent {
            dir: d(),
            what: format!(
                "{} vCPU states for {} vCPUs",
                state.vcpus.len(),
                state.config.vcpus
            ),
        });
    }
    let image = dir.join(MEMORY_FILE);
    let found = std::fs::metadata(&image)
        .map_err(|source| SnapshotError::Missing {
            dir: d(),
            file: MEMORY_FILE,
            source,
        })?
        .len();
    let expected = state.memory.pages * apf_abi::PAGE_SIZE;
    if found != expected {
        return Err(SnapshotError::Truncated {
            dir: d(),
            file: MEMORY_FILE,
            found,
            expected,
        });
    }
    Ok(state)
}
