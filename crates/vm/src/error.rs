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
    Snapshot(#[from] crate::snapshot::SnapshotError),
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
        }
    }
}
