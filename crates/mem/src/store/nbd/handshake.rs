//! The fixed-newstyle handshake, over any byte stream (a socket, or the fuzz
//! target's bytes): `NBD_OPT_GO` asking for the block size, falling back to
//! `NBD_OPT_EXPORT_NAME` when the server does not know GO or is not fixed
//! newstyle. No TLS, no structured replies.

use std::io::{self, Read, Write};

use super::wire::{self, Info, WireError};

/// The page size every request moves.
const PAGE: u32 = 4096;

/// At most this many option replies to one option: a server that sends more is
/// stalling.
const MAX_REPLIES: usize = 64;

/// How the client entered transmission.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// `NBD_OPT_GO`.
    Go,
    /// `NBD_OPT_EXPORT_NAME` (the server refused GO or is not fixed newstyle).
    ExportName,
}

/// What the handshake agreed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Negotiated {
    /// Export size in bytes.
    pub size: u64,
    /// Transmission flags.
    pub flags: u16,
    /// Minimum block size (1 when the server gave none).
    pub min_block: u32,
    /// Preferred block size (4096 when the server gave none).
    pub preferred_block: u32,
    /// Maximum payload (32 MiB when the server gave none).
    pub max_block: u32,
    /// Which option entered transmission.
    pub via: Via,
}

impl Negotiated {
    /// Whether the server refuses writes.
    pub fn read_only(&self) -> bool {
        self.flags & wire::TFLAG_READ_ONLY != 0
    }
}

/// Why the handshake failed.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// The byte stream failed.
    #[error("the connection failed during the NBD handshake: {0}")]
    Io(#[from] io::Error),
    /// The server sent something that does not fit the protocol.
    #[error("the server broke the NBD protocol during the handshake: {0}")]
    Wire(#[from] WireError),
    /// The server refused the export.
    #[error("the server refused export {export:?} ({kind}){message}")]
    Refused {
        /// The export asked for.
        export: String,
        /// The error reply's name.
        kind: &'static str,
        /// The server's message, if any, as ": text".
        message: String,
    },
    /// The server closed the connection after `NBD_OPT_EXPORT_NAME`.
    #[error("the server closed the connection: export {0:?} does not exist there")]
    NoSuchExport(String),
    /// Too many option replies.
    #[error("the server sent more than {MAX_REPLIES} option replies to one option")]
    TooManyReplies,
    /// GO finished without the export's size.
    #[error("the server finished NBD_OPT_GO without the export's size")]
    NoExportInfo,
    /// An option reply type that is not defined.
    #[error("the server sent an unknown option reply type {0:#x}")]
    UnknownReply(u32),
    /// The block size constraints exclude 4096-byte requests.
    #[error(
        "the export's block sizes (minimum {min}, maximum {max}) do not allow 4096-byte requests; \
         serve it with a minimum block size that divides 4096"
    )]
    BlockSize {
        /// Minimum.
        min: u32,
        /// Maximum.
        max: u32,
    },
}

/// Runs the handshake for `export` on `stream` and returns what was agreed; the
/// stream is then in transmission.
pub fn negotiate<S: Read + Write>(
    stream: &mut S,
    export: &str,
) -> Result<Negotiated, HandshakeError> {
    let mut greeting = [0u8; wire::GREETING_LEN];
    stream.read_exact(&mut greeting)?;
    let server = wire::parse_greeting(&greeting)?;
    let client = wire::client_flags(server);
    stream.write_all(&client.to_be_bytes())?;
    let no_zeroes = client & wire::CLIENT_NO_ZEROES != 0;
    if client & wire::CLIENT_FIXED_NEWSTYLE != 0
        && let Some(n) = go(stream, export)?
    {
        return Ok(n);
    }
    export_name(stream, export, no_zeroes)
}

/// `NBD_OPT_GO`; `None` if the server does not support it.
fn go<S: Read + Write>(stream: &mut S, export: &str) -> Result<Option<Negotiated>, HandshakeError> {
    stream.write_all(&wire::encode_option(wire::OPT_GO, &wire::go_data(export)))?;
    let mut export_info = None;
    let mut block = None;
    for _ in 0..MAX_REPLIES {
        let mut h = [0u8; wire::OPTION_REPLY_HEADER_LEN];
        stream.read_exact(&mut h)?;
        let r = wire::parse_option_reply(&h, wire::OPT_GO)?;
        let mut data = vec![0u8; r.len as usize];
        stream.read_exact(&mut data)?;
        match r.reply {
            wire::REP_INFO => match wire::parse_info(&data)? {
                Info::Export { size, flags } => export_info = Some((size, flags)),
                Info::BlockSize {
                    min,
                    preferred,
                    max,
                } => block = Some((min, preferred, max)),
                Info::Other(_) => {}
            },
            wire::REP_ACK => {
                let (size, flags) = export_info.ok_or(HandshakeError::NoExportInfo)?;
                let (min_block, preferred_block, max_block) = block.unwrap_or((1, PAGE, 32 << 20));
                if min_block == 0 || !PAGE.is_multiple_of(min_block) || PAGE > max_block {
                    return Err(HandshakeError::BlockSize {
                        min: min_block,
                        max: max_block,
                    });
                }
                return Ok(Some(Negotiated {
                    size,
                    flags,
                    min_block,
                    preferred_block,
                    max_block,
                    via: Via::Go,
                }));
            }
            wire::REP_ERR_UNSUP => return Ok(None),
            e if e & wire::REP_ERR_BIT != 0 => {
                return Err(HandshakeError::Refused {
                    export: export.to_string(),
                    kind: reply_error_name(e),
                    message: printable(&data),
                });
            }
            other => return Err(HandshakeError::UnknownReply(other)),
        }
    }
    Err(HandshakeError::TooManyReplies)
}

/// `NBD_OPT_EXPORT_NAME`: the server answers with the size and flags, or closes
/// the connection if the export does not exist.
fn export_name<S: Read + Write>(
    stream: &mut S,
    export: &str,
    no_zeroes: bool,
) -> Result<Negotiated, HandshakeError> {
    stream.write_all(&wire::encode_option(
        wire::OPT_EXPORT_NAME,
        export.as_bytes(),
    ))?;
    let eof = |e: io::Error| {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            HandshakeError::NoSuchExport(export.to_string())
        } else {
            HandshakeError::Io(e)
        }
    };
    let mut b = [0u8; wire::EXPORT_NAME_REPLY_LEN];
    stream.read_exact(&mut b).map_err(eof)?;
    let (size, flags) = wire::parse_export_name_reply(&b);
    if !no_zeroes {
        let mut zeroes = [0u8; wire::EXPORT_NAME_ZEROES];
        stream.read_exact(&mut zeroes)?;
    }
    Ok(Negotiated {
        size,
        flags,
        min_block: 1,
        preferred_block: PAGE,
        max_block: 32 << 20,
        via: Via::ExportName,
    })
}

fn reply_error_name(e: u32) -> &'static str {
    match e & !wire::REP_ERR_BIT {
        1 => "NBD_REP_ERR_UNSUP",
        2 => "NBD_REP_ERR_POLICY",
        3 => "NBD_REP_ERR_INVALID",
        4 => "NBD_REP_ERR_PLATFORM",
        5 => "NBD_REP_ERR_TLS_REQD",
        6 => "NBD_REP_ERR_UNKNOWN",
        7 => "NBD_REP_ERR_SHUTDOWN",
        8 => "NBD_REP_ERR_BLOCK_SIZE_REQD",
        9 => "NBD_REP_ERR_TOO_BIG",
        _ => "an unknown error",
    }
}

/// A server's message as ": text", on one line and at most 200 characters.
fn printable(data: &[u8]) -> String {
    let text: String = String::from_utf8_lossy(data)
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(200)
        .collect();
    let text = text.trim();
    if text.is_empty() {
        String::new()
    } else {
        format!(": {text}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wire::OptionReply;

    /// A scripted server: reads come from `input`, writes are kept.
    struct Script {
        input: io::Cursor<Vec<u8>>,
        sent: Vec<u8>,
    }

    impl Read for Script {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.input.read(buf)
        }
    }

    impl Write for Script {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.sent.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn reply(out: &mut Vec<u8>, option: u32, reply: u32, data: &[u8]) {
        let len = u32::try_from(data.len()).unwrap();
        out.extend_from_slice(&wire::encode_option_reply(OptionReply {
            option,
            reply,
            len,
        }));
        out.extend_from_slice(data);
    }

    fn run(input: Vec<u8>) -> (Result<Negotiated, HandshakeError>, Vec<u8>) {
        let mut s = Script {
            input: io::Cursor::new(input),
            sent: Vec::new(),
        };
        let r = negotiate(&mut s, "x");
        (r, s.sent)
    }

    #[test]
    fn go_with_block_sizes() {
        let mut i =
            wire::encode_greeting(wire::FLAG_FIXED_NEWSTYLE | wire::FLAG_NO_ZEROES).to_vec();
        let bs = Info::BlockSize {
            min: 512,
            preferred: 4096,
            max: 1 << 20,
        };
        reply(&mut i, wire::OPT_GO, wire::REP_INFO, &wire::encode_info(bs));
        let ex = Info::Export {
            size: 1 << 30,
            flags: wire::TFLAG_HAS_FLAGS | wire::TFLAG_READ_ONLY,
        };
        reply(&mut i, wire::OPT_GO, wire::REP_INFO, &wire::encode_info(ex));
        reply(&mut i, wire::OPT_GO, wire::REP_ACK, &[]);
        let (r, sent) = run(i);
        let n = r.unwrap();
        assert_eq!((n.size, n.min_block, n.via), (1 << 30, 512, Via::Go));
        assert!(n.read_only());
        // Client flags: both offered, both set.
        assert_eq!(&sent[0..4], &3u32.to_be_bytes());
    }

    #[test]
    fn unsupported_go_falls_back_to_export_name() {
        let mut i = wire::encode_greeting(wire::FLAG_FIXED_NEWSTYLE).to_vec();
        reply(&mut i, wire::OPT_GO, wire::REP_ERR_UNSUP, b"no");
        i.extend_from_slice(&(8192u64).to_be_bytes());
        i.extend_from_slice(&1u16.to_be_bytes());
        i.extend_from_slice(&[0u8; 124]);
        let (r, sent) = run(i);
        let n = r.unwrap();
        assert_eq!((n.size, n.via), (8192, Via::ExportName));
        assert_eq!(&sent[0..4], &1u32.to_be_bytes());
    }

    #[test]
    fn refusals_and_bad_block_sizes_are_errors() {
        let mut i = wire::encode_greeting(wire::FLAG_FIXED_NEWSTYLE).to_vec();
        reply(
            &mut i,
            wire::OPT_GO,
            wire::REP_ERR_BIT | 6,
            b"no such\nexport",
        );
        let e = run(i).0.unwrap_err().to_string();
        assert!(e.contains("(NBD_REP_ERR_UNKNOWN): no such export"), "{e}");

        let mut i = wire::encode_greeting(wire::FLAG_FIXED_NEWSTYLE).to_vec();
        let bs = Info::BlockSize {
            min: 8192,
            preferred: 8192,
            max: 1 << 20,
        };
        reply(&mut i, wire::OPT_GO, wire::REP_INFO, &wire::encode_info(bs));
        let ex = Info::Export { size: 1, flags: 1 };
        reply(&mut i, wire::OPT_GO, wire::REP_INFO, &wire::encode_info(ex));
        reply(&mut i, wire::OPT_GO, wire::REP_ACK, &[]);
        assert!(matches!(
            run(i).0,
            Err(HandshakeError::BlockSize { min: 8192, .. })
        ));

        // Not fixed newstyle and the server hangs up: the export is not there.
        let i = wire::encode_greeting(0).to_vec();
        assert!(matches!(run(i).0, Err(HandshakeError::NoSuchExport(_))));
    }
}
