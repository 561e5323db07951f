//! Booting an arm64 Linux kernel: its Image header (`image.rs`), where the
//! kernel, initrd and device tree go in RAM, the device tree (`fdt.rs`), the
//! command line, and the console protocol its init speaks (`console.rs`).
//!
//! # The protocol with the guest's init
//!
//! - The host appends one `apf.proc=<kind>,<vcpu>,<mem_bytes>,<work>,<seed>`
//!   token per process to the kernel command line, in process order: the kind
//!   as [`crate::workload::kind_name`] prints it, the rest decimal, with the
//!   values the built-in guest's boot block would carry ([`crate::boot_block`]);
//!   a scan whose write percentage is not 100 gets it as a sixth field.
//! - The init prints `apf-proc <index> done <progress> <checksum>` or
//!   `apf-proc <index> killed <signal> <progress> <checksum>` (checksum: 16
//!   lowercase hex digits) as each process ends. A process with work 0 runs
//!   until every process with work has ended; the init then stops it (SIGKILL)
//!   and prints `apf-proc <index> stopped <progress> <checksum>` (with no
//!   process with work, it waits for ever).
//! - Then, if the apf module made `/sys/kernel/apf/`, one
//!   `apf-module <name> <value>` per counter file in it (a decimal u64), then
//!   `apf-init done`, then it powers off (PSCI SYSTEM_OFF).
//!
//! # The boot
//!
//! The kernel's booting document: the image at a 2 MiB-aligned base plus its
//! text offset, the DTB 8-byte aligned in the first 512 GiB, the boot vCPU at
//! EL1h with DAIF masked and the MMU off, x0 = the DTB, x1..x3 = 0, the other
//! vCPUs off until PSCI CPU_ON.

pub mod console;
pub mod fdt;
pub mod image;

use crate::boot::boot_block;
use crate::config::VmConfig;
use crate::workload;
use apf_abi::boot::WRITE_PCT_ALL;
use apf_abi::platform::RAM_BASE;
use fdt::{FdtError, TreeSpec, device_tree, rng_seed_of};
use image::{ImageHeader, ImageHeaderError};
use std::ops::Range;
use thiserror::Error;

/// The alignment of the kernel's base (booting.rst: 2 MiB).
pub const KERNEL_ALIGN: u64 = 2 << 20;
/// Where the kernel's 2 MiB-aligned base is: the second 2 MiB of RAM, as QEMU
/// places it (the kernel maps the RAM below it too).
pub const KERNEL_BASE: u64 = RAM_BASE + KERNEL_ALIGN;
/// The largest device tree the kernel accepts (booting.rst: 2 MiB).
pub const DTB_MAX: u64 = 2 << 20;
const PAGE: u64 = apf_abi::PAGE_SIZE;

/// A Linux guest: the kernel, an initrd, the user's command line.
#[derive(Debug, Clone, Default)]
pub struct LinuxGuest {
    /// The arm64 Image.
    pub kernel: Vec<u8>,
    /// The initrd (e.g. a cpio initramfs), if any.
    pub initrd: Option<Vec<u8>>,
    /// Kernel arguments, before the host's `apf.proc=` tokens.
    pub append: String,
}

/// Where everything goes in guest RAM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// The kernel, from its load address (= its entry point) for its image size.
    pub kernel: Range<u64>,
    /// The initrd.
    pub initrd: Option<Range<u64>>,
    /// The device tree.
    pub dtb: Range<u64>,
}

/// Why the kernel, initrd or device tree cannot be placed in guest RAM.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PlacementError {
    /// The kernel does not fit.
    #[error(
        "the kernel occupies {size} bytes from {load:#x} but guest RAM ends at {ram_end:#x} (raise --ram)"
    )]
    KernelTooBig {
        /// image_size.
        size: u64,
        /// Load address.
        load: u64,
        /// End of RAM.
        ram_end: u64,
    },
    /// The initrd does not fit after the kernel.
    #[error(
        "the initrd is {len} bytes but guest RAM after the kernel holds {room} (raise --ram or shrink the initrd)"
    )]
    InitrdTooBig {
        /// Initrd length.
        len: u64,
        /// Room after the kernel.
        room: u64,
    },
    /// The device tree is larger than the kernel accepts.
    #[error("the device tree is {len} bytes, more than the 2 MiB the kernel accepts")]
    DtbTooBig {
        /// Its length.
        len: u64,
    },
    /// No room for the device tree after the kernel and initrd.
    #[error(
        "the device tree ({len} bytes) needs a 2 MiB region at {at:#x} but guest RAM ends at {ram_end:#x} (raise --ram)"
    )]
    DtbNoRoom {
        /// Its length.
        len: u64,
        /// Where it would go.
        at: u64,
        /// End of RAM.
        ram_end: u64,
    },
}

/// Why a Linux guest cannot be booted.
#[derive(Debug, Error)]
pub enum LinuxError {
    /// The kernel is not an Image apf can boot.
    #[error(transparent)]
    Header(#[from] ImageHeaderError),
    /// Something does not fit in RAM.
    #[error(transparent)]
    Placement(#[from] PlacementError),
    /// The device tree could not be built.
    #[error(transparent)]
    Fdt(#[from] FdtError),
}

/// Places the kernel of `header` at [`KERNEL_BASE`] + its text offset.
pub fn place_kernel(header: &ImageHeader, ram: &Range<u64>) -> Result<Range<u64>, PlacementError> {
    let load = KERNEL_BASE + header.text_offset;
    let too_big = PlacementError::KernelTooBig {
        size: header.image_size,
        load,
        ram_end: ram.end,
    };
    match load.checked_add(header.image_size) {
        Some(end) if end <= ram.end => Ok(load..end),
        _ => Err(too_big),
    }
}

/// Places an initrd of `len` bytes at the first page after `kernel_end`.
pub fn place_initrd(
    kernel_end: u64,
    len: u64,
    ram: &Range<u64>,
) -> Result<Range<u64>, PlacementError> {
    let start = kernel_end.next_multiple_of(PAGE);
    let room = ram.end.saturating_sub(start);
    if len > room {
        return Err(PlacementError::InitrdTooBig { len, room });
    }
    Ok(start..start + len)
}

/// Places a device tree of `len` bytes on the first 2 MiB boundary at or after
/// `after`: alone in its 2 MiB region, so it cannot cross one.
pub fn place_dtb(after: u64, len: u64, ram: &Range<u64>) -> Result<Range<u64>, PlacementError> {
    if len > DTB_MAX {
        return Err(PlacementError::DtbTooBig { len });
    }
    let at = after.next_multiple_of(KERNEL_ALIGN);
    if at + len > ram.end {
        return Err(PlacementError::DtbNoRoom {
            len,
            at,
            ram_end: ram.end,
        });
    }
    Ok(at..at + len)
}

/// The kernel command line: `append`, then one `apf.proc=` token per process.
pub fn bootargs(append: &str, config: &VmConfig) -> String {
    let block = boot_block(config);
    let mut args = append.trim().to_string();
    for p in &block.procs[..config.processes.len().min(block.procs.len())] {
        let kind = workload::kind_name(p.kind).unwrap_or("unknown");
        if !args.is_empty() {
            args.push(' ');
        }
        args.push_str(&format!(
            "apf.proc={kind},{},{},{},{}",
            p.vcpu, p.mem_bytes, p.work, p.seed
        ));
        // Only when not the default, so the tokens of runs without it stay as
        // they were (and an init from before the field still reads them).
        if p.write_pct != WRITE_PCT_ALL {
            args.push_str(&format!(",{}", p.write_pct));
        }
    }
    args
}

/// A Linux boot ready to be written into guest RAM.
#[derive(Debug, Clone)]
pub struct PreparedLinux {
    /// The kernel's header.
    pub header: ImageHeader,
    /// Where everything goes.
    pub layout: Layout,
    /// The device tree blob.
    pub dtb: Vec<u8>,
}

/// Reads the kernel's header, places kernel, initrd and device tree in the RAM
/// `config` describes, and builds the device tree.
pub fn prepare(config: &VmConfig, guest: &LinuxGuest) -> Result<PreparedLinux, LinuxError> {
    let header = ImageHeader::parse(&guest.kernel)?;
    let ram = RAM_BASE..RAM_BASE + config.ram.0;
    let kernel = place_kernel(&header, &ram)?;
    let initrd = guest
        .initrd
        .as_ref()
        .map(|bytes| place_initrd(kernel.end, bytes.len() as u64, &ram))
        .transpose()?;
    let dtb = device_tree(&TreeSpec {
        ram_size: config.ram.0,
        vcpus: usize::try_from(config.vcpus).unwrap_or(1),
        bootargs: bootargs(&guest.append, config),
        initrd: initrd.clone(),
        rng_seed: rng_seed_of(config.seed),
    })?;
    let after = initrd.as_ref().map_or(kernel.end, |r| r.end);
    let dtb_range = place_dtb(after, dtb.len() as u64, &ram)?;
    Ok(PreparedLinux {
        header,
        layout: Layout {
            kernel,
            initrd,
            dtb: dtb_range,
        },
        dtb,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An Image header (LE, 4 KiB pages, placeable anywhere) claiming
    /// `image_size` bytes, then `body` bytes.
    fn image(image_size: u64, body: usize) -> Vec<u8> {
        let mut bytes = vec![0u8; image::HEADER_BYTES + body];
        bytes[0x10..0x18].copy_from_slice(&image_size.to_le_bytes());
        bytes[0x18..0x20].copy_from_slice(&0b1010u64.to_le_bytes());
        bytes[0x38..0x3C].copy_from_slice(&image::MAGIC.to_le_bytes());
        bytes
    }

    fn contains(haystack: &[u8], needle: &[u8]) -> bool {
        haystack.windows(needle.len()).any(|w| w == needle)
    }
    use crate::config::{ByteSize, ProcessConfig, WorkloadKind};

    fn ram(mib: u64) -> Range<u64> {
        RAM_BASE..RAM_BASE + (mib << 20)
    }

    fn header(text_offset: u64, image_size: u64) -> ImageHeader {
        ImageHeader {
            text_offset,
            image_size,
            page_size: image::KernelPageSize::Size4K,
            place_anywhere: true,
        }
    }

    #[test]
    fn the_kernel_goes_at_the_second_2mib_plus_its_offset() {
        assert_eq!(
            place_kernel(&header(0, 0x100_0000), &ram(64)),
            Ok(0x4020_0000..0x4120_0000)
        );
        assert_eq!(
            place_kernel(&header(0x8_0000, 0x1000), &ram(64)),
            Ok(0x4028_0000..0x4028_1000)
        );
        // Exactly to the end of RAM fits; a byte more does not.
        let room = (64 << 20) - KERNEL_ALIGN;
        assert!(place_kernel(&header(0, room), &ram(64)).is_ok());
        let e = place_kernel(&header(0, room + 1), &ram(64)).unwrap_err();
        assert_eq!(
            e,
            PlacementError::KernelTooBig {
                size: room + 1,
                load: KERNEL_BASE,
                ram_end: 0x4400_0000
            }
        );
        assert!(matches!(
            place_kernel(&header(0, u64::MAX), &ram(64)),
            Err(PlacementError::KernelTooBig { .. })
        ));
    }

    #[test]
    fn the_initrd_follows_the_kernel_on_a_page() {
        assert_eq!(
            place_initrd(0x4120_0001, 0x5000, &ram(64)),
            Ok(0x4120_1000..0x4120_6000)
        );
        // Exactly to the end of RAM fits; a byte more does not.
        assert_eq!(
            place_initrd(0x4300_0000, 16 << 20, &ram(64)),
            Ok(0x4300_0000..0x4400_0000)
        );
        let e = place_initrd(0x4300_0000, (16 << 20) + 1, &ram(64)).unwrap_err();
        assert_eq!(
            e,
            PlacementError::InitrdTooBig {
                len: (16 << 20) + 1,
                room: 16 << 20
            }
        );
        assert_eq!(
            e.to_string(),
            "the initrd is 16777217 bytes but guest RAM after the kernel holds 16777216 (raise --ram or shrink the initrd)"
        );
    }

    #[test]
    fn the_dtb_has_a_2mib_region_of_its_own() {
        let r = place_dtb(0x4120_0001, 0x1234, &ram(64)).unwrap();
        assert_eq!(r, 0x4140_0000..0x4140_1234);
        assert_eq!(r.start % 8, 0);
        assert_eq!(r.start / KERNEL_ALIGN, (r.end - 1) / KERNEL_ALIGN);
        assert_eq!(
            place_dtb(0x4100_0000, DTB_MAX + 1, &ram(64)),
            Err(PlacementError::DtbTooBig { len: DTB_MAX + 1 })
        );
        assert_eq!(
            place_dtb(0x43F0_0000, 0x100, &ram(64)),
            Err(PlacementError::DtbNoRoom {
                len: 0x100,
                at: 0x4400_0000,
                ram_end: 0x4400_0000
            })
        );
    }

    fn config(processes: Vec<ProcessConfig>) -> VmConfig {
        VmConfig {
            vcpus: 2,
            ram: ByteSize(64 << 20),
            processes,
            seed: 5,
            ..VmConfig::default()
        }
    }

    fn scan_and_calc() -> Vec<ProcessConfig> {
        vec![
            ProcessConfig {
                kind: WorkloadKind::Scan,
                vcpu: 1,
                mem: ByteSize(8 << 20),
                work: 300,
                write_pct: 100,
            },
            ProcessConfig {
                kind: WorkloadKind::Calc,
                vcpu: 0,
                mem: ByteSize(64 << 20),
                work: 0,
                write_pct: 100,
            },
        ]
    }

    #[test]
    fn bootargs_are_the_users_then_one_token_per_process() {
        let c = config(scan_and_calc());
        let block = boot_block(&c);
        let (s0, s1) = (block.procs[0].seed, block.procs[1].seed);
        assert_ne!(s0, s1);
        assert_eq!(
            bootargs("  console=ttyAMA0 panic=-1 ", &c),
            format!(
                "console=ttyAMA0 panic=-1 apf.proc=scan,1,8388608,300,{s0} apf.proc=calc,0,0,0,{s1}"
            ),
            "a calc's working set is 0, as in the boot block"
        );
        assert_eq!(bootargs("quiet", &config(vec![])), "quiet");
        assert_eq!(
            bootargs("", &config(scan_and_calc()[..1].to_vec())),
            format!("apf.proc=scan,1,8388608,300,{s0}")
        );
        let mut reads_only = scan_and_calc();
        reads_only[0].write_pct = 0;
        assert_eq!(
            bootargs("", &config(reads_only[..1].to_vec())),
            format!("apf.proc=scan,1,8388608,300,{s0},0"),
            "a write percentage other than 100 is the sixth field"
        );
    }

    #[test]
    fn prepare_lays_out_kernel_initrd_and_dtb_in_ram() {
        let c = config(scan_and_calc());
        let guest = LinuxGuest {
            kernel: image(0x80_0000, 0x1000),
            initrd: Some(vec![7u8; 0x3001]),
            append: "console=ttyAMA0".into(),
        };
        let p = prepare(&c, &guest).unwrap();
        assert_eq!(p.layout.kernel, 0x4020_0000..0x40A0_0000);
        assert_eq!(p.layout.initrd, Some(0x40A0_0000..0x40A0_3001));
        assert_eq!(p.layout.dtb.start, 0x40C0_0000);
        assert_eq!(p.layout.dtb.end - p.layout.dtb.start, p.dtb.len() as u64);
        // The tree itself is checked in fdt.rs; here, that it got this boot's values.
        let args = bootargs("console=ttyAMA0", &c);
        assert!(contains(&p.dtb, format!("{args}\0").as_bytes()));
        assert!(
            contains(&p.dtb, &0x40A0_0000u64.to_be_bytes()),
            "initrd start"
        );
        assert!(
            contains(&p.dtb, &0x40A0_3001u64.to_be_bytes()),
            "initrd end"
        );
        assert!(contains(&p.dtb, b"cpu@1\0"), "both vCPUs");
    }

    #[test]
    fn prepare_refuses_what_does_not_fit() {
        let c = config(vec![]);
        let big = LinuxGuest {
            kernel: image(1 << 30, 0),
            ..LinuxGuest::default()
        };
        assert!(matches!(
            prepare(&c, &big),
            Err(LinuxError::Placement(PlacementError::KernelTooBig { .. }))
        ));
        let fat_initrd = LinuxGuest {
            kernel: image(0x80_0000, 0),
            initrd: Some(vec![0; 60 << 20]),
            ..LinuxGuest::default()
        };
        assert!(matches!(
            prepare(&c, &fat_initrd),
            Err(LinuxError::Placement(PlacementError::InitrdTooBig { .. }))
        ));
        // The initrd fits to the last byte, the DTB after it does not.
        let full = LinuxGuest {
            kernel: image(0x80_0000, 0),
            initrd: Some(vec![0; (64 << 20) - 0xA0_0000]),
            ..LinuxGuest::default()
        };
        assert!(matches!(
            prepare(&c, &full),
            Err(LinuxError::Placement(PlacementError::DtbNoRoom { .. }))
        ));
        let not_an_image = LinuxGuest {
            kernel: vec![0; 4096],
            ..LinuxGuest::default()
        };
        assert!(matches!(
            prepare(&c, &not_an_image),
            Err(LinuxError::Header(ImageHeaderError::BadMagic { found: 0 }))
        ));
    }
}
