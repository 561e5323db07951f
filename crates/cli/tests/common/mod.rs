//! What the command-line tests share: running `apf`, and NBD servers (nbdkit,
//! qemu-nbd) started on 127.0.0.1 at a free port and killed on every path.
//! Without a server's binary a test prints why and passes, unless
//! APF_REQUIRE_NBD=1 (CI).

#![allow(dead_code)] // each test file uses its own part

pub mod proxy;
// The same check the memory crate's NBD tests make.
#[path = "../../../mem/tests/common/servers.rs"]
mod servers;
pub use servers::have;

use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A server process, killed when dropped.
pub struct Server {
    child: Child,
    /// The port it listens on.
    pub port: u16,
}

impl Server {
    /// Kills it now (a server that dies mid-run).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// `nbd://127.0.0.1:PORT/NAME`.
    pub fn url(&self, name: &str) -> String {
        format!("nbd://127.0.0.1:{}/{name}", self.port)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

pub fn have_nbdkit() -> bool {
    have("nbdkit", "nbdkit")
}

pub fn have_qemu_nbd() -> bool {
    have("qemu-nbd", "qemu-utils")
}

pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    l.local_addr().expect("local address").port()
}

/// Starts `command` (which must listen on 127.0.0.1:`port`) and returns once
/// it accepts connections (retried for at most 10 s).
pub fn serve(mut command: Command, port: u16) -> Server {
    let child = command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .expect("start the server");
    let mut server = Server { child, port };
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "the server did not listen in 10 s"
        );
        if let Ok(Some(s)) = server.child.try_wait() {
            panic!("the server exited: {s}");
        }
        std::thread::yield_now();
    }
    server
}

/// nbdkit on a free port with `args` after its own (filters, plugin, its
/// arguments).
pub fn nbdkit(args: &[&str]) -> Server {
    let port = free_port();
    let mut c = Command::new("nbdkit");
    c.args(["-f", "--exit-with-parent", "-i", "127.0.0.1", "-p"])
        .arg(port.to_string())
        .args(args);
    serve(c, port)
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
