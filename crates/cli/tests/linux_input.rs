//! `apf run --kernel` refuses a kernel or initrd it cannot boot before anything
//! runs: one line on stderr that says what is wrong, and exit status 2.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn apf(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_apf"))
        .args(args)
        .output()
        .expect("apf runs")
}

/// A directory of this test's own.
fn scratch(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("apf-linux-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// An arm64 Image header (LE, 4 KiB pages, placeable anywhere) claiming
/// `image_size` bytes, with `flags`, then `body` zero bytes.
fn image(image_size: u64, flags: u64, body: usize) -> Vec<u8> {
    let mut bytes = vec![0u8; 64 + body];
    bytes[0x10..0x18].copy_from_slice(&image_size.to_le_bytes());
    bytes[0x18..0x20].copy_from_slice(&flags.to_le_bytes());
    bytes[0x38..0x3C].copy_from_slice(b"ARM\x64");
    bytes
}

const MODERN: u64 = 0b1010;

/// Status 2, one line on stderr, and that line says `want`.
#[track_caller]
fn assert_refused(out: &Output, want: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    let described = format!(
        "{}\nstdout:\n{}\nstderr:\n{err}",
        out.status,
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(out.status.code(), Some(2), "{described}");
    assert_eq!(err.lines().count(), 1, "one line: {described}");
    assert!(err.contains(want), "should say {want:?}: {described}");
}

/// `apf run --kernel KERNEL EXTRA` over host memory with 64 MiB of RAM.
fn run_kernel(kernel: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "run",
        "--kernel",
        kernel.to_str().unwrap(),
        "--ram",
        "64MiB",
        "--budget",
        "64MiB",
        "--store",
        "mem",
        "--timeout",
        "20s",
    ];
    args.extend_from_slice(extra);
    apf(&args)
}

#[test]
fn a_bad_header_exits_2() {
    let dir = scratch("header");
    let cases: [(&str, Vec<u8>, &str); 4] = [
        (
            "short",
            image(0x10_0000, MODERN, 0)[..40].to_vec(),
            "shorter than the 64-byte",
        ),
        (
            "gzip",
            {
                let mut b = image(0x10_0000, MODERN, 0);
                b[0x38..0x3C].copy_from_slice(&[0x1f, 0x8b, 8, 0]);
                b
            },
            "not 0x644d5241",
        ),
        ("big-endian", image(0x10_0000, MODERN | 1, 0), "big-endian"),
        ("64k", image(0x10_0000, 0b0110, 0), "4 KiB pages only"),
    ];
    for (name, bytes, want) in cases {
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        assert_refused(&run_kernel(&path, &[]), want);
    }
}

#[test]
fn a_kernel_bigger_than_ram_exits_2() {
    let dir = scratch("big");
    let path = dir.join("Image");
    std::fs::write(&path, image(1 << 30, MODERN, 0)).unwrap();
    assert_refused(
        &run_kernel(&path, &[]),
        "the kernel occupies 1073741824 bytes from 0x40200000 but guest RAM ends at 0x44000000 (raise --ram)",
    );
}

#[test]
fn an_initrd_that_does_not_fit_exits_2() {
    let dir = scratch("initrd");
    let kernel = dir.join("Image");
    std::fs::write(&kernel, image(0x80_0000, MODERN, 0)).unwrap();
    let initrd = dir.join("initrd.cpio");
    std::fs::write(&initrd, vec![0u8; 60 << 20]).unwrap();
    assert_refused(
        &run_kernel(&kernel, &["--initrd", initrd.to_str().unwrap()]),
        "the initrd is 62914560 bytes but guest RAM after the kernel holds",
    );
}

#[test]
fn a_missing_file_exits_2() {
    let dir = scratch("missing");
    let missing = dir.join("no-such-Image");
    assert_refused(&run_kernel(&missing, &[]), "cannot read the kernel");
    let kernel = dir.join("Image");
    std::fs::write(&kernel, image(0x80_0000, MODERN, 0)).unwrap();
    let out = run_kernel(
        &kernel,
        &["--initrd", dir.join("no-such-initrd").to_str().unwrap()],
    );
    assert_refused(&out, "cannot read the initrd");
    assert_refused(&out, "(give --initrd a readable file)");
}

#[test]
fn linux_flags_need_a_kernel() {
    for flag in ["--initrd", "--append", "--dtb-out"] {
        let out = apf(&["run", flag, "x"]);
        assert_refused(&out, "required arguments were not provided");
    }
}

#[test]
fn the_device_tree_is_written_before_the_boot() {
    let dir = scratch("dtb");
    let kernel = dir.join("Image");
    // A kernel that powers the machine off through PSCI at once: code0 branches
    // over the header to hvc #0 with x0 = SYSTEM_OFF (0x84000008).
    let mut bytes = image(0x10_0000, MODERN, 12);
    bytes[0..4].copy_from_slice(&0x1400_0010u32.to_le_bytes()); // b +0x40
    // movz w0, #8; movk w0, #0x8400, lsl #16; hvc #0
    let code: [u32; 3] = [0x5280_0100, 0x72B0_8000, 0xD400_0002];
    for (i, word) in code.iter().enumerate() {
        bytes[64 + i * 4..68 + i * 4].copy_from_slice(&word.to_le_bytes());
    }
    std::fs::write(&kernel, bytes).unwrap();
    let dtb = dir.join("out.dtb");
    let out = run_kernel(
        &kernel,
        &[
            "--append",
            "console=ttyAMA0",
            "-p",
            "calc,work=10",
            "--dtb-out",
            dtb.to_str().unwrap(),
        ],
    );
    let blob = std::fs::read(&dtb).expect("the DTB was written");
    assert_eq!(&blob[..4], &[0xD0, 0x0D, 0xFE, 0xED], "FDT magic");
    let text = String::from_utf8_lossy(&blob);
    assert!(
        text.contains("console=ttyAMA0 apf.proc=calc,0,0,10,"),
        "bootargs in the blob"
    );
    // It powered off without running the calc: the process did not finish.
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("process 0 (calc, vcpu 0) did not finish before the guest powered off"),
        "{err}"
    );
}

/// `compare` and `sweep` with --kernel refuse what `run --kernel` refuses, the
/// same way, and a run that could not end or measure anything, before any run.
#[test]
fn compare_and_sweep_with_a_kernel_refuse_bad_input() {
    let dir = scratch("compare");
    let kernel = dir.join("Image");
    std::fs::write(&kernel, image(0x10_0000, MODERN | 1, 0)).unwrap(); // big-endian
    let initrd = dir.join("initrd.cpio");
    std::fs::write(&initrd, b"070701").unwrap();
    let missing = dir.join("no-such-file");
    let (k, i, m) = (
        kernel.to_str().unwrap(),
        initrd.to_str().unwrap(),
        missing.to_str().unwrap(),
    );
    for command in ["compare", "sweep"] {
        let with = |extra: &[&str]| {
            let mut args = vec![command, "--store", "mem", "--timeout", "20s"];
            args.extend_from_slice(extra);
            apf(&args)
        };
        assert_refused(&with(&["--kernel", k]), "not provided: --initrd");
        assert_refused(&with(&["--initrd", i]), "--kernel <IMAGE>");
        assert_refused(&with(&["--append", "x"]), "--kernel <IMAGE>");
        assert_refused(
            &with(&["--kernel", m, "--initrd", i]),
            "cannot read the kernel",
        );
        assert_refused(
            &with(&["--kernel", k, "--initrd", m]),
            "(give --initrd a readable file)",
        );
        assert_refused(
            &with(&["--kernel", k, "--initrd", i, "--duration", "5s"]),
            "cannot be used with",
        );
        assert_refused(
            &with(&["--kernel", k, "--initrd", i, "-p", "calc"]),
            "give one some work",
        );
        assert_refused(
            &with(&["--kernel", k, "--initrd", i, "-p", "scan,vcpu=1,work=5"]),
            "pinned to vcpu 1, but the VM has 1",
        );
        // Flags are fine; the Image is not: found by the first run, before it starts.
        assert_refused(&with(&["--kernel", k, "--initrd", i]), "big-endian");
    }
}
