//! The guest workloads' checksums, recomputed on the host.
//!
//! Each guest process (`guest/workloads.h`, run by the built-in guest and by the
//! Linux init) keeps a running checksum over the values it reads and computes, and
//! reports `(units done, checksum)` as it goes.
//! [`Replay`] repeats the same steps over a sparse model of the process's memory
//! (only the words it touched), so the checksum after `n` units costs `O(n)` and
//! never a pass over the working set. [`default_config`] mirrors the run the
//! guest makes when no boot block is given.
//!
//! The algorithms, shared with the C side:
//! - all: `checksum = rng = seed` at the start; `rng_next` is splitmix64.
//! - `scan`: `r = rng_next()`, page `r % pages`, word `r >> 55`; `v = word;
//!   checksum = fold(checksum, v + page)`; the access also writes `word = v +
//!   (r | 1)` when `write_pct` is 100 or `mix64(r) % 100 < write_pct`.
//! - `calc`: `checksum = fold(checksum, crunch(checksum, 64))`.
//! - `kv`: a table of the largest power of two `cap` entries that fits; keys
//!   `1..=cap/4` start with `mix64(seed + key)`; a unit draws `r`, key
//!   `1 + (r >> 8) % (cap/2)`, reads its value `old` (0 if absent), stores
//!   `old + (r | 1)` when `r & 7 == 0`, and folds `old + key`.
//! - `build`: `x = crunch(checksum, 32)`; from page `rng_next() % pages`, eight
//!   consecutive pages (wrapping) each get word `(x >> 7j) & 511` read (folded) and
//!   incremented by `x`; then `x` is folded.

use apf_abi::PAGE_SIZE;
use apf_abi::boot::{BootBlock, ProcResult, ProcSpec, WRITE_PCT_ALL, workload};
use std::collections::HashMap;

const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;
const CALC_ROUNDS: u64 = 64;
const BUILD_ROUNDS: u64 = 32;
const BUILD_PAGES: u64 = 8;
const WORDS_PER_PAGE: u64 = PAGE_SIZE / 8;
const KV_ENTRY_BYTES: u64 = 16;
/// Smallest `kv` working set: a table of 4 entries.
const KV_MIN_BYTES: u64 = 4 * KV_ENTRY_BYTES;

/// Why a checksum cannot be computed for a process spec.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReferenceError {
    /// The spec names no known workload.
    #[error("unknown workload kind {0}")]
    UnknownKind(u32),
    /// The working set is smaller than the workload needs (the guest refuses it too).
    #[error("{kind} needs a working set of at least {min} bytes, the spec gives {mem_bytes}")]
    TooSmall {
        /// Workload name.
        kind: &'static str,
        /// Bytes in the spec.
        mem_bytes: u64,
        /// Bytes needed.
        min: u64,
    },
    /// A scan's write percentage above 100 (the guest refuses it too).
    #[error("write percentage {0} is above 100")]
    WritePct(u32),
    /// More units were reported than the spec asked for.
    #[error("progress {progress} is beyond the spec's {work} units of work")]
    BeyondWork {
        /// Units reported.
        progress: u64,
        /// Units in the spec.
        work: u64,
    },
}

/// Why a reported result does not match the reference.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// The spec or the progress is outside what the reference can replay.
    #[error(transparent)]
    Reference(#[from] ReferenceError),
    /// The guest's checksum differs from the host's.
    #[error("{kind} checksum after {progress} units is {got:#018x}, expected {expected:#018x}")]
    Mismatch {
        /// Workload name.
        kind: &'static str,
        /// Units reported.
        progress: u64,
        /// Checksum reported by the guest.
        got: u64,
        /// Checksum computed here.
        expected: u64,
    },
}

/// The name the guest prints for a workload kind.
pub fn kind_name(kind: u32) -> Option<&'static str> {
    match kind {
        workload::SCAN => Some("scan"),
        workload::CALC => Some("calc"),
        workload::KV => Some("kv"),
        workload::BUILD => Some("build"),
        _ => None,
    }
}

/// The checksum a process described by `spec` reports after `progress` units.
pub fn expected_checksum(spec: &ProcSpec, progress: u64) -> Result<u64, ReferenceError> {
    if spec.work != 0 && progress > spec.work {
        return Err(ReferenceError::BeyondWork {
            progress,
            work: spec.work,
        });
    }
    let mut replay = Replay::new(spec)?;
    for _ in 0..progress {
        replay.step();
    }
    Ok(replay.checksum())
}

/// Checks a process's reported checksum against the reference for its progress.
pub fn verify(spec: &ProcSpec, result: &ProcResult) -> Result<(), VerifyError> {
    let expected = expected_checksum(spec, result.progress)?;
    if result.checksum == expected {
        Ok(())
    } else {
        Err(VerifyError::Mismatch {
            kind: kind_name(spec.kind).unwrap_or("?"),
            progress: result.progress,
            got: result.checksum,
            expected,
        })
    }
}

/// The run the guest makes without a boot block (`default_procs` in `guest/main.c`).
pub fn default_config() -> BootBlock {
    const MIB: u64 = 1 << 20;
    let specs = [
        (workload::SCAN, 0, 8 * MIB, 200_000, 0x5ca0_0000_0000_0001),
        (workload::CALC, 0, 0, 4_000, 0xca1c_0000_0000_0002),
        (workload::SCAN, 1, 8 * MIB, 200_000, 0x5ca0_0000_0000_0003),
        (workload::CALC, 1, 0, 4_000, 0xca1c_0000_0000_0004),
    ];
    let mut block = BootBlock {
        nr_vcpus: 2,
        nr_procs: 4,
        ram_size: 256 * MIB,
        ..BootBlock::default()
    };
    for (slot, (kind, vcpu, mem_bytes, work, seed)) in block.procs.iter_mut().zip(specs) {
        *slot = ProcSpec {
            kind,
            vcpu,
            mem_bytes,
            work,
            seed,
            write_pct: WRITE_PCT_ALL,
            reserved: 0,
        };
    }
    block
}

/// A process replayed unit by unit.
#[derive(Debug, Clone)]
pub struct Replay {
    kind: Kind,
    rng: u64,
    checksum: u64,
    units: u64,
}

#[derive(Debug, Clone)]
enum Kind {
    /// The memory, and the percentage of accesses that write.
    Scan(SparseMemory, u32),
    Calc,
    Kv(KvModel),
    Build(SparseMemory),
}

impl Replay {
    /// Starts a replay of `spec` at zero units.
    pub fn new(spec: &ProcSpec) -> Result<Replay, ReferenceError> {
        let too_small = |kind: &'static str, min: u64| ReferenceError::TooSmall {
            kind,
            mem_bytes: spec.mem_bytes,
            min,
        };
        let kind = match spec.kind {
            workload::SCAN if spec.mem_bytes < PAGE_SIZE => {
                return Err(too_small("scan", PAGE_SIZE));
            }
            workload::BUILD if spec.mem_bytes < PAGE_SIZE => {
                return Err(too_small("build", PAGE_SIZE));
            }
            workload::KV if spec.mem_bytes < KV_MIN_BYTES => {
                return Err(too_small("kv", KV_MIN_BYTES));
            }
            workload::SCAN if spec.write_pct > WRITE_PCT_ALL => {
                return Err(ReferenceError::WritePct(spec.write_pct));
            }
            workload::SCAN => Kind::Scan(SparseMemory::new(spec.mem_bytes), spec.write_pct),
            workload::BUILD => Kind::Build(SparseMemory::new(spec.mem_bytes)),
            workload::KV => Kind::Kv(KvModel::new(spec.mem_bytes, spec.seed)),
            workload::CALC => Kind::Calc,
            other => return Err(ReferenceError::UnknownKind(other)),
        };
        Ok(Replay {
            kind,
            rng: spec.seed,
            checksum: spec.seed,
            units: 0,
        })
    }

    /// Does one unit of work.
    pub fn step(&mut self) {
        let c = self.checksum;
        self.checksum = match &mut self.kind {
            Kind::Scan(mem, write_pct) => {
                let r = rng_next(&mut self.rng);
                let page = r % mem.pages;
                let word = page * WORDS_PER_PAGE + (r >> 55);
                let v = if scan_writes(r, *write_pct) {
                    mem.add(word, r | 1)
                } else {
                    mem.get(word)
                };
                fold(c, v.wrapping_add(page))
            }
            Kind::Calc => fold(c, crunch(c, CALC_ROUNDS)),
            Kind::Kv(kv) => {
                let r = rng_next(&mut self.rng);
                let key = 1 + (r >> 8) % kv.keyspace();
                let old = kv.get(key);
                if r & 7 == 0 {
                    kv.values.insert(key, old.wrapping_add(r | 1));
                }
                fold(c, old.wrapping_add(key))
            }
            Kind::Build(mem) => {
                let x = crunch(c, BUILD_ROUNDS);
                let first = rng_next(&mut self.rng) % mem.pages;
                let mut c = c;
                for j in 0..BUILD_PAGES {
                    let page = (first + j) % mem.pages;
                    let word = (x >> (7 * j)) & (WORDS_PER_PAGE - 1);
                    c = fold(c, mem.add(page * WORDS_PER_PAGE + word, x));
                }
                fold(c, x)
            }
        };
        self.units += 1;
    }

    /// The checksum after the units done so far.
    pub fn checksum(&self) -> u64 {
        self.checksum
    }

    /// Units done so far.
    pub fn units(&self) -> u64 {
        self.units
    }
}

/// The words a `scan` or `build` process has written; all others are still 0.
#[derive(Debug, Clone)]
struct SparseMemory {
    pages: u64,
    words: HashMap<u64, u64>,
}

impl SparseMemory {
    fn new(mem_bytes: u64) -> SparseMemory {
        SparseMemory {
            pages: mem_bytes / PAGE_SIZE,
            words: HashMap::new(),
        }
    }

    /// A word's value.
    fn get(&self, word: u64) -> u64 {
        self.words.get(&word).copied().unwrap_or(0)
    }

    /// Adds `delta` to a word and returns the value it had.
    fn add(&mut self, word: u64, delta: u64) -> u64 {
        let slot = self.words.entry(word).or_insert(0);
        let old = *slot;
        *slot = old.wrapping_add(delta);
        old
    }
}

/// What a `kv` table maps each key to. The probe layout does not change any value
/// read, so a map of the keys written since the prefill is enough.
#[derive(Debug, Clone)]
struct KvModel {
    cap: u64,
    seed: u64,
    values: HashMap<u64, u64>,
}

impl KvModel {
    fn new(mem_bytes: u64, seed: u64) -> KvModel {
        KvModel {
            cap: kv_capacity(mem_bytes),
            seed,
            values: HashMap::new(),
        }
    }

    fn keyspace(&self) -> u64 {
        self.cap / 2
    }

    fn get(&self, key: u64) -> u64 {
        match self.values.get(&key) {
            Some(&v) => v,
            None if key <= self.cap / 4 => mix64(self.seed.wrapping_add(key)),
            None => 0,
        }
    }
}

/// Entries of a `kv` table in `mem_bytes`: the largest power of two that fits.
fn kv_capacity(mem_bytes: u64) -> u64 {
    1 << (mem_bytes / KV_ENTRY_BYTES).ilog2()
}

/// Whether the scan access drawn as `r` writes (`workload_scan_writes`).
fn scan_writes(r: u64, write_pct: u32) -> bool {
    write_pct >= WRITE_PCT_ALL || mix64(r) % 100 < u64::from(write_pct)
}

fn mix64(z: u64) -> u64 {
    let z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    let z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn rng_next(state: &mut u64) -> u64 {
    *state = state.wrapping_add(GOLDEN);
    mix64(*state)
}

fn fold(c: u64, v: u64) -> u64 {
    let x = (c ^ v).wrapping_mul(0xFF51_AFD7_ED55_8CCD);
    x ^ (x >> 33)
}

fn crunch(mut x: u64, rounds: u64) -> u64 {
    for i in 0..rounds {
        x = (x ^ (x >> 31)).wrapping_mul(GOLDEN).wrapping_add(i);
    }
    x
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn spec(kind: u32, mem_bytes: u64, work: u64, seed: u64) -> ProcSpec {
        ProcSpec {
            kind,
            vcpu: 0,
            mem_bytes,
            work,
            seed,
            ..ProcSpec::default()
        }
    }

    /// A second, literal model of `guest/workloads.h`: dense memory, and the kv table
    /// with its real linear probing. It checks the sparse [`Replay`].
    struct Dense {
        kind: u32,
        mem: Vec<u64>,
        pages: u64,
        kv_cap: u64,
        write_pct: u32,
        rng: u64,
        checksum: u64,
    }

    impl Dense {
        fn new(s: &ProcSpec) -> Dense {
            let words = usize::try_from(s.mem_bytes / 8).unwrap();
            let mut d = Dense {
                kind: s.kind,
                mem: vec![0; words],
                pages: s.mem_bytes / PAGE_SIZE,
                kv_cap: 0,
                write_pct: s.write_pct,
                rng: s.seed,
                checksum: s.seed,
            };
            if s.kind == workload::KV {
                d.kv_cap = kv_capacity(s.mem_bytes);
                for key in 1..=d.kv_cap / 4 {
                    let e = d.kv_find(key);
                    d.mem[e] = key;
                    d.mem[e + 1] = mix64(s.seed.wrapping_add(key));
                }
            }
            d
        }

        fn at(word: u64) -> usize {
            usize::try_from(word).unwrap()
        }

        /// Index of the key word of `key`'s entry, or of the empty entry it would use.
        fn kv_find(&self, key: u64) -> usize {
            let bits = self.kv_cap.ilog2();
            let mut i = key.wrapping_mul(GOLDEN) >> (64 - bits);
            loop {
                let k = self.mem[Self::at(2 * i)];
                if k == key || k == 0 {
                    return Self::at(2 * i);
                }
                i = (i + 1) & (self.kv_cap - 1);
            }
        }

        fn step(&mut self) {
            let c = self.checksum;
            self.checksum = match self.kind {
                workload::SCAN => {
                    let r = rng_next(&mut self.rng);
                    let page = r % self.pages;
                    let w = Self::at(page * WORDS_PER_PAGE + (r >> 55));
                    let v = self.mem[w];
                    if self.write_pct == 100 || mix64(r) % 100 < u64::from(self.write_pct) {
                        self.mem[w] = v.wrapping_add(r | 1);
                    }
                    fold(c, v.wrapping_add(page))
                }
                workload::CALC => fold(c, crunch(c, CALC_ROUNDS)),
                workload::KV => {
                    let r = rng_next(&mut self.rng);
                    let key = 1 + (r >> 8) % (self.kv_cap / 2);
                    let e = self.kv_find(key);
                    let old = if self.mem[e] == key {
                        self.mem[e + 1]
                    } else {
                        0
                    };
                    if r & 7 == 0 {
                        self.mem[e] = key;
                        self.mem[e + 1] = old.wrapping_add(r | 1);
                    }
                    fold(c, old.wrapping_add(key))
                }
                workload::BUILD => {
                    let x = crunch(c, BUILD_ROUNDS);
                    let first = rng_next(&mut self.rng) % self.pages;
                    let mut c = c;
                    for j in 0..BUILD_PAGES {
                        let page = (first + j) % self.pages;
                        let w = Self::at(page * WORDS_PER_PAGE + ((x >> (7 * j)) & 511));
                        let v = self.mem[w];
                        self.mem[w] = v.wrapping_add(x);
                        c = fold(c, v);
                    }
                    fold(c, x)
                }
                other => panic!("kind {other}"),
            };
        }
    }

    fn small_spec() -> impl Strategy<Value = ProcSpec> {
        (
            1u32..=4,
            0u64..=8,
            64u64..=3 * PAGE_SIZE,
            any::<u64>(),
            prop_oneof![Just(0u32), Just(50), Just(100), 0u32..=100],
        )
            .prop_map(|(kind, pages, extra, seed, write_pct)| {
                let mem = if kind == workload::KV {
                    extra
                } else {
                    (pages + 1) * PAGE_SIZE
                };
                ProcSpec {
                    write_pct,
                    ..spec(kind, mem, 0, seed)
                }
            })
    }

    proptest! {
        #[test]
        fn sparse_replay_matches_a_dense_model(s in small_spec(), units in 0u64..3000) {
            let mut dense = Dense::new(&s);
            let mut sparse = Replay::new(&s).unwrap();
            for _ in 0..units {
                dense.step();
                sparse.step();
                prop_assert_eq!(sparse.checksum(), dense.checksum);
            }
            prop_assert_eq!(sparse.units(), units);
            prop_assert_eq!(expected_checksum(&s, units).unwrap(), dense.checksum);
        }
    }

    #[test]
    fn every_kind_starts_at_its_seed_and_moves_away() {
        for kind in 1..=4 {
            let s = spec(kind, 4 * PAGE_SIZE, 10, 0x1234);
            assert_eq!(expected_checksum(&s, 0), Ok(0x1234), "kind {kind}");
            let one = expected_checksum(&s, 1).unwrap();
            assert_ne!(one, 0x1234, "kind {kind}");
            let other_seed = expected_checksum(&spec(kind, 4 * PAGE_SIZE, 10, 0x1235), 1);
            assert_ne!(other_seed.unwrap(), one, "kind {kind}");
        }
    }

    #[test]
    fn scan_rereads_what_it_wrote() {
        // One page, so every unit reads a word of the same page: a checksum that
        // ignored the written values would equal the fresh-memory replay below.
        let s = spec(workload::SCAN, PAGE_SIZE, 0, 9);
        let mut replay = Replay::new(&s).unwrap();
        let mut forgetful = s.seed;
        let mut differed = false;
        for _ in 0..5000 {
            replay.step();
            forgetful = fold(forgetful, 0);
            differed |= replay.checksum() != forgetful;
        }
        assert!(differed);
        let Kind::Scan(mem, _) = &replay.kind else {
            unreachable!()
        };
        assert!(
            mem.words.len() > 400,
            "{} of 512 words touched",
            mem.words.len()
        );
    }

    /// The scan with `write_pct`, computed here with the formula written out: the
    /// checksum and the number of words it left changed.
    fn scan_by_hand(write_pct: u32, pages: u64, units: u64, seed: u64) -> (u64, usize) {
        let mut mem = HashMap::<u64, u64>::new();
        let (mut rng, mut checksum) = (seed, seed);
        for _ in 0..units {
            let r = rng_next(&mut rng);
            let page = r % pages;
            let word = mem.entry(page * WORDS_PER_PAGE + (r >> 55)).or_insert(0);
            let v = *word;
            if write_pct == 100 || mix64(r) % 100 < u64::from(write_pct) {
                *word = v.wrapping_add(r | 1);
            }
            checksum = fold(checksum, v.wrapping_add(page));
        }
        (checksum, mem.values().filter(|&&v| v != 0).count())
    }

    #[test]
    fn scan_write_ratio_0_50_100_mirrors_the_guest_formula() {
        let pages = 4;
        let units = 4000;
        let mut sums = Vec::new();
        for write_pct in [0, 50, 100] {
            let s = ProcSpec {
                write_pct,
                ..spec(workload::SCAN, pages * PAGE_SIZE, units, 0x77)
            };
            let (by_hand, written) = scan_by_hand(write_pct, pages, units, 0x77);
            assert_eq!(
                expected_checksum(&s, units),
                Ok(by_hand),
                "write={write_pct}"
            );
            sums.push(by_hand);
            match write_pct {
                // Reads only: memory stays zero, the checksum folds only pages.
                0 => assert_eq!(written, 0),
                // About half the 4,000 accesses write, over 2,048 words.
                // (2,048 × (1 − e^(−2000/2048)) ≈ 1,280 distinct words.)
                50 => assert!((1000..1550).contains(&written), "{written} words written"),
                // All 4,000: ≈ 1,760.
                _ => assert!(written > 1600, "{written} words written"),
            }
        }
        assert!(sums[0] != sums[1] && sums[1] != sums[2] && sums[0] != sums[2]);
        // write = 100 is the scan as it was before the ratio existed.
        let default = spec(workload::SCAN, pages * PAGE_SIZE, units, 0x77);
        assert_eq!(default.write_pct, 100);
        assert_eq!(expected_checksum(&default, units), Ok(sums[2]));
    }

    #[test]
    fn scan_write_ratio_above_100_is_refused() {
        let s = ProcSpec {
            write_pct: 101,
            ..spec(workload::SCAN, PAGE_SIZE, 1, 0)
        };
        assert_eq!(expected_checksum(&s, 0), Err(ReferenceError::WritePct(101)));
    }

    #[test]
    fn kv_table_is_sized_as_in_the_guest() {
        assert_eq!(kv_capacity(64), 4);
        assert_eq!(kv_capacity(127), 4);
        assert_eq!(kv_capacity(128), 8);
        assert_eq!(kv_capacity(1 << 20), 1 << 16);
    }

    #[test]
    fn bad_specs_are_refused() {
        assert_eq!(
            expected_checksum(&spec(9, 0, 0, 0), 0),
            Err(ReferenceError::UnknownKind(9))
        );
        assert_eq!(
            expected_checksum(&spec(workload::SCAN, 100, 0, 0), 0),
            Err(ReferenceError::TooSmall {
                kind: "scan",
                mem_bytes: 100,
                min: PAGE_SIZE
            })
        );
        assert!(matches!(
            expected_checksum(&spec(workload::KV, 63, 0, 0), 0),
            Err(ReferenceError::TooSmall { kind: "kv", .. })
        ));
        assert_eq!(
            expected_checksum(&spec(workload::CALC, 0, 5, 0), 6),
            Err(ReferenceError::BeyondWork {
                progress: 6,
                work: 5
            })
        );
        assert!(
            expected_checksum(&spec(workload::CALC, 0, 0, 0), 6).is_ok(),
            "work 0 is open-ended"
        );
    }

    #[test]
    fn verify_accepts_the_reference_and_rejects_anything_else() {
        let s = spec(workload::BUILD, 2 * PAGE_SIZE, 100, 77);
        let good = ProcResult {
            progress: 50,
            checksum: expected_checksum(&s, 50).unwrap(),
            ..ProcResult::default()
        };
        assert_eq!(verify(&s, &good), Ok(()));
        let bad = ProcResult {
            checksum: good.checksum ^ 1,
            ..good
        };
        assert!(matches!(
            verify(&s, &bad),
            Err(VerifyError::Mismatch { progress: 50, .. })
        ));
        let off_by_one = ProcResult {
            progress: 51,
            ..good
        };
        assert!(verify(&s, &off_by_one).is_err());
    }

    #[test]
    fn default_config_is_valid_for_the_reference() {
        let block = default_config();
        assert_eq!(block.nr_procs, 4);
        for s in &block.procs[..4] {
            assert!(Replay::new(s).is_ok());
            assert!(s.vcpu < block.nr_vcpus);
        }
    }
}
