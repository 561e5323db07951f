//! The README's promise: unsafe code lives in apf-mem (guest RAM, io_uring) and
//! in apf-cpu's block compiler (calling generated code, which reads and writes
//! the `Cpu` and guest RAM), plus the two places that vouch for the host pages
//! that compiled code reads and writes. Every other crate's root says
//! `#![forbid(unsafe_code)]`; apf-cpu's and apf-host's say
//! `#![deny(unsafe_code)]` and allow it only in the files listed here, so the
//! compiler keeps it so.

use std::path::{Path, PathBuf};

/// Crate roots that forbid unsafe code outright.
const FORBID: [&str; 3] = ["abi/src/lib.rs", "vm/src/lib.rs", "cli/src/main.rs"];

/// Crates that deny it at the root, and the only files that allow it.
const DENY: [(&str, &[&str]); 2] = [
    (
        "cpu",
        &[
            "src/bus.rs",
            "src/cpu/compiled.rs",
            "src/jit/mod.rs",
            "src/ram_bus.rs",
        ],
    ),
    ("host", &["src/vcpu/bus.rs"]),
];

fn crates() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn has_line(path: &Path, line: &str) -> bool {
    let text = std::fs::read_to_string(path).expect("a source file");
    text.lines().any(|l| l.trim() == line)
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).expect("a source directory") {
        let p = e.expect("a directory entry").path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

#[test]
fn every_crate_but_apf_mem_forbids_unsafe_code() {
    let missing: Vec<&str> = FORBID
        .into_iter()
        .filter(|root| !has_line(&crates().join(root), "#![forbid(unsafe_code)]"))
        .collect();
    assert!(
        missing.is_empty(),
        "no #![forbid(unsafe_code)] in {missing:?}"
    );
}

#[test]
fn apf_cpu_and_apf_host_allow_unsafe_code_only_where_listed() {
    for (name, allowed) in DENY {
        let dir = crates().join(name);
        assert!(
            has_line(&dir.join("src/lib.rs"), "#![deny(unsafe_code)]"),
            "no #![deny(unsafe_code)] in {name}/src/lib.rs"
        );
        let mut files = Vec::new();
        rust_files(&dir.join("src"), &mut files);
        let mut allowing: Vec<String> = files
            .iter()
            .filter(|f| {
                let text = std::fs::read_to_string(f).expect("a source file");
                text.contains("allow(unsafe_code)")
            })
            .map(|f| {
                f.strip_prefix(&dir)
                    .expect("under the crate")
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        allowing.sort();
        assert_eq!(
            allowing, allowed,
            "{name}: the files that allow unsafe code changed"
        );
    }
}
