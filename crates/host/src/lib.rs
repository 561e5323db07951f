//! apf-host: the hypervisor side of apf (DESIGN §2, §4, §5).

// Only apf-mem needs unsafe code (guest RAM, io_uring); everything else is
// safe Rust, and the compiler keeps it so.
#![forbid(unsafe_code)]

pub mod apf;
pub mod gic;
pub mod machine;
pub mod psci;
pub mod regs;
pub mod sdei;
pub mod smccc;
pub mod uart;
pub mod vcpu;
pub mod waker;
