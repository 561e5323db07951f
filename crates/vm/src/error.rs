//! Why a VM could not be built or run, and whose fault that is.

use apf_abi::platform::IMAGE_LOAD_ADDR;
use thiserror::Error;

/// Why a VM could not be built or run.
#[derive(Debug, Error)]
pub enum VmError {
    /// The configuration cannot work.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// The swap file could not be opened.
    #[error("store: {0}")]
    Store(#[from] apf_mem::store::StoreOpenError),
    /// The NBD store could not be opened.
    #[error("store: {0}")]
    Nbd(#[from] apf_mem::store::NbdError),
    /// The NBD export cannot hold guest RAM.
    #[error(
        "store: the NBD export {url} holds {export} bytes, less than guest RAM ({ram} bytes): use a larger export or less ram"
    )]
    NbdTooSmall {
        /// The export.
        url: String,
        /// Its size.
        export: u64,
        /// Guest RAM.
        ram: u64,
    },
    /// Guest memory could not be set up.
    #[error("guest memory: {0}")]
    Memory(#[from] apf_mem::MemError),
    /// The image has no bytes: nothing would run.
    #[error("the image is empty: give a flat AArch64 binary (loaded at {IMAGE_LOAD_ADDR:#x})")]
    EmptyImage,
    /// The image does not fit in guest RAM.
    #[error("the image is {len} bytes but RAM above {IMAGE_LOAD_ADDR:#x} holds {room}")]
    ImageTooBig {
        /// Image size.
        len: u64,
        /// Room.
        room: u64,
    },
    /// A Linux guest cannot be booted.
    #[error(transparent)]
    Linux(#[from] crate::linux::LinuxError),
    /// Writing the image or boot block into guest memory failed.
    #[error("loading the guest: {0}")]
    Load(String),
    /// A thread could not be started.
    #[error("starting a vCPU thread: {0}")]
    Thread(#[from] std::io::Error),
    /// The GIC model refused the configuration.
    #[error("interrupt controller: {0}")]
    Gic(String),
    /// A vCPU thread panicked.
    #[error("vCPU {0} panicked")]
    VcpuPanicked(usize),
    /// A snapshot could not be taken or read.
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    /// A migration could not start or finish.
    #[error(transparent)]
    Migrate(#[from] MigrateError),
}

/// Whose fault a [`VmError`] is: what the caller should change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// The configuration or the image is wrong (or names a store path that
    /// cannot be used): change the input.
    Input,
    /// The host could not build the VM: a mapping, a thread, io_uring, loading
    /// guest memory, the interrupt controller.
    Host,
    /// The VM was built and ran, and the run failed (a vCPU panicked).
    Run,
}

impl VmError {
    /// Whose fault this error is.
    pub fn class(&self) -> ErrorClass {
        use apf_mem::MemError;
        use apf_mem::store::StoreOpenError;
        match self {
            VmError::Config(_) | VmError::EmptyImage | VmError::ImageTooBig { .. } => {
                ErrorClass::Input
            }
            // A swap file that cannot be made or hold a page is a store path
            // to change; io_uring and the I/O threads are the host's.
            VmError::Store(StoreOpenError::Create { .. } | StoreOpenError::Probe { .. }) => {
                ErrorClass::Input
            }
            VmError::Store(StoreOpenError::QueueDepth(_)) => ErrorClass::Input,
            // A server that is not there, refuses the export or is too small:
            // a URL to change.
            VmError::Nbd(apf_mem::store::NbdError::Thread(_)) => ErrorClass::Host,
            VmError::Nbd(_) | VmError::NbdTooSmall { .. } => ErrorClass::Input,
            VmError::Store(StoreOpenError::IoUring { .. } | StoreOpenError::Threads(..)) => {
                ErrorClass::Host
            }
            VmError::Memory(
                MemError::RamSize(_) | MemError::RamBase { .. } | MemError::Budget(_),
            ) => ErrorClass::Input,
            VmError::Memory(MemError::Map { .. } | MemError::Spawn(..))
            | VmError::Load(_)
            | VmError::Thread(_)
            | VmError::Gic(_) => ErrorClass::Host,
            // A device tree that cannot be built is apf's bug, not the input's.
            VmError::Linux(crate::linux::LinuxError::Fdt(_)) => ErrorClass::Host,
            VmError::Linux(_) => ErrorClass::Input,
            VmError::VcpuPanicked(_) => ErrorClass::Run,
            VmError::Snapshot(e) if e.is_input() => ErrorClass::Input,
            VmError::Snapshot(_) => ErrorClass::Host,
            VmError::Migrate(e) if e.is_input() => ErrorClass::Input,
            VmError::Migrate(_) => ErrorClass::Host,
        }
    }
}

/// Why a snapshot could not be written or read. Every message names the
/// directory and what to do.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// The directory (or its state file) is missing or unreadable.
    #[error(
        "snapshot {dir}: cannot read {file}: {source} (give a directory `apf snapshot --out` wrote)"
    )]
    Missing {
        /// The directory.
        dir: std::path::PathBuf,
        /// The file.
        file: &'static str,
        /// Why.
        source: std::io::Error,
    },
    /// The state file does not start with an apf snapshot header.
    #[error("snapshot {dir}: the state file is not an apf snapshot (no `apf-snapshot` header)")]
    NotASnapshot {
        /// The directory.
        dir: std::path::PathBuf,
    },
    /// Written by an apf with another format.
    #[error("snapshot {dir}: format {found}, but this apf (version {}) reads format {reads}: restore it with the apf that took it", env!("CARGO_PKG_VERSION"))]
    Version {
        /// The directory.
        dir: std::path::PathBuf,
        /// Its format.
        found: String,
        /// The format this apf reads.
        reads: u32,
    },
    /// A file is shorter (or longer) than the state says.
    #[error(
        "snapshot {dir}: {file} is {found} bytes, the snapshot says {expected}: it is truncated or damaged"
    )]
    Truncated {
        /// The directory.
        dir: std::path::PathBuf,
        /// The file.
        file: &'static str,
        /// Its length.
        found: u64,
        /// The length it should have.
        expected: u64,
    },
    /// The state does not match its checksum.
    #[error(
        "snapshot {dir}: the state fails its checksum ({found:#010x}, expected {expected:#010x}): it is damaged"
    )]
    StateChecksum {
        /// The directory.
        dir: std::path::PathBuf,
        /// Recorded.
        expected: u32,
        /// Computed.
        found: u32,
    },
    /// The state is not valid JSON of this format.
    #[error("snapshot {dir}: the state cannot be read: {message}")]
    Parse {
        /// The directory.
        dir: std::path::PathBuf,
        /// serde's message.
        message: String,
    },
    /// A page of the memory image does not match its checksum.
    #[error("snapshot {dir}: page {page} of the memory image fails its checksum: it is damaged")]
    PageChecksum {
        /// The directory.
        dir: std::path::PathBuf,
        /// The page.
        page: u64,
    },
    /// The state is inconsistent with itself.
    #[error("snapshot {dir}: {what}")]
    Inconsistent {
        /// The directory.
        dir: std::path::PathBuf,
        /// What does not fit.
        what: String,
    },
    /// The output directory cannot be used.
    #[error("snapshot directory {dir}: {what}")]
    Output {
        /// The directory.
        dir: std::path::PathBuf,
        /// What to change.
        what: String,
    },
    /// Writing the snapshot failed.
    #[error("writing the snapshot to {dir}: {source}")]
    Write {
        /// The directory.
        dir: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

impl SnapshotError {
    /// Whether the snapshot (or the directory given) is the problem, rather
    /// than the host.
    pub fn is_input(&self) -> bool {
        !matches!(self, SnapshotError::Write { .. })
    }
}

/// Why a migration could not start or finish.
#[derive(Debug, Error)]
pub enum MigrateError {
    /// `--migrate-to` is not an address.
    #[error("--migrate-to {0}: not HOST:PORT of an `apf listen`")]
    Address(String),
    /// The destination is not there.
    #[error("cannot reach the destination at {addr}: {source}; is `apf listen` running there?")]
    Connect {
        /// The address.
        addr: String,
        /// Why.
        source: std::io::Error,
    },
    /// The destination answered, but not as an apf destination.
    #[error("the destination at {addr} is not an apf migration listener: {what}")]
    NotApf {
        /// The address.
        addr: String,
        /// What came back.
        what: String,
    },
    /// The destination refused.
    #[error("the destination at {addr} refused the migration: {why}")]
    Refused {
        /// The address.
        addr: String,
        /// Its reason.
        why: String,
    },
    /// The connection to the destination broke and did not come back in time.
    #[error(
        "lost the destination at {addr} during {during} and could not reconnect within {after:?}: {last}"
    )]
    Lost {
        /// The address.
        addr: String,
        /// What was going on.
        during: &'static str,
        /// How long reconnecting was tried.
        after: std::time::Duration,
        /// The last error.
        last: String,
    },
    /// The run ended before the migration time.
    #[error("the run ended after {ran:?}, before --migrate-at {at:?}: give a smaller --migrate-at")]
    EndedFirst {
        /// How long it ran.
        ran: std::time::Duration,
        /// The migration time.
        at: std::time::Duration,
    },
    /// The listening port cannot be used.
    #[error("cannot listen on {addr}: {source}: give another --port")]
    Listen {
        /// The address.
        addr: String,
        /// Why.
        source: std::io::Error,
    },
    /// The switch-over failed after the source stopped its vCPUs.
    #[error(
        "the switch-over to {addr} failed ({why}); the VM is stopped here and saved in {}: `apf restore` it if the destination did not start it",
        rescue.display()
    )]
    SwitchOver {
        /// The destination.
        addr: String,
        /// What happened.
        why: String,
        /// The snapshot directory the VM was saved to.
        rescue: std::path::PathBuf,
    },
    /// The source's page server could not start.
    #[error("cannot start the page server: {0}")]
    PageServer(std::io::Error),
    /// The dirty log cannot be kept (no pre-copy without it).
    #[error("pre-copy: {0}")]
    Precopy(String),
}

impl MigrateError {
    /// Whether the command line is the problem (rather than the network or
    /// the host).
    pub fn is_input(&self) -> bool {
        matches!(
            self,
            MigrateError::Address(_)
                | MigrateError::Connect { .. }
                | MigrateError::NotApf { .. }
                | MigrateError::Refused { .. }
                | MigrateError::EndedFirst { .. }
                | MigrateError::Listen { .. }
        )
    }
}
