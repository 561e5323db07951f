//! Debian's Linux and the init of `guest/linux/`, as `guest/linux/build.sh` leaves
//! them, and booting them on `qemu-system-aarch64`: shared by the Linux test files.
//!
//! The kernel and initramfs are found through `APF_LINUX_IMAGE` / `APF_LINUX_INITRD`,
//! else in the script's cache (`APF_LINUX_CACHE`, default `<repo>/target/linux`).
//! Without them the tests skip with the reason printed, unless
//! `APF_REQUIRE_LINUX=1`, which makes their absence a failure.

// Each test file uses its own part of this.
#![allow(dead_code)]

use apf_abi::boot::{ProcSpec, WRITE_PCT_ALL};
use apf_vm::workload::kind_name;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The six initcalls that cost 0.68 G of the stock kernel's 1 G boot instructions
/// and nothing here needs (BTF, certificates, jitterentropy, kprobe trace, the
/// crypto self-tests): shared/research/linux-on-apf.md.
pub const CHEAP_BOOT: &str = "initcall_blacklist=bpf_tcp_ca_kfunc_init,bpf_dummy_struct_ops_init,\
                          jent_mod_init,init_kprobe_trace,load_system_certificate_list,\
                          crypto_algapi_init";
/// Linux says so when the CPU has no FP: proof the init ran without FP/SIMD.
pub const NO_FP_BANNER: &str = "Floating-point is not implemented";
/// What init prints once `finit_module` has loaded `/apf.ko` (guest/linux/init.c).
pub const MODULE_LOADED: &str = "apf-init: module apf loaded";
/// The start of the module's line when it finds no APF (guest/linux/apf/apf.c).
pub const APF_NOT_OFFERED: &str = "apf: APF not offered (";
/// The start of the module's line when it finds APF.
pub const APF_OFFERED: &str = "apf: hypervisor offers APF";

/// The kernel Image and initramfs to boot.
pub struct Artifacts {
    pub image: PathBuf,
    pub initrd: PathBuf,
}

pub fn linux_required() -> bool {
    std::env::var_os("APF_REQUIRE_LINUX").is_some_and(|v| v == "1")
}

/// Skips the test (the reason printed) unless Linux is required, then fails it.
pub fn unavailable(reason: &str) -> Option<Artifacts> {
    assert!(
        !linux_required(),
        "APF_REQUIRE_LINUX=1 but {reason} (run guest/linux/build.sh)"
    );
    eprintln!("skipping: {reason}");
    None
}

pub fn cache_dir() -> PathBuf {
    std::env::var_os("APF_LINUX_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/linux"))
}

/// The newest `<release>/Image` in build.sh's cache, by version order of `release`.
pub fn cached_image(cache: &Path) -> Option<PathBuf> {
    let releases = std::fs::read_dir(cache).ok()?;
    releases
        .filter_map(Result::ok)
        .map(|entry| entry.path().join("Image"))
        .filter(|image| image.is_file())
        .max_by_key(|image| {
            let release = image.parent().and_then(Path::file_name).unwrap_or_default();
            version_key(&release.to_string_lossy())
        })
}

/// `6.12.118+deb12-arm64` → [6, 12, 118, 12, 64]: the numbers in order.
pub fn version_key(release: &str) -> Vec<u64> {
    release
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse().ok())
        .collect()
}

/// The kernel and initramfs, and QEMU to boot them on; `None` (skip) without.
pub fn artifacts_and_qemu() -> Option<Artifacts> {
    if !crate::qemu::qemu_present() {
        return None;
    }
    artifacts()
}

/// The kernel and initramfs build.sh made; `None` (skip) without them.
pub fn artifacts() -> Option<Artifacts> {
    let image = match std::env::var_os("APF_LINUX_IMAGE") {
        Some(path) => PathBuf::from(path),
        None => match cached_image(&cache_dir()) {
            Some(path) => path,
            None => {
                return unavailable(&format!(
                    "no kernel Image under {} and APF_LINUX_IMAGE is unset",
                    cache_dir().display()
                ));
            }
        },
    };
    let initrd = std::env::var_os("APF_LINUX_INITRD")
        .map(PathBuf::from)
        .unwrap_or_else(|| cache_dir().join("initramfs.cpio"));
    for path in [&image, &initrd] {
        if !path.is_file() {
            return unavailable(&format!("{} does not exist", path.display()));
        }
    }
    Some(Artifacts { image, initrd })
}

/// The command-line token for one process.
pub fn token(spec: &ProcSpec) -> String {
    let kind = kind_name(spec.kind).expect("a known kind");
    let token = format!(
        "apf.proc={kind},{},{},{},{}",
        spec.vcpu, spec.mem_bytes, spec.work, spec.seed
    );
    // As the host writes it (`apf_vm::linux::bootargs`): the write percentage
    // only when it is not 100.
    if spec.write_pct == WRITE_PCT_ALL {
        token
    } else {
        format!("{token},{}", spec.write_pct)
    }
}

/// Boots Linux with `tokens` appended to the command line and returns the console
/// once the guest has powered QEMU off; prints how long QEMU ran.
pub fn boot_on_qemu(name: &str, linux: &Artifacts, vcpus: u32, tokens: &[String]) -> String {
    let append = format!("console=ttyAMA0 panic=-1 {CHEAP_BOOT} {}", tokens.join(" "));
    let extra: Vec<OsString> = vec![
        "-cpu".into(),
        "cortex-a57,vfp=off,neon=off".into(),
        "-initrd".into(),
        linux.initrd.clone().into(),
        "-append".into(),
        append.into(),
    ];
    let started = Instant::now();
    let out = crate::qemu::run(name, &linux.image, vcpus, 512, &extra);
    let wall = started.elapsed();
    eprintln!("{name}: {vcpus} vCPU(s), QEMU wall time {wall:.2?}");
    out
}
