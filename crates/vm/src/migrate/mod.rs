//! Live migration between two apf processes over TCP (DESIGN §9: page sources
//! are stores; VM state is data).
//!
//! The source (`apf run --migrate-to`) runs the VM and serves its memory as an
//! NBD export; the destination (`apf listen`) copies it into a local mirror
//! and resumes the VM from the state the source sends at the switch-over.
//!
//! - **pre-copy**: rounds of copying while the guest runs, each of the pages
//!   written since the one before (a dirty log, as KVM's), until few change;
//!   then the stop, and the last changed pages are copied before the
//!   destination's first instruction.
//! - **post-copy**: the stop at once; the destination starts with every page
//!   still at the source. A first touch reads the page over NBD (a demand
//!   fault, which APF hides), while a copier brings the rest on a connection
//!   of its own, so a demand read never waits behind it.
//! - **hybrid**: one pre-copy round, then post-copy.
//!
//! The source stops being needed when the destination's mirror holds every
//! page; until then it stays up as a page server. The control stream
//! (`wire.rs`) is request and reply, each request idempotent, so a broken
//! connection is reopened by the source and the request sent again. Page
//! reads over NBD survive a broken connection the same way (the NBD client
//! reconnects and re-sends, for a third of `store.io_timeout`, at most 10 s).

mod control;
mod destination;
mod source;
mod wire;

pub use destination::{Landed, ListenOptions, Listener};
pub use source::{EXPORT, MigrateTo, Round, SourceReport, run_migrating};
pub use wire::{MigrateMode, PROTOCOL};

use crate::config::VmConfig;
use crate::monitor::Live;

/// Units of work each process has done so far, as the guest's results say.
fn work_done(config: &VmConfig, live: &Live<'_>) -> Vec<u64> {
    live.boot_block().map_or_else(Vec::new, |b| {
        b.results
            .iter()
            .take(config.processes.len())
            .map(|r| r.progress)
            .collect()
    })
}
