//! The README's promise: only apf-mem has unsafe code; every other crate's root
//! says `#![forbid(unsafe_code)]`, so the compiler keeps it so.

use std::path::Path;

#[test]
fn every_crate_but_apf_mem_forbids_unsafe_code() {
    let crates = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let roots = [
        "abi/src/lib.rs",
        "cpu/src/lib.rs",
        "host/src/lib.rs",
        "vm/src/lib.rs",
        "cli/src/main.rs",
    ];
    let missing: Vec<&str> = roots
        .into_iter()
        .filter(|root| {
            let text = std::fs::read_to_string(crates.join(root)).expect("the crate root");
            !text.lines().any(|l| l.trim() == "#![forbid(unsafe_code)]")
        })
        .collect();
    assert!(
        missing.is_empty(),
        "no #![forbid(unsafe_code)] in {missing:?}"
    );
}
