//! The per-vCPU shared block ("control block") in guest memory.

use core::mem::{offset_of, size_of};

/// Nothing to report: the channel is free.
pub const REASON_NONE: u32 = 0;
/// Page not present: the guest should park the faulting process on `token`.
pub const REASON_PAGE_NOT_PRESENT: u32 = 1;
/// Page ready: the guest should wake the process parked on `token`.
pub const REASON_PAGE_READY: u32 = 2;

/// Required alignment of the block's guest-physical address: the low 6 bits of the
/// ENABLE control word carry flags.
pub const SHARED_BLOCK_ALIGN: u64 = 64;

/// Bytes at the start of the block the host reads and writes: both channels.
/// The host never touches the rest, so the block's cache-line size does not matter.
pub const SHARED_HOST_WINDOW: u64 = 16;

/// One vCPU's shared block, as laid out in guest memory (little-endian).
///
/// The v4 series' layout (68 bytes) with the ABI 1.1 page-ready channel carved out
/// of the padding. Without `SEPARATE_READY` both notifications use
/// `reason`/`token`; with it, page-ready uses `ready_reason`/`ready_token`, so an
/// unacknowledged page-ready never blocks the next not-present.
///
/// Write order: the host writes a token before its reason; the guest reads both,
/// then clears the token before the reason. A channel is busy while either is
/// non-zero.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApfSharedData {
    /// Not-present channel (and page-ready without `SEPARATE_READY`).
    pub reason: u32,
    /// Token of the notification in `reason`.
    pub token: u32,
    /// ABI 1.1: page-ready channel, used when `SEPARATE_READY` is set.
    pub ready_reason: u32,
    /// ABI 1.1: token of the page-ready in `ready_reason`.
    pub ready_token: u32,
    /// Reserved; the host never reads or writes it.
    pub pad: [u8; 48],
    /// Guest-private bookkeeping ("APF is on for this CPU"); the host never reads it.
    pub enabled: u32,
}

impl Default for ApfSharedData {
    fn default() -> Self {
        ApfSharedData {
            reason: 0,
            token: 0,
            ready_reason: 0,
            ready_token: 0,
            pad: [0; 48],
            enabled: 0,
        }
    }
}

/// Byte offsets of the fields, for code that addresses the block in guest memory.
pub const OFF_REASON: u64 = offset_of!(ApfSharedData, reason) as u64;
/// Offset of `token`.
pub const OFF_TOKEN: u64 = offset_of!(ApfSharedData, token) as u64;
/// Offset of `ready_reason`.
pub const OFF_READY_REASON: u64 = offset_of!(ApfSharedData, ready_reason) as u64;
/// Offset of `ready_token`.
pub const OFF_READY_TOKEN: u64 = offset_of!(ApfSharedData, ready_token) as u64;
/// Offset of `enabled`.
pub const OFF_ENABLED: u64 = offset_of!(ApfSharedData, enabled) as u64;
/// Size of the block in bytes.
pub const SHARED_BLOCK_SIZE: u64 = size_of::<ApfSharedData>() as u64;

const _: () = {
    assert!(OFF_REASON == 0);
    assert!(OFF_TOKEN == 4);
    assert!(OFF_READY_REASON == 8);
    assert!(OFF_READY_TOKEN == 12);
    assert!(OFF_ENABLED == 64);
    assert!(SHARED_BLOCK_SIZE == 68);
    assert!(SHARED_HOST_WINDOW <= SHARED_BLOCK_ALIGN);
};

/// Which of the two channels a notification uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel {
    /// `reason`/`token` at offset 0.
    NotPresent,
    /// `ready_reason`/`ready_token` at offset 8 (ABI 1.1, `SEPARATE_READY`).
    Ready,
}

impl Channel {
    /// Offset of the channel's reason word in the block.
    pub const fn reason_offset(self) -> u64 {
        match self {
            Channel::NotPresent => OFF_REASON,
            Channel::Ready => OFF_READY_REASON,
        }
    }

    /// Offset of the channel's token word in the block.
    pub const fn token_offset(self) -> u64 {
        match self {
            Channel::NotPresent => OFF_TOKEN,
            Channel::Ready => OFF_READY_TOKEN,
        }
    }
}
