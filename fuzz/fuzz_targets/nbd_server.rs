//! A hostile NBD client: arbitrary bytes as everything a client sends, fed to
//! the server's per-connection state machine (`Export::serve`: greeting,
//! options, then requests, READs served by 2 worker threads so the queue fills
//! and the reader waits) over an in-memory stream, serving a 64 KiB export.
//!
//! Invariants: no panic; the connection ends (the input is finite and every
//! length is bounded or skipped); the server's first bytes are its greeting;
//! no single reply is longer than the export plus a header and an option
//! message (no allocation a client can inflate); at most one request counted
//! per 28 input bytes, and no more bytes read than READs times the export.

#![no_main]

use std::io::{self, Cursor, Write};
use std::sync::Arc;

use apf_mem::store::nbd::server::Export;
use apf_mem::store::nbd::wire;
use libfuzzer_sys::fuzz_target;

const EXPORT_SIZE: usize = 64 * 1024;

/// Counts what the server writes without keeping it.
struct Client {
    first: Vec<u8>,
    written: usize,
    longest: usize,
}

impl Write for Client {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.first.len() < wire::GREETING_LEN {
            let n = (wire::GREETING_LEN - self.first.len()).min(buf.len());
            self.first.extend_from_slice(&buf[..n]);
        }
        self.written += buf.len();
        self.longest = self.longest.max(buf.len());
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fuzz_target!(|data: &[u8]| {
    let source: Vec<u8> = (0..EXPORT_SIZE)
        .map(|i| u8::try_from(i % 251).unwrap_or(0))
        .collect();
    let export = Export::new("ram".to_string(), Arc::new(source)).with_workers(2);
    let mut client = Client {
        first: Vec::new(),
        written: 0,
        longest: 0,
    };
    let _ = export.serve(&mut Cursor::new(data), &mut client);
    assert_eq!(
        client.first[..],
        wire::encode_greeting(wire::FLAG_FIXED_NEWSTYLE | wire::FLAG_NO_ZEROES)[..]
    );
    // A READ reply is a header and at most the whole export; an option reply a
    // header and a message naming at most two short names or a number.
    assert!(client.longest <= wire::SIMPLE_REPLY_LEN + EXPORT_SIZE.max(1024));
    let c = export.counters();
    assert!(c.requests <= (data.len() / wire::REQUEST_LEN) as u64);
    assert!(c.reads <= c.requests);
    assert!(c.bytes_read <= c.reads * EXPORT_SIZE as u64);
    assert!(client.written as u64 >= c.bytes_read);
});
