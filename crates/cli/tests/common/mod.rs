//! What the command-line tests share: running `apf`, and NBD servers (nbdkit,
//! qemu-nbd) started on 127.0.0.1 and killed on every path. Without a
//! server's binary a test prints why and passes, unless APF_REQUIRE_NBD=1
//! (CI).

#![allow(dead_code)] // each test file uses its own part

pub mod proxy;
// The servers the memory crate's NBD tests run, started the same way.
#[path = "../../../mem/tests/common/servers.rs"]
mod servers;
#[allow(unused_imports)] // each test file uses its own part
pub use servers::{Server, have, listener, nbdkit, nbdkit_on, serve};

use std::net::TcpListener;
use std::process::{Command, Output};

pub fn have_nbdkit() -> bool {
    have("nbdkit", "nbdkit")
}

pub fn have_qemu_nbd() -> bool {
    have("qemu-nbd", "qemu-utils")
}

/// A port nothing listens on (as long as nothing takes it).
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    l.local_addr().expect("local address").port()
}

/// nbdkit's memory plugin with an export of `size`.
pub fn nbdkit_memory(size: &str) -> Server {
    nbdkit(&["memory", size])
}

pub fn apf(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_apf"))
        .args(args)
        .output()
        .expect("apf runs")
}

/// Exit status 2 with one line on stderr; returns the line.
pub fn one_line_input_error(out: &Output, what: &str) -> String {
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(2), "{what}: {err}");
    assert_eq!(err.lines().count(), 1, "{what}: {err}");
    err
}
