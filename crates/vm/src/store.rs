//! The store factory: the backing store a configuration describes.

use crate::config::{StoreKind, VmConfig};
use crate::error::VmError;
use apf_mem::store::{
    Backend, FaultConfig, FaultyStore, FileStore, FileStoreConfig, Latency, LatencyStore, MemStore,
    NbdConfig, NbdStore, NbdUrl, Store,
};
use std::time::Duration;

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
        StoreKind::Nbd => Box::new(open_nbd(config, pages)?),
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

/// The NBD store: its export must hold all of guest RAM.
fn open_nbd(config: &VmConfig, pages: u32) -> Result<NbdStore, VmError> {
    let text = config
        .store
        .url
        .as_deref()
        .ok_or(crate::config::ConfigError::NbdUrlMissing)?;
    connect_nbd(text, config, false, pages, config.ram.0)
}

/// Connects to the NBD export at `url` with the configuration's queue depth and
/// timeouts, refusing one smaller than `min_size` bytes. The client gives up
/// reconnecting well within the memory system's I/O timeout, so a server that
/// stays away fails the I/O with the client's error rather than a timeout.
pub(crate) fn connect_nbd(
    url: &str,
    config: &VmConfig,
    read_only: bool,
    pages: u32,
    min_size: u64,
) -> Result<NbdStore, VmError> {
    let s = &config.store;
    let url = NbdUrl::parse(url).map_err(crate::config::ConfigError::from)?;
    let mut cfg = NbdConfig::new(url);
    cfg.queue_depth = usize::try_from(s.queue_depth).unwrap_or(1);
    cfg.capacity = pages;
    cfg.read_only = read_only;
    cfg.reconnect_timeout = s.reconnect_window();
    cfg.io_timeout = (s.io_timeout.0 / 6).clamp(Duration::from_millis(100), Duration::from_secs(5));
    let store = NbdStore::connect(&cfg)?;
    if store.export_size() < min_size {
        return Err(VmError::NbdTooSmall {
            url: cfg.url.to_string(),
            export: store.export_size(),
            ram: min_size,
        });
    }
    Ok(store)
}
