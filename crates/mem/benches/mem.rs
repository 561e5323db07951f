//! apf-mem benchmarks:
//! - `random_read_4k/{store,pipeline}/dN`: the swap file's own random 4 KiB read
//!   rate at queue depth N, beside the fetch pipeline's rate (asynchronous fetches,
//!   install and reclaim included) at the same depth, on the same file. After the
//!   criterion runs, a side-by-side pass prints the pipeline/store ratio per depth.
//! - `tlb/*`: the cost of a TLB hit.
//! - `reclaim/*`: how fast the reclaimer evicts (dirty pages written, never-written
//!   pages dropped) while a vCPU keeps touching new pages.
//!
//! The swap file goes in `APF_BENCH_DIR` (default: the system temp directory).

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use apf_abi::Gpa;
use apf_mem::store::{FileStore, FileStoreConfig, Slot, Store};
use apf_mem::store_bench::{PipelineBench, fill, pipeline_random_fetches, prepare, random_io};
use apf_mem::{AccessSize, GuestMemory, MemConfig, Resolve, VcpuTlb};
use criterion::{Criterion, Throughput, criterion_group};

const BASE: u64 = 0x4000_0000;
const PAGE: u64 = 4096;
/// Pages of guest RAM (and of prepared raw-read slots): 256 MiB, far more than
/// the budget, so random fetches really read the device.
const RAM_PAGES: u64 = 65536;
const BUDGET_PAGES: u64 = 2048;
const DEPTHS: [usize; 3] = [1, 8, 32];
/// The vCPU's guest work between two syncs (an interpreter slice).
const SLICE: Duration = Duration::ZERO;

fn pipeline(depth: usize, duration: Duration, max_fetches: u64, seed: u64) -> PipelineBench {
    PipelineBench {
        base_gfn: BASE >> 12,
        pages: RAM_PAGES,
        depth,
        slice: SLICE,
        duration,
        max_fetches,
        seed,
    }
}

fn file_store() -> FileStore {
    let path = std::env::var_os("APF_BENCH_DIR").map(Into::into);
    FileStore::open(&FileStoreConfig {
        path,
        queue_depth: 32,
        ..Default::default()
    })
    .expect("swap file")
}

struct Setup {
    raw: FileStore,
    slots: Vec<Slot>,
    mem: Arc<GuestMemory>,
}

fn setup() -> Setup {
    let raw = file_store();
    let slots = prepare(&raw, u32::try_from(RAM_PAGES).unwrap(), 32).expect("prepare raw slots");
    let store = file_store();
    eprintln!("store: {}", store.info());
    let cfg = MemConfig::new(BASE, RAM_PAGES * PAGE, BUDGET_PAGES * PAGE);
    let mem = GuestMemory::new(cfg, Box::new(store)).expect("guest memory");
    fill(&mem, BASE, RAM_PAGES).expect("fill guest memory");
    Setup { raw, slots, mem }
}

fn random_read(c: &mut Criterion, s: &Setup) {
    let mut g = c.benchmark_group("random_read_4k");
    g.throughput(Throughput::Elements(1))
        .sample_size(10)
        .measurement_time(Duration::from_secs(3));
    for d in DEPTHS {
        g.bench_function(format!("store/d{d}"), |b| {
            b.iter_custom(|n| {
                random_io(&s.raw, &s.slots, d, Duration::MAX, n, n, 0)
                    .unwrap()
                    .elapsed
            })
        });
        g.bench_function(format!("pipeline/d{d}"), |b| {
            b.iter_custom(|n| {
                pipeline_random_fetches(&s.mem, &pipeline(d, Duration::MAX, n, n))
                    .unwrap()
                    .elapsed
            })
        });
    }
    g.finish();
}

/// Side by side, same run, same file: the ratio the issue asks for.
fn ratios(s: &Setup) {
    let t = Duration::from_secs(2);
    for d in DEPTHS {
        let raw = random_io(&s.raw, &s.slots, d, t, u64::MAX, 7, 0).unwrap();
        let pipe = pipeline_random_fetches(&s.mem, &pipeline(d, t, u64::MAX, 7)).unwrap();
        println!(
            "depth {d:>2}: store {:>8.0} IOPS, pipeline {:>8.0} fetches/s, ratio {:.2}",
            raw.iops(),
            pipe.iops(),
            pipe.iops() / raw.iops()
        );
    }
    let m = s.mem.metrics();
    println!(
        "pipeline reads: {} (p50 <= {} us, p99 <= {} us); reclaim: {} batches, {} clean drops, {} written",
        m.io.pages_read,
        m.read_latency.quantile_upper_us(0.5),
        m.read_latency.quantile_upper_us(0.99),
        m.evict.batches,
        m.evict.dropped_clean,
        m.evict.written
    );
}

fn mapped(mem: &Arc<GuestMemory>, write: bool) -> VcpuTlb {
    let mut tlb = mem.vcpu_tlb();
    for p in 0..64 {
        assert_eq!(tlb.resolve(Gpa(BASE + p * PAGE), write), Resolve::Mapped);
    }
    tlb
}

fn tlb_hits(c: &mut Criterion) {
    let store = apf_mem::store::MemStore::new(16, 1);
    let mem =
        GuestMemory::new(MemConfig::new(BASE, 64 * PAGE, 64 * PAGE), Box::new(store)).unwrap();
    let mut g = c.benchmark_group("tlb");
    g.throughput(Throughput::Elements(64));
    let mut tlb = mapped(&mem, true);
    g.bench_function("read_hit_x64", |b| {
        b.iter(|| {
            let mut sum = 0u64;
            for p in 0..64 {
                sum = sum.wrapping_add(
                    tlb.read(black_box(BASE + p * PAGE + 8), AccessSize::Double)
                        .unwrap(),
                );
            }
            sum
        })
    });
    g.bench_function("write_hit_x64", |b| {
        b.iter(|| {
            for p in 0..64 {
                tlb.write(black_box(BASE + p * PAGE + 16), AccessSize::Word, p)
                    .unwrap();
            }
        })
    });
    g.bench_function("fetch_insn_hit_x64", |b| {
        b.iter(|| {
            let mut x = 0u32;
            for p in 0..64 {
                x ^= tlb.fetch_insn(black_box(BASE + p * PAGE + 4)).unwrap();
            }
            x
        })
    });
    g.finish();
}

/// Touches `n` never-touched pages (writing or reading each) with a budget of
/// 1024 pages; returns the time, which is the reclaimer's eviction rate bound.
fn touch_fresh(n: u64, write: bool) -> Duration {
    let budget = 1024;
    let cfg = MemConfig::new(BASE, (n + budget) * PAGE, budget * PAGE);
    let mem = GuestMemory::new(cfg, Box::new(file_store())).unwrap();
    let mut tlb = mem.vcpu_tlb();
    let start = std::time::Instant::now();
    for p in 0..n + budget {
        let gpa = BASE + p * PAGE;
        loop {
            let hit = if write {
                tlb.write(gpa, AccessSize::Double, p).is_ok()
            } else {
                tlb.read(gpa, AccessSize::Double).is_ok()
            };
            if hit {
                break;
            }
            match tlb.resolve(Gpa(gpa), write) {
                Resolve::Mapped => {}
                Resolve::NeedsFetch(gfn) => tlb.fetch_blocking(gfn).unwrap(),
                Resolve::NotRam => unreachable!(),
            }
        }
        if p % 32 == 0 {
            tlb.sync();
        }
    }
    start.elapsed()
}

fn reclaim(c: &mut Criterion) {
    let mut g = c.benchmark_group("reclaim");
    g.throughput(Throughput::Elements(1))
        .sample_size(10)
        .measurement_time(Duration::from_secs(2));
    g.bench_function("evict_dirty_page", |b| {
        b.iter_custom(|n| touch_fresh(n, true))
    });
    g.bench_function("drop_zero_page", |b| {
        b.iter_custom(|n| touch_fresh(n, false))
    });
    g.finish();
}

fn io_benches(c: &mut Criterion) {
    let s = setup();
    random_read(c, &s);
    ratios(&s);
}

criterion_group!(benches, tlb_hits, reclaim, io_benches);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
}
