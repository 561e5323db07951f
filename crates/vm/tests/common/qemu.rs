//! Running an image on `qemu-system-aarch64 -M virt,gic-version=3`, the independent
//! check of the guest: shared by the QEMU test files.

use std::ffi::OsString;
use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

pub const QEMU: &str = "qemu-system-aarch64";
/// Only a guard against a hung guest (a run takes well under a second).
pub const HANG_GUARD: Duration = Duration::from_secs(300);

fn oracles_required() -> bool {
    std::env::var_os("APF_REQUIRE_ORACLES").is_some_and(|v| v == "1")
}

/// Whether QEMU can run here; skips (with the reason printed) unless required.
pub fn qemu_present() -> bool {
    let runs = Command::new(QEMU)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        runs || !oracles_required(),
        "{QEMU} is required (APF_REQUIRE_ORACLES=1) but does not run"
    );
    if !runs {
        eprintln!("skipping: {QEMU} is not installed");
    }
    runs
}

/// Boots `kernel` with `vcpus` and `ram_mib` MiB (plus `extra` arguments; a
/// `-cpu` among them replaces the default, QEMU taking the last one) and
/// returns the console once the guest has powered QEMU off.
pub fn run(name: &str, kernel: &Path, vcpus: u32, ram_mib: u64, extra: &[OsString]) -> String {
    let mut child = Command::new(QEMU)
        // Only the devices asked for: the board's default NIC would need an
        // option ROM from a package CI does not install (`efi-virtio.rom`),
        // and the guest talks to nothing but the PL011, the GIC and PSCI.
        .args([
            "-nodefaults",
            "-M",
            "virt,gic-version=3",
            "-cpu",
            "cortex-a57",
            "-display",
            "none",
            "-serial",
            "stdio",
            "-no-reboot",
        ])
        .args(["-smp", &vcpus.to_string(), "-m", &format!("{ram_mib}M")])
        .arg("-kernel")
        .arg(kernel)
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start qemu");
    let mut stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut out = Vec::new();
        let read = stdout.read_to_end(&mut out);
        // The receiver is gone only if the test already failed.
        let _ = tx.send(read.map(|_| String::from_utf8_lossy(&out).into_owned()));
    });
    let out = match rx.recv_timeout(HANG_GUARD) {
        Ok(out) => out.expect("read qemu output"),
        Err(_) => {
            child.kill().expect("kill qemu");
            let partial = rx.recv().ok().and_then(Result::ok).unwrap_or_default();
            panic!("{name}: the guest did not power off; console so far:\n{partial}");
        }
    };
    let status = child.wait().expect("wait for qemu");
    assert!(
        status.success(),
        "{name}: qemu exited with {status}; console:\n{out}"
    );
    out
}
