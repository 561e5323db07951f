//! apf-host: the hypervisor side of apf (DESIGN §2, §4, §5).

pub mod apf;
pub mod waker;
