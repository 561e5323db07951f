//! NBD servers (nbdkit, qemu-nbd) the NBD tests run on 127.0.0.1: whether one
//! is installed, and starting one on a socket this process already listens
//! on. Without a server's binary a test prints why and passes, unless
//! APF_REQUIRE_NBD=1 (CI).

#![allow(dead_code)] // each test file uses its own part

use std::net::TcpListener;
use std::os::fd::OwnedFd;
use std::process::{Child, Command, ExitStatus, Stdio};

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

/// A server process, killed when dropped.
pub struct Server {
    child: Child,
    /// The port it listens on.
    pub port: u16,
}

impl Server {
    /// Kills it now (a server that dies mid-run). The port is free again
    /// once it is gone: nothing else holds the listening socket.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// How it ended, if it has.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
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

/// A socket listening on 127.0.0.1:`port`, or on a free port if 0.
pub fn listener(port: u16) -> TcpListener {
    TcpListener::bind(("127.0.0.1", port))
        .unwrap_or_else(|e| panic!("listen on 127.0.0.1:{port}: {e}"))
}

/// Starts `command`'s program and arguments as a server on `listener`,
/// handed over the way systemd's socket activation does it (fd 3,
/// LISTEN_PID, LISTEN_FDS), which nbdkit and qemu-nbd both take in place of
/// an address and port of their own.
///
/// Why not a free port the server binds itself: between this process
/// learning the port and the server binding it, another test can take the
/// same port, and a probe then finds the other server (CI once saw a client
/// refused on a port a probe had just reached). Here the port is held from the
/// bind on, and a client may connect at once: its connection waits in the
/// backlog and the greeting comes once the server runs, so there is nothing
/// to poll for.
pub fn serve(command: Command, listener: TcpListener) -> Server {
    let port = listener.local_addr().expect("listening address").port();
    // `exec` keeps the shell's process ID, which is what LISTEN_PID names.
    let child = Command::new("sh")
        .arg("-c")
        .arg(r#"export LISTEN_PID=$$ LISTEN_FDS=1; exec "$@" 3<&0 </dev/null"#)
        .arg("sh")
        .arg(command.get_program())
        .args(command.get_args())
        .stdin(Stdio::from(OwnedFd::from(listener)))
        .stdout(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("start {:?}: {e}", command.get_program()));
    Server { child, port }
}

/// nbdkit in the foreground with `args` after its own (filters, plugin, its
/// parameters), on `listener`.
pub fn nbdkit_on(listener: TcpListener, args: &[&str]) -> Server {
    let mut c = Command::new("nbdkit");
    c.args(["-f", "--exit-with-parent"]).args(args);
    serve(c, listener)
}

/// nbdkit on a free port.
pub fn nbdkit(args: &[&str]) -> Server {
    nbdkit_on(listener(0), args)
}
