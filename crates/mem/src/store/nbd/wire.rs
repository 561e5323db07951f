//! The NBD wire format: encoding requests and options, parsing what a server
//! sends. Pure functions over byte slices, no I/O, so the fuzz target and the
//! round-trip tests reach exactly the code the client runs.
//!
//! All integers are big-endian (NetworkBlockDevice/nbd `doc/proto.md`).

/// `NBDMAGIC`, the first 8 bytes a server sends.
pub const NBD_MAGIC: u64 = 0x4e42_444d_4147_4943;
/// `IHAVEOPT`: newstyle negotiation follows (also prefixes each client option).
pub const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
/// The second magic of the oldstyle handshake, which apf does not speak.
pub const OLDSTYLE_MAGIC: u64 = 0x0000_4202_8186_1253;
/// Prefix of every option reply.
pub const OPTION_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
/// Prefix of every transmission request.
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
/// Prefix of every simple reply.
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
/// Prefix of a structured reply chunk (never negotiated; recognised to say so).
pub const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;

/// Server handshake flag: fixed newstyle.
pub const FLAG_FIXED_NEWSTYLE: u16 = 1;
/// Server handshake flag: the client may skip the 124 zero bytes.
pub const FLAG_NO_ZEROES: u16 = 2;
/// Client flag: fixed newstyle.
pub const CLIENT_FIXED_NEWSTYLE: u32 = 1;
/// Client flag: no zeroes.
pub const CLIENT_NO_ZEROES: u32 = 2;

/// Option: enter transmission with the named export, no error path.
pub const OPT_EXPORT_NAME: u32 = 1;
/// Option: the client gives up negotiating.
pub const OPT_ABORT: u32 = 2;
/// Option: list the exports.
pub const OPT_LIST: u32 = 3;
/// Option: information about an export, staying in negotiation.
pub const OPT_INFO: u32 = 6;
/// Option: enter transmission, with information replies and errors.
pub const OPT_GO: u32 = 7;
/// Option: structured replies (apf speaks simple replies only).
pub const OPT_STRUCTURED_REPLY: u32 = 8;

/// Option reply: done.
pub const REP_ACK: u32 = 1;
/// Option reply: one export of a list.
pub const REP_SERVER: u32 = 2;
/// Option reply: information about the export.
pub const REP_INFO: u32 = 3;
/// Bit 31 marks an option reply as an error.
pub const REP_ERR_BIT: u32 = 1 << 31;
/// Option reply error: the option is not supported.
pub const REP_ERR_UNSUP: u32 = REP_ERR_BIT | 1;
/// Option reply error: the option's data is malformed.
pub const REP_ERR_INVALID: u32 = REP_ERR_BIT | 3;
/// Option reply error: no export of that name.
pub const REP_ERR_UNKNOWN: u32 = REP_ERR_BIT | 6;
/// Option reply error: the option's data is too long.
pub const REP_ERR_TOO_BIG: u32 = REP_ERR_BIT | 9;

/// Information type: size and transmission flags.
pub const INFO_EXPORT: u16 = 0;
/// Information type: the export's name.
pub const INFO_NAME: u16 = 1;
/// Information type: block size constraints.
pub const INFO_BLOCK_SIZE: u16 = 3;

/// Transmission flag: the flags field is meaningful (always set).
pub const TFLAG_HAS_FLAGS: u16 = 1;
/// Transmission flag: writes are refused.
pub const TFLAG_READ_ONLY: u16 = 1 << 1;
/// Transmission flag: the server takes FLUSH.
pub const TFLAG_SEND_FLUSH: u16 = 1 << 2;
/// Transmission flag: several connections see the same data.
pub const TFLAG_CAN_MULTI_CONN: u16 = 1 << 8;
/// Transmission flag: the server takes CACHE.
pub const TFLAG_SEND_CACHE: u16 = 1 << 10;

/// Commands.
pub const CMD_READ: u16 = 0;
/// Write.
pub const CMD_WRITE: u16 = 1;
/// Disconnect (no reply).
pub const CMD_DISC: u16 = 2;
/// Flush.
pub const CMD_FLUSH: u16 = 3;
/// Discard a range.
pub const CMD_TRIM: u16 = 4;
/// Read ahead into the server's cache.
pub const CMD_CACHE: u16 = 5;
/// Zero a range.
pub const CMD_WRITE_ZEROES: u16 = 6;

/// NBD error: not permitted (a write to a read-only export).
pub const NBD_EPERM: u32 = 1;
/// NBD error: I/O error.
pub const NBD_EIO: u32 = 5;
/// NBD error: invalid request.
pub const NBD_EINVAL: u32 = 22;
/// NBD error: no room.
pub const NBD_ENOSPC: u32 = 28;
/// NBD error: the server is shutting down; the client should disconnect.
pub const NBD_ESHUTDOWN: u32 = 108;

/// The longest option reply accepted: export names and descriptions are at most
/// 4096 bytes, so anything much longer is a hostile or broken server.
pub const MAX_OPTION_REPLY: u32 = 64 * 1024;

/// The largest payload a request may carry, the protocol's customary maximum
/// block size.
pub const MAX_PAYLOAD: u32 = 32 << 20;

/// Bytes of the server's greeting.
pub const GREETING_LEN: usize = 18;
/// Bytes of an option reply header.
pub const OPTION_REPLY_HEADER_LEN: usize = 20;
/// Bytes of a request header.
pub const REQUEST_LEN: usize = 28;
/// Bytes of a simple reply header.
pub const SIMPLE_REPLY_LEN: usize = 16;
/// Bytes of the `NBD_OPT_EXPORT_NAME` reply without the 124 zeroes.
pub const EXPORT_NAME_REPLY_LEN: usize = 10;
/// The zeroes after it unless `NO_ZEROES` was negotiated.
pub const EXPORT_NAME_ZEROES: usize = 124;

/// Something the server sent that does not fit the protocol.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// A magic number is wrong.
    #[error("bad magic {got:#x} in the server's {what} (expected {want:#x})")]
    Magic {
        /// Which message.
        what: &'static str,
        /// What came.
        got: u64,
        /// What should have.
        want: u64,
    },
    /// The server speaks the oldstyle handshake.
    #[error("the server speaks the oldstyle NBD handshake; run it in newstyle mode")]
    Oldstyle,
    /// An option reply answers another option.
    #[error("option reply for option {got} while waiting for option {want}")]
    WrongOption {
        /// The option the reply names.
        got: u32,
        /// The option asked.
        want: u32,
    },
    /// An option reply is too long.
    #[error("option reply of {0} bytes is longer than the {MAX_OPTION_REPLY} accepted")]
    OptionReplyTooLong(u32),
    /// An information reply has the wrong length for its type.
    #[error("information reply type {info} has {len} bytes")]
    InfoLength {
        /// The information type.
        info: u16,
        /// Its length.
        len: usize,
    },
    /// The server sent a structured reply, which was not negotiated.
    #[error("the server sent a structured reply, which was not negotiated")]
    Structured,
    /// A reply names a cookie that is not in flight.
    #[error("reply for cookie {0:#x}, which is not in flight")]
    UnknownCookie(u64),
}

fn be_u16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn be_u32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn be_u64(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(x)
}

/// Parses the server's greeting and returns its handshake flags.
pub fn parse_greeting(b: &[u8; GREETING_LEN]) -> Result<u16, WireError> {
    let magic = be_u64(b, 0);
    if magic != NBD_MAGIC {
        return Err(WireError::Magic {
            what: "greeting",
            got: magic,
            want: NBD_MAGIC,
        });
    }
    match be_u64(b, 8) {
        IHAVEOPT => Ok(be_u16(b, 16)),
        OLDSTYLE_MAGIC => Err(WireError::Oldstyle),
        got => Err(WireError::Magic {
            what: "greeting",
            got,
            want: IHAVEOPT,
        }),
    }
}

/// The greeting a server with `flags` sends (for tests and the fuzz corpus).
pub fn encode_greeting(flags: u16) -> [u8; GREETING_LEN] {
    let mut b = [0u8; GREETING_LEN];
    b[0..8].copy_from_slice(&NBD_MAGIC.to_be_bytes());
    b[8..16].copy_from_slice(&IHAVEOPT.to_be_bytes());
    b[16..18].copy_from_slice(&flags.to_be_bytes());
    b
}

/// The client flags to answer a server's handshake flags with: fixed newstyle
/// and no zeroes, each only if the server offered it (a server must drop a
/// client that sets a flag it does not know).
pub fn client_flags(server: u16) -> u32 {
    let mut f = 0;
    if server & FLAG_FIXED_NEWSTYLE != 0 {
        f |= CLIENT_FIXED_NEWSTYLE;
    }
    if server & FLAG_NO_ZEROES != 0 {
        f |= CLIENT_NO_ZEROES;
    }
    f
}

/// An option: `IHAVEOPT`, option, length, data.
pub fn encode_option(option: u32, data: &[u8]) -> Vec<u8> {
    let len = u32::try_from(data.len()).unwrap_or(u32::MAX);
    let mut b = Vec::with_capacity(16 + data.len());
    b.extend_from_slice(&IHAVEOPT.to_be_bytes());
    b.extend_from_slice(&option.to_be_bytes());
    b.extend_from_slice(&len.to_be_bytes());
    b.extend_from_slice(data);
    b
}

/// The data of `NBD_OPT_GO` for `export`, asking for the block size.
pub fn go_data(export: &str) -> Vec<u8> {
    let name = export.as_bytes();
    let len = u32::try_from(name.len()).unwrap_or(u32::MAX);
    let mut b = Vec::with_capacity(8 + name.len());
    b.extend_from_slice(&len.to_be_bytes());
    b.extend_from_slice(name);
    b.extend_from_slice(&1u16.to_be_bytes());
    b.extend_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
    b
}

/// The header of an option reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionReply {
    /// The option it answers.
    pub option: u32,
    /// `NBD_REP_*`.
    pub reply: u32,
    /// Bytes of data that follow.
    pub len: u32,
}

/// Parses an option reply header, checking it answers `option` and that its data
/// is of a sane length.
pub fn parse_option_reply(
    b: &[u8; OPTION_REPLY_HEADER_LEN],
    option: u32,
) -> Result<OptionReply, WireError> {
    let magic = be_u64(b, 0);
    if magic != OPTION_REPLY_MAGIC {
        return Err(WireError::Magic {
            what: "option reply",
            got: magic,
            want: OPTION_REPLY_MAGIC,
        });
    }
    let r = OptionReply {
        option: be_u32(b, 8),
        reply: be_u32(b, 12),
        len: be_u32(b, 16),
    };
    if r.option != option {
        return Err(WireError::WrongOption {
            got: r.option,
            want: option,
        });
    }
    if r.len > MAX_OPTION_REPLY {
        return Err(WireError::OptionReplyTooLong(r.len));
    }
    Ok(r)
}

/// An option reply header as a server sends it (tests, fuzz corpus).
pub fn encode_option_reply(r: OptionReply) -> [u8; OPTION_REPLY_HEADER_LEN] {
    let mut b = [0u8; OPTION_REPLY_HEADER_LEN];
    b[0..8].copy_from_slice(&OPTION_REPLY_MAGIC.to_be_bytes());
    b[8..12].copy_from_slice(&r.option.to_be_bytes());
    b[12..16].copy_from_slice(&r.reply.to_be_bytes());
    b[16..20].copy_from_slice(&r.len.to_be_bytes());
    b
}

/// The information in an `NBD_REP_INFO` reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Info {
    /// Export size in bytes and transmission flags.
    Export {
        /// Bytes.
        size: u64,
        /// `NBD_FLAG_*` transmission flags.
        flags: u16,
    },
    /// Block size constraints.
    BlockSize {
        /// Minimum.
        min: u32,
        /// Preferred.
        preferred: u32,
        /// Maximum payload.
        max: u32,
    },
    /// A type the client does not need (name, description, ...).
    Other(u16),
}

/// Parses the data of an `NBD_REP_INFO` reply.
pub fn parse_info(data: &[u8]) -> Result<Info, WireError> {
    if data.len() < 2 {
        return Err(WireError::InfoLength {
            info: u16::MAX,
            len: data.len(),
        });
    }
    let info = be_u16(data, 0);
    let want = match info {
        INFO_EXPORT => 12,
        INFO_BLOCK_SIZE => 14,
        other => return Ok(Info::Other(other)),
    };
    if data.len() != want {
        return Err(WireError::InfoLength {
            info,
            len: data.len(),
        });
    }
    Ok(if info == INFO_EXPORT {
        Info::Export {
            size: be_u64(data, 2),
            flags: be_u16(data, 10),
        }
    } else {
        Info::BlockSize {
            min: be_u32(data, 2),
            preferred: be_u32(data, 6),
            max: be_u32(data, 10),
        }
    })
}

/// The data of an `NBD_REP_INFO` reply (tests, fuzz corpus).
pub fn encode_info(info: Info) -> Vec<u8> {
    let mut b = Vec::new();
    match info {
        Info::Export { size, flags } => {
            b.extend_from_slice(&INFO_EXPORT.to_be_bytes());
            b.extend_from_slice(&size.to_be_bytes());
            b.extend_from_slice(&flags.to_be_bytes());
        }
        Info::BlockSize {
            min,
            preferred,
            max,
        } => {
            b.extend_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
            b.extend_from_slice(&min.to_be_bytes());
            b.extend_from_slice(&preferred.to_be_bytes());
            b.extend_from_slice(&max.to_be_bytes());
        }
        Info::Other(t) => b.extend_from_slice(&t.to_be_bytes()),
    }
    b
}

/// Parses the reply to `NBD_OPT_EXPORT_NAME` (without the zeroes): size, flags.
pub fn parse_export_name_reply(b: &[u8; EXPORT_NAME_REPLY_LEN]) -> (u64, u16) {
    (be_u64(b, 0), be_u16(b, 8))
}

/// A transmission request header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    /// `NBD_CMD_*`.
    pub command: u16,
    /// The client's name for it, echoed in the reply.
    pub cookie: u64,
    /// Byte offset in the export.
    pub offset: u64,
    /// Bytes.
    pub len: u32,
}

/// Encodes a request header (a WRITE's payload follows it).
pub fn encode_request(r: Request) -> [u8; REQUEST_LEN] {
    let mut b = [0u8; REQUEST_LEN];
    b[0..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
    // Command flags (FUA etc.) stay 0.
    b[6..8].copy_from_slice(&r.command.to_be_bytes());
    b[8..16].copy_from_slice(&r.cookie.to_be_bytes());
    b[16..24].copy_from_slice(&r.offset.to_be_bytes());
    b[24..28].copy_from_slice(&r.len.to_be_bytes());
    b
}

/// Parses a request header (the test servers' side; round-trip tests).
pub fn parse_request(b: &[u8; REQUEST_LEN]) -> Option<Request> {
    (be_u32(b, 0) == REQUEST_MAGIC).then(|| Request {
        command: be_u16(b, 6),
        cookie: be_u64(b, 8),
        offset: be_u64(b, 16),
        len: be_u32(b, 24),
    })
}

/// A simple reply header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SimpleReply {
    /// 0 or an NBD error code.
    pub error: u32,
    /// The request's cookie.
    pub cookie: u64,
}

/// Parses a simple reply header.
pub fn parse_simple_reply(b: &[u8; SIMPLE_REPLY_LEN]) -> Result<SimpleReply, WireError> {
    let magic = be_u32(b, 0);
    if magic == STRUCTURED_REPLY_MAGIC {
        return Err(WireError::Structured);
    }
    if magic != SIMPLE_REPLY_MAGIC {
        return Err(WireError::Magic {
            what: "reply",
            got: u64::from(magic),
            want: u64::from(SIMPLE_REPLY_MAGIC),
        });
    }
    Ok(SimpleReply {
        error: be_u32(b, 4),
        cookie: be_u64(b, 8),
    })
}

/// Encodes a simple reply header (test servers, fuzz corpus).
pub fn encode_simple_reply(r: SimpleReply) -> [u8; SIMPLE_REPLY_LEN] {
    let mut b = [0u8; SIMPLE_REPLY_LEN];
    b[0..4].copy_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
    b[4..8].copy_from_slice(&r.error.to_be_bytes());
    b[8..16].copy_from_slice(&r.cookie.to_be_bytes());
    b
}

/// What an in-flight request expects back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// A READ of this many bytes: on success, that payload follows the header.
    Read(u32),
    /// A WRITE or FLUSH: no payload.
    NoPayload,
}

/// What to do with a reply header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplyAction {
    /// The request it answers.
    pub cookie: u64,
    /// 0 or the NBD error.
    pub error: u32,
    /// Bytes of payload to read into the request's buffer before it completes:
    /// never more than the request asked for.
    pub payload: u32,
}

/// Checks a reply header against the requests in flight (`lookup` says what
/// a cookie expects, or `None` if it is not in flight) and says how much payload
/// follows. Anything unexpected is an error, after which the connection is
/// unusable (the stream's framing is lost).
pub fn check_reply(
    b: &[u8; SIMPLE_REPLY_LEN],
    lookup: impl FnOnce(u64) -> Option<Expect>,
) -> Result<ReplyAction, WireError> {
    let r = parse_simple_reply(b)?;
    let expect = lookup(r.cookie).ok_or(WireError::UnknownCookie(r.cookie))?;
    let payload = match expect {
        Expect::Read(len) if r.error == 0 => len,
        _ => 0,
    };
    Ok(ReplyAction {
        cookie: r.cookie,
        error: r.error,
        payload,
    })
}

/// The errno an NBD error code stands for (the protocol's codes are Linux's).
pub fn errno_of(error: u32) -> i32 {
    match error {
        1 => libc::EPERM,
        5 => libc::EIO,
        12 => libc::ENOMEM,
        22 => libc::EINVAL,
        28 => libc::ENOSPC,
        75 => libc::EOVERFLOW,
        95 => libc::ENOTSUP,
        108 => libc::ESHUTDOWN,
        _ => libc::EIO,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn requests_round_trip(command in any::<u16>(), cookie in any::<u64>(),
                               offset in any::<u64>(), len in any::<u32>()) {
            let r = Request { command, cookie, offset, len };
            prop_assert_eq!(parse_request(&encode_request(r)), Some(r));
        }

        #[test]
        fn simple_replies_round_trip(error in any::<u32>(), cookie in any::<u64>()) {
            let r = SimpleReply { error, cookie };
            prop_assert_eq!(parse_simple_reply(&encode_simple_reply(r)), Ok(r));
        }

        #[test]
        fn option_replies_round_trip(option in any::<u32>(), reply in any::<u32>(),
                                     len in 0..=MAX_OPTION_REPLY) {
            let r = OptionReply { option, reply, len };
            prop_assert_eq!(parse_option_reply(&encode_option_reply(r), option), Ok(r));
        }

        #[test]
        fn infos_round_trip(size in any::<u64>(), flags in any::<u16>(),
                            min in any::<u32>(), preferred in any::<u32>(), max in any::<u32>()) {
            for info in [Info::Export { size, flags }, Info::BlockSize { min, preferred, max }] {
                prop_assert_eq!(parse_info(&encode_info(info)), Ok(info));
            }
        }

        #[test]
        fn greetings_round_trip(flags in any::<u16>()) {
            prop_assert_eq!(parse_greeting(&encode_greeting(flags)), Ok(flags));
        }

        #[test]
        fn a_reply_never_asks_for_more_payload_than_the_request(
            bytes in proptest::array::uniform16(any::<u8>()), len in 0u32..8192, read in any::<bool>()) {
            let expect = if read { Expect::Read(len) } else { Expect::NoPayload };
            if let Ok(a) = check_reply(&bytes, |_| Some(expect)) {
                let most = if read { len } else { 0 };
                prop_assert!(a.payload <= most);
            }
        }
    }

    #[test]
    fn client_flags_are_only_those_offered() {
        assert_eq!(client_flags(0), 0);
        assert_eq!(client_flags(FLAG_FIXED_NEWSTYLE), CLIENT_FIXED_NEWSTYLE);
        assert_eq!(
            client_flags(0xffff),
            CLIENT_FIXED_NEWSTYLE | CLIENT_NO_ZEROES
        );
    }

    #[test]
    fn bad_replies_are_refused() {
        let mut b = encode_simple_reply(SimpleReply {
            error: 0,
            cookie: 7,
        });
        assert_eq!(check_reply(&b, |_| None), Err(WireError::UnknownCookie(7)));
        let ok = check_reply(&b, |_| Some(Expect::Read(4096))).unwrap();
        assert_eq!(ok.payload, 4096);
        b[0] ^= 1;
        assert!(matches!(
            check_reply(&b, |_| Some(Expect::Read(4096))),
            Err(WireError::Magic { .. })
        ));
        b[0..4].copy_from_slice(&STRUCTURED_REPLY_MAGIC.to_be_bytes());
        assert_eq!(parse_simple_reply(&b), Err(WireError::Structured));
        // An error reply to a read carries no payload.
        let e = encode_simple_reply(SimpleReply {
            error: 5,
            cookie: 1,
        });
        assert_eq!(
            check_reply(&e, |_| Some(Expect::Read(4096)))
                .unwrap()
                .payload,
            0
        );
        assert!(parse_info(&[0, 0, 1]).is_err());
        let mut long = encode_option_reply(OptionReply {
            option: OPT_GO,
            reply: REP_INFO,
            len: MAX_OPTION_REPLY + 1,
        });
        assert_eq!(
            parse_option_reply(&long, OPT_GO),
            Err(WireError::OptionReplyTooLong(MAX_OPTION_REPLY + 1))
        );
        long[19] = 0;
        assert!(matches!(
            parse_option_reply(&long, OPT_EXPORT_NAME),
            Err(WireError::WrongOption { .. })
        ));
    }
}
