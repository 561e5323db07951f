//! apf-host: the hypervisor side of apf (DESIGN §2, §4, §5).

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
