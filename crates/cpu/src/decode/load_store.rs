//! Loads and stores: literal, pair, single register (immediate and register
//! offset), the LSE atomics and the exclusive/ordered class.

use apf_abi::esr::AccessSize;

use super::fields::{bit, bits, dst, r5, sext, size_of, sp, u8f};
use super::{Extend, LoadExt, Op, Writeback, reg};
use crate::bus::AtomicOp;

pub(super) fn load_store(i: u32) -> Op {
    if bit(i, 26) {
        return Op::SimdFp;
    }
    match bits(i, 29, 27) {
        0b001 if !bit(i, 24) => exclusive(i),
        0b011 if !bit(i, 24) => literal(i),
        0b101 => pair(i),
        0b111 => register(i),
        _ => Op::Undefined,
    }
}

fn literal(i: u32) -> Op {
    let offset = sext(bits(i, 23, 5), 19) << 2;
    let t = dst(r5(i, 0));
    let (size, ext) = match bits(i, 31, 30) {
        0b00 => (AccessSize::Word, LoadExt::Zero),
        0b01 => (AccessSize::Double, LoadExt::Zero),
        0b10 => (AccessSize::Word, LoadExt::Sign64),
        _ => return Op::Prefetch,
    };
    Op::LoadLiteral {
        t,
        offset,
        size,
        ext,
    }
}

fn pair(i: u32) -> Op {
    let load = bit(i, 22);
    let (size, sign) = match bits(i, 31, 30) {
        0b00 => (AccessSize::Word, false),
        0b01 if load && bits(i, 24, 23) != 0 => (AccessSize::Word, true),
        0b10 => (AccessSize::Double, false),
        _ => return Op::Undefined,
    };
    let wb = match bits(i, 24, 23) {
        0b01 => Writeback::Post,
        0b11 => Writeback::Pre,
        _ => Writeback::None,
    };
    let scale = if size == AccessSize::Double { 3 } else { 2 };
    let offset = sext(bits(i, 21, 15), 7) << scale;
    let (rt, rt2, n) = (r5(i, 0), r5(i, 10), sp(r5(i, 5)));
    if load {
        Op::LoadPair {
            t: dst(rt),
            t2: dst(rt2),
            n,
            offset,
            size,
            sign,
            wb,
        }
    } else {
        Op::StorePair {
            t: rt,
            t2: rt2,
            n,
            offset,
            size,
            wb,
        }
    }
}

/// What a (size, opc) pair of the single-register classes does.
enum Access {
    Store,
    Load(LoadExt),
    Prefetch,
}

fn access_kind(size: u32, opc: u32, prefetch_allowed: bool) -> Option<Access> {
    match opc {
        0b00 => Some(Access::Store),
        0b01 => Some(Access::Load(LoadExt::Zero)),
        0b10 if size == 3 => prefetch_allowed.then_some(Access::Prefetch),
        0b10 => Some(Access::Load(LoadExt::Sign64)),
        _ if size <= 1 => Some(Access::Load(LoadExt::Sign32)),
        _ => None,
    }
}

fn register(i: u32) -> Op {
    let size_bits = bits(i, 31, 30);
    let size = size_of(size_bits);
    let opc = bits(i, 23, 22);
    let rt = r5(i, 0);
    let n = sp(r5(i, 5));
    let access = |offset: i32, wb: Writeback, prefetch_allowed: bool, unprivileged: bool| -> Op {
        match access_kind(size_bits, opc, prefetch_allowed) {
            Some(Access::Store) => Op::Store {
                t: rt,
                n,
                offset,
                size,
                wb,
                unprivileged,
            },
            Some(Access::Load(ext)) => Op::Load {
                t: dst(rt),
                n,
                offset,
                size,
                ext,
                wb,
                unprivileged,
            },
            Some(Access::Prefetch) => Op::Prefetch,
            None => Op::Undefined,
        }
    };
    let single = |offset: i32, wb: Writeback, prefetch_allowed: bool| -> Op {
        access(offset, wb, prefetch_allowed, false)
    };
    if bit(i, 24) {
        // imm12 scaled by the size: at most 4095 << 3.
        #[allow(clippy::cast_possible_wrap)]
        let offset = (bits(i, 21, 10) << size_bits) as i32;
        return single(offset, Writeback::None, true);
    }
    if !bit(i, 21) {
        let offset = sext(bits(i, 20, 12), 9);
        return match bits(i, 11, 10) {
            0b00 => single(offset, Writeback::None, true),
            0b01 => single(offset, Writeback::Post, false),
            // LDTR/STTR: checked with EL0 permissions.
            0b10 => access(offset, Writeback::None, false, true),
            _ => single(offset, Writeback::Pre, false),
        };
    }
    match bits(i, 11, 10) {
        0b10 => {
            let option = bits(i, 15, 13);
            if option & 0b010 == 0 {
                return Op::Undefined;
            }
            let ext = Extend(u8f(option));
            let shift = if bit(i, 12) { u8f(size_bits) } else { 0 };
            let m = r5(i, 16);
            match access_kind(size_bits, opc, true) {
                Some(Access::Store) => Op::StoreRegOffset {
                    t: rt,
                    n,
                    m,
                    ext,
                    shift,
                    size,
                },
                Some(Access::Load(sign)) => Op::LoadRegOffset {
                    t: dst(rt),
                    n,
                    m,
                    ext,
                    shift,
                    size,
                    sign,
                },
                Some(Access::Prefetch) => Op::Prefetch,
                None => Op::Undefined,
            }
        }
        0b00 => atomic(i, size),
        _ => Op::Undefined,
    }
}

fn atomic(i: u32, size: AccessSize) -> Op {
    let rs = r5(i, 16);
    let rt = r5(i, 0);
    let n = sp(r5(i, 5));
    let op = match (bit(i, 15), bits(i, 14, 12)) {
        (false, 0b000) => AtomicOp::Add,
        (false, 0b001) => AtomicOp::Clear,
        (false, 0b010) => AtomicOp::Eor,
        (false, 0b011) => AtomicOp::Set,
        (false, 0b100) => AtomicOp::SignedMax,
        (false, 0b101) => AtomicOp::SignedMin,
        (false, 0b110) => AtomicOp::UnsignedMax,
        (false, 0b111) => AtomicOp::UnsignedMin,
        (true, 0b000) => AtomicOp::Swap,
        (true, 0b100) if bit(i, 23) && !bit(i, 22) && rs == 31 => {
            return Op::LoadAcquire {
                t: dst(rt),
                n,
                size,
            };
        }
        _ => return Op::Undefined,
    };
    Op::Atomic {
        s: rs,
        t: dst(rt),
        n,
        size,
        op,
    }
}

/// Load/store exclusive, load-acquire/store-release and compare-and-swap. The
/// should-be-one fields (Rs, Rt2 where unused) are not checked: behaving as if
/// they were ones is one of the permitted CONSTRAINED UNPREDICTABLE outcomes.
fn exclusive(i: u32) -> Op {
    let size_bits = bits(i, 31, 30);
    let size = size_of(size_bits);
    let load = bit(i, 22);
    let o0 = bit(i, 15);
    let rs = r5(i, 16);
    let rt = r5(i, 0);
    let rt2 = r5(i, 10);
    let n = sp(r5(i, 5));
    match (bit(i, 23), bit(i, 21)) {
        // Sizes 0 and 1 of the pair class are CASP (W and X pairs).
        (false, true) if size_bits < 2 => {
            if rs & 1 != 0 || rt & 1 != 0 {
                return Op::Undefined;
            }
            Op::Cas {
                s: rs,
                t: rt,
                n,
                size: if bit(i, 30) {
                    AccessSize::Double
                } else {
                    AccessSize::Word
                },
                pair: true,
            }
        }
        (false, pair) => {
            if load {
                Op::LoadExclusive {
                    t: dst(rt),
                    t2: if pair { dst(rt2) } else { reg::SINK },
                    n,
                    size,
                    pair,
                    acquire: o0,
                }
            } else {
                Op::StoreExclusive {
                    s: dst(rs),
                    t: rt,
                    t2: if pair { rt2 } else { reg::ZR },
                    n,
                    size,
                    pair,
                    release: o0,
                }
            }
        }
        (true, false) => {
            if load {
                Op::LoadAcquire {
                    t: dst(rt),
                    n,
                    size,
                }
            } else {
                Op::StoreRelease { t: rt, n, size }
            }
        }
        (true, true) => Op::Cas {
            s: rs,
            t: rt,
            n,
            size,
            pair: false,
        },
    }
}
