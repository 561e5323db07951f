//! The store factory: the backing store a configuration describes.

use crate::config::{StoreKind, VmConfig};
use crate::error::VmError;
use apf_mem::store::{
    Backend, FaultConfig, FaultyStore, FileStore, FileStoreConfig, Latency, LatencyStore, MemStore,
    Store,
};

/// The backing store `config` describes: the file or memory store, with the added
/// latency and injected faults it asks for.
pub fn open_store(config: &VmConfig) -> Result<Box<dyn Store>, VmError> {
    let s = &config.store;
    let pages = u32::try_from(config.ram.0 / apf_abi::PAGE_SIZE).unwrap_or(u32::MAX);
    let depth = usize::try_from(s.queue_depth).unwrap_or(1);
    let base: Box<dyn Store> = match s.kind {
        StoreKind::File => Box::new(FileStore::open(&FileStoreConfig {
            path: s.path.clone(),
            queue_depth: depth,
            direct: s.direct,
            backend: Backend::Auto,
            capacity: pages,
        })?),
        StoreKind::Mem => Box::new(MemStore::new(pages, depth)),
    };
    let delayed: Box<dyn Store> = if s.latency.0.is_zero() {
        base
    } else if s.latency_sigma == 0.0 {
        Box::new(LatencyStore::new(base, Latency::Fixed(s.latency.0)))
    } else {
        Box::new(LatencyStore::new(
            base,
            Latency::LogNormal {
                median: s.latency.0,
                sigma: s.latency_sigma,
                seed: config.seed,
            },
        ))
    };
    let faults = FaultConfig {
        read_error: s.read_error_rate,
        lost: s.lost_completion_rate,
        duplicate: s.duplicate_completion_rate,
        ..FaultConfig::default()
    };
    Ok(if faults == FaultConfig::default() {
        delayed
    } else {
        Box::new(FaultyStore::new(
            delayed,
            FaultConfig {
                seed: config.seed,
                ..faults
            },
        ))
    })
}
