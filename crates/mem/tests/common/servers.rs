//! NBD server binaries the NBD tests run: whether one is installed. Without it
//! a test prints why and passes, unless APF_REQUIRE_NBD=1 (CI).

use std::process::{Command, Stdio};

/// Whether `bin` runs (`--version`); if not, says which package has it.
pub fn have(bin: &str, package: &str) -> bool {
    let found = Command::new(bin)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        assert!(
            std::env::var("APF_REQUIRE_NBD").as_deref() != Ok("1"),
            "{bin} is missing and APF_REQUIRE_NBD=1: apt-get install {package}"
        );
        eprintln!("skipping: {bin} is not installed (apt-get install {package})");
    }
    found
}
