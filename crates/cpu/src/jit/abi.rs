//! What compiled code and the run loop share: the signatures of compiled
//! code and of its calls back, [`Calls`], [`Link`], the flow codes, and where
//! the `Cpu`'s fields are ([`CpuLayout`]). Offsets of `repr(C)` fields become
//! IR load and store offsets here.

use std::mem::offset_of;

use cranelift_codegen::ir::MemFlagsData;

use super::direct::DirectPages;
use crate::decode::Op;

/// Compiled code for one block, in Cranelift's tail-call convention, so that a
/// block can jump to the next: `(cpu, calls) -> ops taken << 8 | flow code`
/// of the last block run. Ops taken: those retired, plus the last one when it
/// returned a flow other than [`NEXT`] (as the interpreter's block loop counts
/// them). Called only through [`EnterFn`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(transparent)]
pub(crate) struct BlockFn(pub(super) *const u8);
/// The way into compiled code from Rust: `(cpu, calls, block) -> what the
/// block returns`. Here, and in the calls compiled code makes, the `Cpu` is a
/// `*mut Cpu` passed as bytes: only the run loop names its type.
pub(crate) type EnterFn = unsafe extern "C" fn(*mut u8, *mut Calls, BlockFn) -> u64;
/// The interpreter's `exec` for an op of the running block: `(cpu, calls, the
/// op's arena position, the block's length - 1) -> flow code`.
pub(crate) type ExecFn = unsafe extern "C" fn(*mut u8, *mut Calls, u64, u64) -> u64;
/// Fills the direct-page entry of an access the interpreter just did:
/// `(cpu, calls, virtual address, write)`.
pub(crate) type FillFn = unsafe extern "C" fn(*mut u8, *mut Calls, u64, u64);

/// What compiled code shares with the run loop beyond the `Cpu`, behind one
/// pointer so that a call passes two arguments.
#[derive(Debug)]
#[repr(C)]
pub(crate) struct Calls {
    /// The `&mut B` of the run, type-erased (`exec` and `fill` know `B`).
    pub(crate) bus: *mut u8,
    pub(crate) exec: ExecFn,
    pub(crate) fill: FillFn,
    /// The arena's first op.
    pub(crate) arena: *const Op,
    /// The retired count when compiled code was entered, and the budget then.
    pub(crate) retired: u64,
    pub(crate) budget: u64,
    /// What is left of the budget as the running block starts: a block jumps
    /// to the next only if it fits, and takes its length off. So the running
    /// block's first op retires as number `retired + budget - left`.
    pub(crate) left: u64,
    /// The link a block found empty or stale on its way out (null: none), for
    /// the run loop to fill.
    pub(crate) miss: *mut Link,
}

impl Calls {
    /// The calls of a run on a bus (`bus`, a type-erased `&mut B`, with
    /// `exec` and `fill` for that `B`) with blocks in `arena`.
    pub(crate) fn new(bus: *mut u8, exec: ExecFn, fill: FillFn, arena: &[Op]) -> Calls {
        Calls {
            bus,
            exec,
            fill,
            arena: arena.as_ptr(),
            retired: 0,
            budget: 0,
            left: 0,
            miss: std::ptr::null_mut(),
        }
    }
}

/// Flow codes, as compiled code returns them in its low byte.
pub(crate) const NEXT: u64 = 0;
pub(crate) const JUMP: u64 = 1;

/// Where compiled code finds what it uses in the `Cpu` (offsets in bytes); the
/// `Cpu` gives it, as only it knows its layout.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CpuLayout {
    /// X0..X30, the zero slot, SP, the sink: 8 bytes each.
    pub(crate) regs: i32,
    pub(crate) pc: i32,
    /// PSTATE.NZCV, in bits 31..28 of a u64.
    pub(crate) nzcv: i32,
    /// The direct-page table's pointer ([`DirectPages`]).
    pub(crate) direct: i32,
    /// The decode cache's block epoch (a u64).
    pub(crate) block_epoch: i32,
}

impl CpuLayout {
    /// The layout of these offsets, each as an IR load/store offset.
    pub(crate) const fn new(
        regs: usize,
        pc: usize,
        nzcv: usize,
        direct: usize,
        block_epoch: usize,
    ) -> CpuLayout {
        CpuLayout {
            regs: field(regs),
            pc: field(pc),
            nzcv: field(nzcv),
            direct: field(direct + DirectPages::TABLE),
            block_epoch: field(block_epoch),
        }
    }
}

pub(super) const CALLS_EXEC: i32 = field(offset_of!(Calls, exec));
pub(super) const CALLS_FILL: i32 = field(offset_of!(Calls, fill));
pub(super) const CALLS_LEFT: i32 = field(offset_of!(Calls, left));
pub(super) const CALLS_MISS: i32 = field(offset_of!(Calls, miss));

/// A field offset as an IR load/store offset.
pub(crate) const fn field(offset: usize) -> i32 {
    assert!(offset < 1 << 16, "a field compiled code uses is far in");
    #[allow(clippy::cast_possible_truncation, clippy::cast_possible_wrap)]
    let offset = offset as i32;
    offset
}

/// Memory flags of compiled code's accesses to the `Cpu`, its direct-page
/// table and [`Calls`]: valid and aligned, so they never trap.
pub(super) fn flags() -> MemFlagsData {
    MemFlagsData::trusted()
}

/// Memory flags of a guest RAM access through a host page: valid, so it never
/// traps, but only as aligned as the host page is.
pub(super) fn ram_flags() -> MemFlagsData {
    MemFlagsData::new().with_notrap()
}

/// Where one way out of a compiled block (a branch or its fall-through, to a
/// fixed place on the same page) went last time: the block there, valid while
/// the decode cache's blocks are those of `epoch`. Compiled code reads it and
/// jumps straight to `code`; the run loop fills it when it found the block.
#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub(crate) struct Link {
    /// The block's code (null: not linked yet).
    code: *const u8,
    epoch: u64,
    /// The block's length.
    len: u64,
}

pub(super) const LINK_CODE: i32 = field(offset_of!(Link, code));
pub(super) const LINK_EPOCH: i32 = field(offset_of!(Link, epoch));
pub(super) const LINK_LEN: i32 = field(offset_of!(Link, len));

impl Link {
    /// A link to compiled block `f`, of `len` ops, valid in block epoch `epoch`.
    pub(crate) fn new(f: BlockFn, epoch: u64, len: usize) -> Link {
        Link {
            code: f.0,
            epoch,
            len: len as u64,
        }
    }

    pub(super) const EMPTY: Link = Link {
        code: std::ptr::null(),
        epoch: 0,
        len: 0,
    };
}
