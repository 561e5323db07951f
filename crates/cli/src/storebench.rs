//! `apf store-bench`: the store's raw random 4 KiB read rate per queue depth, the
//! limit the fetch pipeline is held against (DESIGN §8), or with
//! `--write-ratio` a mix of random reads and writes (page-ins beside write-backs).
//! The store is built from the same configuration a run uses (file, O_DIRECT,
//! added latency).

use crate::table::{Table, count};
use crate::vmargs::{VmArgs, VmArgsError, ensure_store_dir};
use apf_mem::store_bench::{BenchError, prepare, random_io};
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
    /// Percentage of the random I/Os that are writes (0 to 100): 0 reads only.
    #[arg(long, value_name = "PCT", default_value_t = 0, value_parser = parse_write_ratio)]
    write_ratio: u32,
}

fn parse_write_ratio(text: &str) -> Result<u32, String> {
    text.trim()
        .parse()
        .ok()
        .filter(|&pct| pct <= 100)
        .ok_or_else(|| format!("`{text}`: use a percentage of writes from 0 to 100"))
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
    /// I/Os (reads and writes) per second.
    pub iops: f64,
    /// Writes per second, of them.
    pub writes_per_s: f64,
}

/// Measures every depth in `depths` on the store `config` describes, with
/// `write_pct` of the I/Os writes; returns the store's description and the rates.
pub fn measure(
    config: &VmConfig,
    depths: &[usize],
    time: Duration,
    pages: u32,
    write_pct: u32,
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
        let r = random_io(
            store.as_ref(),
            &slots,
            depth,
            time,
            u64::MAX,
            config.seed,
            write_pct,
        )?;
        #[allow(clippy::cast_precision_loss)] // counts far below 2^52
        let write_share = r.writes as f64 / r.ios.max(1) as f64;
        rates.push(DepthRate {
            depth: r.depth,
            iops: r.iops(),
            writes_per_s: r.iops() * write_share,
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
    let (store, rates) = measure(&config, &args.depths, args.time.0, pages, args.write_ratio)?;
    let what = if args.write_ratio == 0 {
        "random 4KiB reads".to_string()
    } else {
        format!("random 4KiB I/O, {}% writes,", args.write_ratio)
    };
    println!(
        "store: {store}; {what} over {} pages",
        count(u64::from(pages))
    );
    let rate = if args.write_ratio == 0 {
        "reads/s"
    } else {
        "reads+writes/s"
    };
    let mut t = Table::new(&["queue depth", rate, "mean latency", "vs depth 1"]);
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
        let (store, rates) = measure(&config, &[1, 8], Duration::from_millis(50), 64, 0).unwrap();
        assert!(store.contains("200µs"), "{store}");
        assert_eq!(rates.iter().map(|r| r.depth).collect::<Vec<_>>(), [1, 8]);
        assert!(rates.iter().all(|r| r.iops > 0.0), "{rates:?}");
        assert!(rates.iter().all(|r| r.writes_per_s == 0.0), "{rates:?}");
        let (_, mixed) = measure(&config, &[8], Duration::from_millis(50), 64, 50).unwrap();
        let share = mixed[0].writes_per_s / mixed[0].iops;
        assert!((0.2..0.8).contains(&share), "{mixed:?}");
    }

    #[test]
    fn a_write_ratio_out_of_range_says_what_to_change() {
        assert_eq!(parse_write_ratio("40"), Ok(40));
        for bad in ["101", "x", "-1"] {
            assert_eq!(
                parse_write_ratio(bad),
                Err(format!("`{bad}`: use a percentage of writes from 0 to 100"))
            );
        }
    }

    #[test]
    fn a_zero_depth_is_refused() {
        let e = measure(&VmConfig::default(), &[0], Duration::ZERO, 1, 0).unwrap_err();
        assert_eq!(e.to_string(), "queue depth 0: use 1 to 4096");
    }
}
