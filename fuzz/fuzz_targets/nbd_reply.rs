//! A hostile NBD server: arbitrary bytes as everything a server sends, fed to
//! the client's own parsers. The input is a 2-byte big-endian length `h`, then
//! `h` bytes of handshake (greeting, option replies) for `handshake::negotiate`,
//! then a stream of simple replies checked by `wire::check_reply` against 32
//! requests in flight (odd cookies reads of 4096 bytes, even ones writes), each
//! read's payload taken into a 4096-byte buffer as the reader thread does.
//!
//! Invariants: no panic; the handshake ends (the input is finite and every
//! length is bounded); an agreed block size allows 4096-byte requests; a reply
//! is accepted only for a cookie in flight, once, and never asks for more
//! payload than its request's buffer holds.

#![no_main]

use std::collections::HashMap;
use std::io::{self, Cursor, Read, Write};

use apf_mem::store::nbd::handshake::{self, Via};
use apf_mem::store::nbd::wire::{self, Expect};
use libfuzzer_sys::fuzz_target;

/// Reads from the input, swallows what the client sends.
struct Server<'a> {
    input: Cursor<&'a [u8]>,
}

impl Read for Server<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.input.read(buf)
    }
}

impl Write for Server<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let h = usize::from(u16::from_be_bytes([data[0], data[1]])).min(data.len() - 2);
    let (hs, replies) = data[2..].split_at(h);

    let mut server = Server {
        input: Cursor::new(hs),
    };
    if let Ok(n) = handshake::negotiate(&mut server, "fuzz") {
        assert!(n.min_block > 0 && 4096 % n.min_block == 0);
        assert!(n.max_block >= 4096);
        if n.via == Via::ExportName {
            assert_eq!((n.min_block, n.preferred_block), (1, 4096));
        }
    }

    let mut inflight: HashMap<u64, Expect> = (1..=32u64)
        .map(|c| {
            let e = if c % 2 == 1 {
                Expect::Read(4096)
            } else {
                Expect::NoPayload
            };
            (c, e)
        })
        .collect();
    let mut stream = Cursor::new(replies);
    let mut buf = [0u8; 4096];
    loop {
        let mut header = [0u8; wire::SIMPLE_REPLY_LEN];
        if stream.read_exact(&mut header).is_err() {
            break;
        }
        let mut expected = None;
        let action = wire::check_reply(&header, |cookie| {
            expected = inflight.get(&cookie).copied();
            expected
        });
        let Ok(a) = action else {
            // The connection is broken from here on; the client reconnects.
            break;
        };
        let expected = expected.expect("accepted a cookie not in flight");
        match expected {
            Expect::Read(len) => assert!(a.payload <= len),
            Expect::NoPayload => assert_eq!(a.payload, 0),
        }
        assert!(a.error == 0 || a.payload == 0);
        let payload = &mut buf[..a.payload as usize];
        if stream.read_exact(payload).is_err() {
            break;
        }
        assert!(inflight.remove(&a.cookie).is_some());
    }
});
