//! `apf store-bench`: the store's raw random 4 KiB read rate per queue depth, the
//! limit the fetch pipeline is held against (DESIGN §8). The store is built from
//! the same configuration a run uses (file, O_DIRECT, added latency).

use crate::table::{Table, count};
use crate::vmargs::{VmArgs, VmArgsError, ensure_store_dir};
use apf_mem::store_bench::{BenchError, prepare, random_reads};
use apf_vm::config::{Span, VmConfig};
use apf_vm::{VmError, open_store};
use clap::Args;
use std::time::Duration;
use thiserror::Error;

/// `apf store-bench`'s flags.
#[derive(Args, Debug)]
pub struct StoreBenchArgs {
    #[command(flatten)]
    vm: VmArgs,
    /// Queue depths to measure.
    #[arg(
        long,
        value_name = "LIST",
        value_delimiter = ',',
        default_value = "1,4,16,32,64"
    )]
    depths: Vec<usize>,
    /// How long to read at each depth.
    #[arg(long, value_name = "DURATION", default_value = "2s")]
    time: Span,
    /// Pages to write first and read back at random [default: the guest RAM's pages].
    #[arg(long, value_name = "N")]
    pages: Option<u32>,
}

/// Why the benchmark could not run.
#[derive(Debug, Error)]
pub enum StoreBenchError {
    /// The configuration is wrong.
    #[error(transparent)]
    Args(#[from] VmArgsError),
    /// The store could not be opened.
    #[error(transparent)]
    Open(#[from] VmError),
    /// The benchmark failed.
    #[error("store benchmark: {0}")]
    Bench(#[from] BenchError),
    /// A depth out of range.
    #[error("queue depth {0}: use 1 to 4096")]
    Depth(usize),
}

/// One depth's result.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DepthRate {
    /// Queue depth.
    pub depth: usize,
    /// Reads per second.
    pub iops: f64,
}

/// Measures every depth in `depths` on the store `config` describes; returns the
/// store's description and the rates.
pub fn measure(
    config: &VmConfig,
    depths: &[usize],
    time: Duration,
    pages: u32,
) -> Result<(String, Vec<DepthRate>), StoreBenchError> {
    if let Some(&bad) = depths.iter().find(|&&d| d == 0 || d > 4096) {
        return Err(StoreBenchError::Depth(bad));
    }
    let deepest = depths.iter().copied().max().unwrap_or(1);
    let mut config = config.clone();
    config.store.queue_depth = u32::try_from(deepest).unwrap_or(4096);
    let store = open_store(&config)?;
    let slots = prepare(store.as_ref(), pages, deepest)?;
    let mut rates = Vec::with_capacity(depths.len());
    for &depth in depths {
        let r = random_reads(store.as_ref(), &slots, depth, time, u64::MAX, config.seed)?;
        rates.push(DepthRate {
            depth: r.depth,
            iops: r.iops(),
        });
    }
    Ok((store.info().description, rates))
}

/// Runs `apf store-bench`.
pub fn run(args: &StoreBenchArgs) -> Result<(), StoreBenchError> {
    let config = args.vm.config_machine(VmConfig::default())?;
    if let Some(dir) = ensure_store_dir(&config)? {
        eprintln!("apf: created the store directory {}", dir.display());
    }
    let pages = args
        .pages
        .unwrap_or_else(|| u32::try_from(config.ram.0 / apf_abi::PAGE_SIZE).unwrap_or(u32::MAX));
    let (store, rates) = measure(&config, &args.depths, args.time.0, pages)?;
    println!(
        "store: {store}; random 4KiB reads over {} pages",
        count(u64::from(pages))
    );
    let mut t = Table::new(&["queue depth", "reads/s", "mean latency", "vs depth 1"]);
    let first = rates.first().map_or(0.0, |r| r.iops);
    for r in &rates {
        #[allow(clippy::cast_precision_loss)] // depths are small
        let mean_us = r.depth as f64 / r.iops.max(1e-9) * 1e6;
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)] // positive, rounded
        let iops = r.iops.round() as u64;
        t.row(vec![
            r.depth.to_string(),
            count(iops),
            format!("{mean_us:.0} µs"),
            format!("{:.2}×", r.iops / first.max(1e-9)),
        ]);
    }
    print!("{}", t.render());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use apf_vm::config::StoreKind;

    #[test]
    fn every_depth_asked_for_is_measured_on_the_configured_store() {
        let mut config = VmConfig::default();
        config.store.kind = StoreKind::Mem;
        config.store.latency = Span(Duration::from_micros(200));
        let (store, rates) = measure(&config, &[1, 8], Duration::from_millis(50), 64).unwrap();
        assert!(store.contains("200µs"), "{store}");
        assert_eq!(rates.iter().map(|r| r.depth).collect::<Vec<_>>(), [1, 8]);
        assert!(rates.iter().all(|r| r.iops > 0.0), "{rates:?}");
    }

    #[test]
    fn a_zero_depth_is_refused() {
        let e = measure(&VmConfig::default(), &[0], Duration::ZERO, 1).unwrap_err();
        assert_eq!(e.to_string(), "queue depth 0: use 1 to 4096");
    }
}
