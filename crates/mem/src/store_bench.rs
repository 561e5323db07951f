//! Raw store benchmarks: the device limit the fetch pipeline is compared with
//! (`apf store-bench` and the criterion benches use these).

use std::time::{Duration, Instant};

use crate::ram::{GuestRam, PAGE};
use crate::store::rng::Rng;
use crate::store::{IoBuf, IoKind, IoRequest, Slot, Store, StoreFull};

/// Why a benchmark could not run.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// Buffers could not be mapped.
    #[error("cannot map {pages} buffer pages: {source}")]
    Buffers {
        /// Pages asked for.
        pages: usize,
        /// Why.
        source: std::io::Error,
    },
    /// The store has no room for the test data.
    #[error("preparing {want} slots: {source}")]
    Full {
        /// Slots wanted.
        want: u32,
        /// The store's error.
        source: StoreFull,
    },
    /// An I/O failed.
    #[error("{0} I/O errors while {1}")]
    Io(u64, &'static str),
    /// Nothing to read.
    #[error("no slots to read")]
    NoSlots,
}

/// A random-I/O run's result.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BenchResult {
    /// I/Os completed, reads and writes.
    pub ios: u64,
    /// Of them, writes.
    pub writes: u64,
    /// Wall time.
    pub elapsed: Duration,
    /// Queue depth used.
    pub depth: usize,
}

impl BenchResult {
    /// I/Os (reads and writes) per second.
    pub fn iops(&self) -> f64 {
        #[allow(clippy::cast_precision_loss)]
        let ios = self.ios as f64;
        ios / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Writes `count` pages of non-zero data to fresh slots, `depth` at a time, and
/// returns the slots (so reads of them are real device reads, not file holes).
pub fn prepare(store: &dyn Store, count: u32, depth: usize) -> Result<Vec<Slot>, BenchError> {
    let depth = depth.clamp(1, store.info().queue_depth.max(1));
    let bufs = GuestRam::new(depth * PAGE).map_err(|source| BenchError::Buffers {
        pages: depth,
        source,
    })?;
    let mut slots = Vec::with_capacity(count as usize);
    for _ in 0..count {
        slots.push(store.alloc_slot().map_err(|source| BenchError::Full {
            want: count,
            source,
        })?);
    }
    for b in 0..depth {
        let fill = [0xA5u8; PAGE];
        // SAFETY: buffer page `b` is ours and valid for 4096 bytes.
        unsafe { crate::ram::copy_to_shared(&fill, bufs.page_ptr(b)) };
    }
    let mut errors = 0;
    let mut done = Vec::new();
    for chunk in slots.chunks(depth) {
        let reqs: Vec<IoRequest> = chunk
            .iter()
            .enumerate()
            .map(|(i, &slot)| request(&bufs, i, i as u64, IoKind::Write, slot))
            .collect();
        store.submit(&reqs);
        let mut got = 0;
        while got < reqs.len() {
            done.clear();
            got += store.complete(&mut done, Some(Duration::from_millis(100)));
            errors += done.iter().filter(|c| c.result.is_err()).count() as u64;
        }
    }
    if errors > 0 {
        return Err(BenchError::Io(errors, "preparing"));
    }
    Ok(slots)
}

fn request(bufs: &GuestRam, buf: usize, tag: u64, kind: IoKind, slot: Slot) -> IoRequest {
    let ptr = std::ptr::NonNull::new(bufs.page_ptr(buf)).expect("mapping is non-null");
    // SAFETY: each buffer page is used by one request at a time: a buffer is only
    // resubmitted after its previous request's completion was collected, and the
    // mapping outlives the benchmark's requests (it waits for all of them).
    let buf = unsafe { IoBuf::new(ptr) };
    IoRequest {
        tag,
        kind,
        slot,
        buf,
    }
}

/// Random 4 KiB I/O on `slots` with `depth` requests in flight until `duration`
/// passes or `max_ios` complete (seeded, so runs issue the same sequence):
/// reads, except `write_pct` of the requests (0..=100) are 4 KiB writes to a
/// random slot instead, the mix of page-ins and write-backs the fetch pipeline
/// puts on the store.
pub fn random_io(
    store: &dyn Store,
    slots: &[Slot],
    depth: usize,
    duration: Duration,
    max_ios: u64,
    seed: u64,
    write_pct: u32,
) -> Result<BenchResult, BenchError> {
    if slots.is_empty() {
        return Err(BenchError::NoSlots);
    }
    let depth = depth.clamp(1, store.info().queue_depth.max(1));
    let bufs = GuestRam::new(depth * PAGE).map_err(|source| BenchError::Buffers {
        pages: depth,
        source,
    })?;
    let mut rng = Rng::new(seed);
    let mut pick = || {
        let r = rng.next_u64();
        let slot = slots[usize::try_from(r % slots.len() as u64).unwrap_or(0)];
        // The high bits, independent of the slot's (low) ones for any slot count
        // below 2^32.
        let kind = if (r >> 32) % 100 < u64::from(write_pct) {
            IoKind::Write
        } else {
            IoKind::Read
        };
        (kind, slot)
    };
    let mut kinds = vec![IoKind::Read; depth];
    let start = Instant::now();
    let first: Vec<IoRequest> = (0..depth)
        .map(|b| {
            let (kind, slot) = pick();
            kinds[b] = kind;
            request(&bufs, b, b as u64, kind, slot)
        })
        .collect();
    store.submit(&first);
    let mut in_flight = depth;
    let (mut ios, mut writes, mut errors) = (0u64, 0u64, 0u64);
    let mut done = Vec::new();
    while in_flight > 0 {
        done.clear();
        store.complete(&mut done, Some(Duration::from_millis(100)));
        let stop = start.elapsed() >= duration || ios >= max_ios;
        let mut again = Vec::new();
        for c in &done {
            in_flight -= 1;
            let b = usize::try_from(c.tag).expect("tags are buffer indices");
            if c.result.is_ok() {
                ios += 1;
                writes += u64::from(kinds[b] == IoKind::Write);
            } else {
                errors += 1;
            }
            if !stop {
                let (kind, slot) = pick();
                kinds[b] = kind;
                again.push(request(&bufs, b, c.tag, kind, slot));
            }
        }
        in_flight += again.len();
        if !again.is_empty() {
            store.submit(&again);
        }
    }
    let elapsed = start.elapsed();
    if errors > 0 {
        let doing = if write_pct == 0 {
            "reading"
        } else {
            "reading and writing"
        };
        return Err(BenchError::Io(errors, doing));
    }
    Ok(BenchResult {
        ios,
        writes,
        elapsed,
        depth,
    })
}

/// A sink that counts completions (and failures).
#[derive(Debug, Default)]
struct CountingSink {
    done: std::sync::atomic::AtomicU64,
    failed: std::sync::atomic::AtomicU64,
}

impl crate::FetchSink for CountingSink {
    fn fetch_done(&self, _cookie: u64, result: Result<(), crate::FetchError>) {
        use std::sync::atomic::Ordering::Relaxed;
        if result.is_err() {
            self.failed.fetch_add(1, Relaxed);
        }
        self.done.fetch_add(1, Relaxed);
    }
}

/// Writes a stamp into every page of `mem` through the host path, so that all
/// but a budget's worth of them end up in the store (the pipeline benchmark's
/// starting point).
pub fn fill(
    mem: &crate::GuestMemory,
    ram_base: u64,
    pages: u64,
) -> Result<(), crate::HostAccessError> {
    for p in 0..pages {
        mem.write_bytes(
            apf_abi::Gpa(ram_base + p * apf_abi::PAGE_SIZE),
            &p.to_le_bytes(),
        )?;
    }
    Ok(())
}

/// How [`pipeline_random_fetches`] runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PipelineBench {
    /// First guest frame of the range fetched from.
    pub base_gfn: u64,
    /// Pages in the range.
    pub pages: u64,
    /// Fetches outstanding.
    pub depth: usize,
    /// Guest work between two [`crate::VcpuTlb::sync`] calls (a busy loop
    /// standing in for an interpreter slice); zero polls continuously.
    pub slice: Duration,
    /// Stop after this long...
    pub duration: Duration,
    /// ...or this many fetches.
    pub max_fetches: u64,
    /// Seed of the page sequence.
    pub seed: u64,
}

/// The fetch pipeline's rate: asynchronous fetches of random pages with `depth`
/// outstanding, issued as a vCPU running other work would issue them (it
/// collects completions between slices with [`crate::VcpuTlb::sync`]). Pages
/// found resident are skipped, not counted. Each fetch is a real store read plus
/// install, and the reclaim that frees its frame.
pub fn pipeline_random_fetches(
    mem: &std::sync::Arc<crate::GuestMemory>,
    b: &PipelineBench,
) -> Result<BenchResult, BenchError> {
    let PipelineBench {
        base_gfn,
        pages,
        depth,
        slice,
        duration,
        max_fetches,
        seed,
    } = *b;
    use std::sync::atomic::Ordering::Relaxed;
    let sink = std::sync::Arc::new(CountingSink::default());
    let mut tlb = mem.vcpu_tlb();
    let mut rng = Rng::new(seed);
    let depth = depth.max(1) as u64;
    let (mut started, mut timed_done) = (0u64, 0u64);
    let start = Instant::now();
    let mut elapsed = Duration::ZERO;
    let mut turn = 0u32;
    loop {
        let done = sink.done.load(Relaxed);
        turn = turn.wrapping_add(1);
        // Reading the clock costs more than a poll: look at it now and then.
        let time_up = turn.is_multiple_of(64) && start.elapsed() >= duration;
        if elapsed.is_zero() && (done >= max_fetches || time_up) {
            elapsed = start.elapsed();
            timed_done = done;
        }
        if !elapsed.is_zero() {
            if done == started {
                break;
            }
        } else {
            while started - done < depth {
                let gfn = base_gfn + rng.next_u64() % pages;
                match mem.start_fetch(apf_abi::Gfn(gfn), sink.clone(), gfn) {
                    crate::FetchStart::Started | crate::FetchStart::Joined => started += 1,
                    crate::FetchStart::AlreadyResident | crate::FetchStart::NotRam => {}
                }
            }
        }
        tlb.sync();
        if !slice.is_zero() {
            let t = Instant::now();
            while t.elapsed() < slice {
                std::hint::spin_loop();
            }
        }
    }
    let failed = sink.failed.load(Relaxed);
    if failed > 0 {
        return Err(BenchError::Io(failed, "fetching"));
    }
    Ok(BenchResult {
        ios: timed_done,
        writes: 0,
        elapsed,
        depth: usize::try_from(depth).unwrap_or(usize::MAX),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemStore;

    #[test]
    fn random_io_writes_its_share_and_reads_only_at_zero() {
        let store = MemStore::new(64, 8);
        let slots = prepare(&store, 64, 8).unwrap();
        let n = 4000;
        for (write_pct, range) in [(0, 0..1), (50, 1800..2200), (100, n..n + 17)] {
            let r = random_io(&store, &slots, 8, Duration::MAX, n, 3, write_pct).unwrap();
            // The requests in flight when the count is reached complete and count
            // too: up to two batches of the depth.
            assert!((n..=n + 16).contains(&r.ios), "write={write_pct}: {r:?}");
            let writes = if write_pct == 100 { r.ios } else { r.writes };
            assert!(range.contains(&writes), "write={write_pct}: {r:?}");
            assert_eq!(r.writes == r.ios, write_pct == 100, "{r:?}");
        }
        let reads = random_io(&store, &slots, 8, Duration::MAX, 100, 3, 0).unwrap();
        assert_eq!(reads.writes, 0);
    }
}
