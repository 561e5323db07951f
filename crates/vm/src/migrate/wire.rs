//! The migration control stream: length-prefixed, checksummed JSON frames.
//!
//! Every frame is `MAGIC` (4 bytes), the protocol version (u32), the payload's
//! length (u32) and its CRC-32 (u32), all little-endian, then the payload: one
//! [`Request`] (source to destination) or [`Reply`] (back). The source sends a
//! request and waits for its reply, so after a broken connection it can send
//! the same request again on a new one: every request is idempotent at the
//! destination.
//!
//! Pages never travel here: they go over NBD from the source's page server.

use std::io::{self, Read, Write};
use std::time::Duration;

use apf_host::machine::MachineState;
use apf_host::vcpu::VcpuState;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::config::VmConfig;
use crate::snapshot::{GuestKind, ProgressState};

/// The first bytes of every frame.
pub(crate) const MAGIC: [u8; 4] = *b"APFM";
/// The protocol this apf speaks. Bump it on any change an older peer would
/// misread.
pub const PROTOCOL: u32 = 1;
/// The largest payload accepted (a state with a long console is well under).
const MAX_PAYLOAD: u32 = 64 << 20;
const HEADER: usize = 16;

/// Why a frame could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The connection failed or closed.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// The peer is not an apf migration peer.
    #[error("not an apf migration stream (first bytes {0:02x?})")]
    NotApf([u8; 4]),
    /// The peer speaks another version.
    #[error("protocol version {0}, but this apf speaks {PROTOCOL}: run the same apf on both hosts")]
    Version(u32),
    /// The length is past the limit.
    #[error("a frame of {0} bytes is past the {MAX_PAYLOAD}-byte limit")]
    TooLong(u32),
    /// The payload fails its checksum.
    #[error("a frame fails its checksum ({found:#010x}, expected {expected:#010x})")]
    Checksum {
        /// Computed.
        found: u32,
        /// Sent.
        expected: u32,
    },
    /// The payload is not a message.
    #[error("a frame does not hold a message: {0}")]
    Json(#[from] serde_json::Error),
}

impl FrameError {
    /// Whether the peer sent something wrong (rather than the connection
    /// breaking): the connection is refused, not resumed.
    pub(crate) fn is_refusal(&self) -> bool {
        !matches!(self, FrameError::Io(_))
    }
}

/// Writes `msg` as one frame.
pub(crate) fn write_frame<T: Serialize>(w: &mut impl Write, msg: &T) -> io::Result<()> {
    let payload = serde_json::to_vec(msg).map_err(io::Error::other)?;
    let len = u32::try_from(payload.len())
        .ok()
        .filter(|&l| l <= MAX_PAYLOAD)
        .ok_or_else(|| io::Error::other("message too large for a frame"))?;
    let mut frame = Vec::with_capacity(HEADER + payload.len());
    frame.extend_from_slice(&MAGIC);
    frame.extend_from_slice(&PROTOCOL.to_le_bytes());
    frame.extend_from_slice(&len.to_le_bytes());
    frame.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    frame.extend_from_slice(&payload);
    w.write_all(&frame)?;
    w.flush()
}

/// Reads one frame and decodes it.
pub(crate) fn read_frame<T: DeserializeOwned>(r: &mut impl Read) -> Result<T, FrameError> {
    let mut h = [0u8; HEADER];
    r.read_exact(&mut h)?;
    let word = |i: usize| u32::from_le_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
    let magic = [h[0], h[1], h[2], h[3]];
    if magic != MAGIC {
        return Err(FrameError::NotApf(magic));
    }
    if word(4) != PROTOCOL {
        return Err(FrameError::Version(word(4)));
    }
    let len = word(8);
    if len > MAX_PAYLOAD {
        return Err(FrameError::TooLong(len));
    }
    // Read as it comes: a peer that claims a long frame and sends little
    // costs what it sent, not the limit.
    let mut payload = Vec::new();
    r.take(u64::from(len)).read_to_end(&mut payload)?;
    if payload.len() != len as usize {
        return Err(FrameError::Io(io::ErrorKind::UnexpectedEof.into()));
    }
    let found = crc32fast::hash(&payload);
    if found != word(12) {
        return Err(FrameError::Checksum {
            found,
            expected: word(12),
        });
    }
    Ok(serde_json::from_slice(&payload)?)
}

/// Pages as `[first, count]` runs of page numbers (from the start of RAM).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct PageRuns(pub(crate) Vec<[u32; 2]>);

impl PageRuns {
    /// From page numbers in increasing order.
    pub(crate) fn from_sorted(pages: impl IntoIterator<Item = u32>) -> PageRuns {
        let mut runs: Vec<[u32; 2]> = Vec::new();
        for p in pages {
            match runs.last_mut() {
                Some([first, count]) if first.checked_add(*count) == Some(p) => *count += 1,
                _ => runs.push([p, 1]),
            }
        }
        PageRuns(runs)
    }

    /// Each page.
    pub(crate) fn pages(&self) -> impl Iterator<Item = u32> + '_ {
        self.0
            .iter()
            .flat_map(|&[first, count]| first..first.saturating_add(count))
    }

    /// Whether every page is below `pages` (a peer's runs are checked before
    /// they are expanded).
    pub(crate) fn within(&self, pages: u64) -> bool {
        self.0
            .iter()
            .all(|&[first, count]| u64::from(first) + u64::from(count) <= pages)
            && self.len() <= pages
    }

    /// How many.
    pub(crate) fn len(&self) -> u64 {
        self.0.iter().map(|r| u64::from(r[1])).sum()
    }
}

/// How the source moves memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MigrateMode {
    /// Copy rounds while the guest runs, until few pages change per round; the
    /// last changed pages are copied before the destination starts.
    Precopy,
    /// Stop at once; the destination starts with no page and fetches each on
    /// first touch while a copier brings the rest.
    Postcopy,
    /// One pre-copy round, then post-copy for what changed meanwhile.
    Hybrid,
}

impl MigrateMode {
    /// Its name on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            MigrateMode::Precopy => "precopy",
            MigrateMode::Postcopy => "postcopy",
            MigrateMode::Hybrid => "hybrid",
        }
    }

    /// Parses a name.
    pub fn parse(s: &str) -> Option<MigrateMode> {
        [
            MigrateMode::Precopy,
            MigrateMode::Postcopy,
            MigrateMode::Hybrid,
        ]
        .into_iter()
        .find(|m| m.name() == s)
    }
}

/// What the source sends.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Request {
    /// First on every connection: which migration this is.
    Hello {
        /// Chosen by the source; the same on every reconnection.
        session: u64,
        /// The source's apf version, for messages.
        apf_version: String,
    },
    /// The VM's configuration and where its pages are.
    Begin(Box<Begin>),
    /// Copy these pages now (a pre-copy round); the guest still runs.
    Round {
        /// 0 for the first.
        round: u32,
        /// Pages written since the previous round (all touched, in the first).
        pages: PageRuns,
    },
    /// The source has stopped: here is the VM; resume it.
    SwitchOver(Box<SwitchOver>),
    /// Reply once every page has arrived (or the run has ended).
    AwaitComplete,
    /// The source gives up before the switch-over (its VM runs on there).
    Abandon {
        /// Why, for the destination's log.
        why: String,
    },
}

/// The start of a migration.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Begin {
    pub(crate) config: VmConfig,
    pub(crate) guest: GuestKind,
    pub(crate) mode: MigrateMode,
    /// The source's page server: `nbd://HOST:PORT/EXPORT`.
    pub(crate) pages_url: String,
    /// Added to every page read on top of the network's own time.
    pub(crate) net_latency: Duration,
}

/// The stopped VM, everything but its memory.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct SwitchOver {
    pub(crate) taken_at: Duration,
    pub(crate) console: String,
    pub(crate) machine: MachineState,
    pub(crate) vcpus: Vec<VcpuState>,
    pub(crate) progress: ProgressState,
    /// Pages holding data at the source now.
    pub(crate) held: PageRuns,
    /// Of those, pages the destination has no current copy of (all of them
    /// without pre-copy; those written since their last copy with it).
    pub(crate) changed: PageRuns,
}

/// What the destination answers.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Reply {
    /// To Hello.
    Welcome {
        /// Whether this session was already known (a reconnection).
        resumed: bool,
    },
    /// To Begin: connected to the page server, ready for rounds.
    Ready,
    /// To Round: the pages are copied.
    Copied {
        round: u32,
        pages: u64,
        took: Duration,
    },
    /// To SwitchOver: the VM runs here. `setup` is from the switch-over's
    /// arrival to the first instruction.
    Started {
        setup: Duration,
        /// Pages copied before the first instruction (pre-copy's last round).
        copied_before_start: u64,
    },
    /// To Abandon.
    Dropped,
    /// To AwaitComplete.
    Complete {
        /// Every wanted page arrived (false: the run ended first).
        all_pages: bool,
        /// Pages read on demand, for a fault.
        demand: u64,
        /// Pages the copier brought (rounds and background).
        copied: u64,
    },
    /// The request cannot be served; the source should give up.
    Refused(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_damage_is_named() {
        let mut buf = Vec::new();
        let msg = Request::Round {
            round: 3,
            pages: PageRuns::from_sorted([1, 2, 3, 7, 9, 10]),
        };
        write_frame(&mut buf, &msg).expect("write");
        let back: Request = read_frame(&mut buf.as_slice()).expect("read");
        let Request::Round { round, pages } = back else {
            panic!("{back:?}")
        };
        assert_eq!((round, pages.len()), (3, 6));
        assert_eq!(pages.0, vec![[1, 3], [7, 1], [9, 2]]);
        assert_eq!(pages.pages().collect::<Vec<_>>(), vec![1, 2, 3, 7, 9, 10]);

        let mut bad = buf.clone();
        let last = bad.len() - 2;
        bad[last] ^= 1;
        let e = read_frame::<Request>(&mut bad.as_slice()).expect_err("damaged");
        assert!(
            matches!(e, FrameError::Checksum { .. }) && e.is_refusal(),
            "{e}"
        );

        let mut other = buf.clone();
        other[4] = 9;
        let e = read_frame::<Request>(&mut other.as_slice()).expect_err("version");
        assert!(e.to_string().contains("version 9"), "{e}");

        let e = read_frame::<Request>(&mut &b"GET / HTTP/1.1\r\n\r\n"[..]).expect_err("http");
        assert!(matches!(e, FrameError::NotApf(_)), "{e}");

        let e = read_frame::<Request>(&mut &buf[..10]).expect_err("cut");
        assert!(
            !e.is_refusal(),
            "a cut connection is resumed, not refused: {e}"
        );
    }

    proptest::proptest! {
        /// Whatever a peer sends, reading a frame returns a request or an
        /// error; it never panics, and never asks for more than the limit.
        #[test]
        fn any_bytes_read_as_a_request_or_an_error(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256)) {
            let _ = read_frame::<Request>(&mut bytes.as_slice());
        }

        /// A frame with a valid header around any payload is refused unless
        /// the payload is a request.
        #[test]
        fn any_payload_in_a_good_frame_is_decoded_or_refused(payload in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..128)) {
            let mut frame = MAGIC.to_vec();
            frame.extend_from_slice(&PROTOCOL.to_le_bytes());
            frame.extend_from_slice(&u32::try_from(payload.len()).unwrap_or(0).to_le_bytes());
            frame.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
            frame.extend_from_slice(&payload);
            if let Err(e) = read_frame::<Request>(&mut frame.as_slice()) {
                proptest::prop_assert!(e.is_refusal(), "{e}");
            }
        }

        /// Page runs hold exactly the pages they were made from.
        #[test]
        fn page_runs_round_trip(mut pages in proptest::collection::vec(0u32..5000, 0..300)) {
            pages.sort_unstable();
            pages.dedup();
            let runs = PageRuns::from_sorted(pages.iter().copied());
            proptest::prop_assert_eq!(runs.pages().collect::<Vec<_>>(), pages.clone());
            proptest::prop_assert_eq!(runs.len(), pages.len() as u64);
            proptest::prop_assert!(runs.within(5000));
            proptest::prop_assert_eq!(runs.within(pages.last().map_or(0, |&p| u64::from(p))), pages.is_empty());
        }
    }

    #[test]
    fn modes_parse_by_name() {
        for m in [
            MigrateMode::Precopy,
            MigrateMode::Postcopy,
            MigrateMode::Hybrid,
        ] {
            assert_eq!(MigrateMode::parse(m.name()), Some(m));
        }
        assert_eq!(MigrateMode::parse("live"), None);
    }
}
