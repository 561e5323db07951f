//! A fake vCPU for driving the engine without a CPU: guest RAM as a byte vector,
//! SDEI state as flags, PPI levels as a bitmask, and switches to make each
//! operation fail. Used by the engine's tests, its model-checked test and its
//! benchmark; it also plays the guest side (taking notifications off the block).

use super::completion::AtomicWord;
use super::engine::ApfEngine;
use super::vcpu::{ApfVcpu, GuestMemoryError, SdeiCancelError, SdeiInjectError};
use apf_abi::Token;
use apf_abi::shared::{
    Channel, REASON_NONE, REASON_PAGE_NOT_PRESENT, REASON_PAGE_READY, SHARED_BLOCK_ALIGN,
};

/// SDEI state of the fake vCPU, for the one APF event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FakeSdei {
    /// Registered by the guest.
    pub registered: bool,
    /// Enabled by the guest.
    pub enabled: bool,
    /// PE masked.
    pub pe_masked: bool,
    /// Queued, not yet delivered.
    pub pending: bool,
    /// The handler is running.
    pub running: bool,
}

/// The fake vCPU.
#[derive(Debug, Clone)]
pub struct FakeVcpu {
    /// Exception level of the faulting context.
    pub el: u8,
    /// Guest RAM base.
    pub ram_base: u64,
    /// Guest RAM.
    pub ram: Vec<u8>,
    /// SDEI state.
    pub sdei: FakeSdei,
    /// Bit n: PPI n is asserted.
    pub ppi_levels: u32,
    /// Make every guest-memory read fail.
    pub fail_reads: bool,
    /// Make every guest-memory write fail.
    pub fail_writes: bool,
    /// Make SDEI injection fail even when deliverable.
    pub fail_inject: bool,
    /// The shared blocks the engine holds (claimed and not released), in claim
    /// order.
    pub claimed: Vec<u64>,
}

impl FakeVcpu {
    /// A vCPU at EL0 with `ram_bytes` of RAM at 0x4000_0000 and the APF event
    /// registered, enabled and the PE unmasked: a guest whose driver is up.
    pub fn new(ram_bytes: usize) -> Self {
        FakeVcpu {
            el: 0,
            ram_base: 0x4000_0000,
            ram: vec![0; ram_bytes],
            sdei: FakeSdei {
                registered: true,
                enabled: true,
                pe_masked: false,
                pending: false,
                running: false,
            },
            ppi_levels: 0,
            fail_reads: false,
            fail_writes: false,
            fail_inject: false,
            claimed: Vec::new(),
        }
    }

    fn offset(&self, gpa: u64, len: u64) -> Option<usize> {
        let off = gpa.checked_sub(self.ram_base)?;
        let end = off.checked_add(len)?;
        (end <= self.ram.len() as u64)
            .then(|| usize::try_from(off).ok())
            .flatten()
    }

    /// Reads a u32 without going through the failure switches (the test's view).
    pub fn peek(&self, gpa: u64) -> u32 {
        let off = self.offset(gpa, 4).expect("peek inside RAM");
        u32::from_le_bytes(self.ram[off..off + 4].try_into().expect("4 bytes"))
    }

    fn poke(&mut self, gpa: u64, value: u32) {
        let off = self.offset(gpa, 4).expect("poke inside RAM");
        self.ram[off..off + 4].copy_from_slice(&value.to_le_bytes());
    }

    /// Whether PPI `intid` is asserted.
    pub fn ppi(&self, intid: u32) -> bool {
        intid < 32 && self.ppi_levels & (1 << intid) != 0
    }

    /// Guest entry: delivers a queued SDEI event if the architecture allows it and
    /// tells the engine, as the platform does. Returns whether it delivered.
    pub fn enter_guest<W: AtomicWord>(&mut self, engine: &mut ApfEngine<W>) -> bool {
        let s = &mut self.sdei;
        if s.pending && s.registered && s.enabled && !s.pe_masked && !s.running {
            s.pending = false;
            s.running = true;
            engine.on_not_present_delivered();
            return true;
        }
        false
    }

    /// The guest's SDEI handler: takes the not-present off the block at `block`
    /// (token then reason cleared) and completes. Returns the token, or `None` if
    /// the block did not hold a not-present.
    pub fn guest_sdei_handler(&mut self, block: u64) -> Option<Token> {
        let got = self.take(block, Channel::NotPresent, REASON_PAGE_NOT_PRESENT);
        self.sdei.running = false;
        got
    }

    /// The guest's PPI handler: takes a page-ready off the block (from the separate
    /// channel if `separate`). Returns the token; the caller then calls IRQ_ACK.
    pub fn guest_ppi_handler(&mut self, block: u64, separate: bool) -> Option<Token> {
        let channel = if separate {
            Channel::Ready
        } else {
            Channel::NotPresent
        };
        self.take(block, channel, REASON_PAGE_READY)
    }

    fn take(&mut self, block: u64, channel: Channel, want: u32) -> Option<Token> {
        let reason = self.peek(block + channel.reason_offset());
        let token = self.peek(block + channel.token_offset());
        if reason != want {
            return None;
        }
        self.poke(block + channel.token_offset(), 0);
        self.poke(block + channel.reason_offset(), REASON_NONE);
        Some(Token(token))
    }
}

impl ApfVcpu for FakeVcpu {
    fn exception_level(&self) -> u8 {
        self.el
    }

    fn sdei_running(&self) -> bool {
        self.sdei.running
    }

    fn sdei_deliverable(&self, _event: u32) -> bool {
        self.sdei.registered && self.sdei.enabled && !self.sdei.pe_masked
    }

    fn sdei_inject(&mut self, event: u32) -> Result<(), SdeiInjectError> {
        if self.fail_inject || !self.sdei_deliverable(event) {
            return Err(SdeiInjectError::NotDeliverable(event));
        }
        if self.sdei.pending || self.sdei.running {
            return Err(SdeiInjectError::Busy(event));
        }
        self.sdei.pending = true;
        Ok(())
    }

    fn sdei_cancel(&mut self, event: u32) -> Result<(), SdeiCancelError> {
        if self.sdei.pending {
            self.sdei.pending = false;
            Ok(())
        } else if self.sdei.running {
            Err(SdeiCancelError::AlreadyDelivered(event))
        } else {
            Err(SdeiCancelError::NotPending(event))
        }
    }

    fn set_ppi_level(&mut self, intid: u32, level: bool) {
        if intid < 32 {
            if level {
                self.ppi_levels |= 1 << intid;
            } else {
                self.ppi_levels &= !(1 << intid);
            }
        }
    }

    fn claim_shared_block(&mut self, gpa: u64, len: u64) -> bool {
        let ok = gpa.is_multiple_of(SHARED_BLOCK_ALIGN) && self.offset(gpa, len).is_some();
        if ok {
            self.claimed.push(gpa);
        }
        ok
    }

    fn release_shared_block(&mut self, gpa: u64) {
        // An engine giving back what it does not hold has lost track of its block:
        // the tests and fuzz targets driving this fake should see that.
        let held = self.claimed.iter().position(|&b| b == gpa);
        let held = held.unwrap_or_else(|| panic!("released {gpa:#x}, which is not held"));
        self.claimed.remove(held);
    }

    fn read_u32(&mut self, gpa: u64) -> Result<u32, GuestMemoryError> {
        if self.fail_reads || self.offset(gpa, 4).is_none() {
            return Err(GuestMemoryError { gpa });
        }
        Ok(self.peek(gpa))
    }

    fn write_u32(&mut self, gpa: u64, value: u32) -> Result<(), GuestMemoryError> {
        if self.fail_writes || self.offset(gpa, 4).is_none() {
            return Err(GuestMemoryError { gpa });
        }
        self.poke(gpa, value);
        Ok(())
    }
}
