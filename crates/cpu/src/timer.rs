//! The generic timer's PE side: the virtual count and the EL1 virtual and
//! physical timers. Virtual time advances with retired instructions, so a run is
//! reproducible; CNTPCT equals CNTVCT (the virtual offset is 0).

use std::num::NonZeroU32;

use serde::{Deserialize, Serialize};

/// How fast virtual time runs: `ticks` counter ticks per `instructions` retired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeScale {
    /// Counter ticks...
    pub ticks: NonZeroU32,
    /// ...per this many retired instructions.
    pub instructions: NonZeroU32,
}

impl Default for TimeScale {
    /// One tick per instruction.
    fn default() -> TimeScale {
        TimeScale {
            ticks: NonZeroU32::MIN,
            instructions: NonZeroU32::MIN,
        }
    }
}

/// The output levels of the two EL1 timers (to the GIC as PPIs 27 and 30).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TimerLines {
    /// Virtual timer (CNTV), PPI 27.
    pub virt: bool,
    /// EL1 physical timer (CNTP), PPI 30.
    pub phys: bool,
}

/// CNTx_CTL_EL0 bits.
pub(crate) const CTL_ENABLE: u64 = 1 << 0;
pub(crate) const CTL_IMASK: u64 = 1 << 1;
pub(crate) const CTL_ISTATUS: u64 = 1 << 2;

/// The two EL1 timers and the counter as a snapshot holds them. The count is
/// kept as a value, not as an offset, so it survives a different [`TimeScale`]
/// on the restoring side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimerState {
    /// CNTVCT_EL0 when the state was taken.
    pub counter: u64,
    /// CNTV_CTL_EL0's ENABLE and IMASK (ISTATUS is derived).
    pub virt_ctl: u64,
    /// CNTV_CVAL_EL0.
    pub virt_cval: u64,
    /// CNTP_CTL_EL0's ENABLE and IMASK.
    pub phys_ctl: u64,
    /// CNTP_CVAL_EL0.
    pub phys_cval: u64,
}

/// Which of the two timers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TimerId {
    Virt = 0,
    Phys = 1,
}

/// Counter and timer state.
#[derive(Debug, Clone)]
pub(crate) struct Timer {
    scale: TimeScale,
    /// Ticks added by [`Timer::advance`] (idle skips).
    offset: u64,
    ctl: [u64; 2],
    cval: [u64; 2],
}

impl Timer {
    pub(crate) fn new(scale: TimeScale) -> Timer {
        Timer {
            scale,
            offset: 0,
            ctl: [0; 2],
            cval: [0; 2],
        }
    }

    /// The saved form, `retired` instructions after reset.
    pub(crate) fn save(&self, retired: u64) -> TimerState {
        TimerState {
            counter: self.count(retired),
            virt_ctl: self.ctl[0],
            virt_cval: self.cval[0],
            phys_ctl: self.ctl[1],
            phys_cval: self.cval[1],
        }
    }

    /// Installs `state` so that the count is `state.counter` at `retired`
    /// instructions; the scale stays this timer's own.
    pub(crate) fn restore(&mut self, state: &TimerState, retired: u64) {
        self.offset = 0;
        self.offset = state.counter.wrapping_sub(self.count(retired));
        self.set_ctl(TimerId::Virt, state.virt_ctl);
        self.set_ctl(TimerId::Phys, state.phys_ctl);
        self.cval = [state.virt_cval, state.phys_cval];
    }

    /// The count after `retired` instructions.
    pub(crate) fn count(&self, retired: u64) -> u64 {
        let ticks = u128::from(retired) * u128::from(self.scale.ticks.get())
            / u128::from(self.scale.instructions.get());
        // Wrapping like a 64-bit counter.
        #[allow(clippy::cast_possible_truncation)]
        let ticks = ticks as u64;
        self.offset.wrapping_add(ticks)
    }

    pub(crate) fn advance(&mut self, ticks: u64) {
        self.offset = self.offset.wrapping_add(ticks);
    }

    /// How many more instructions must retire (from `retired`) before the count
    /// reaches `deadline`; `None` if it already has.
    pub(crate) fn instructions_until(&self, retired: u64, deadline: u64) -> Option<u64> {
        if self.count(retired) >= deadline {
            return None;
        }
        let ticks_needed = u128::from(deadline.wrapping_sub(self.offset));
        let t = u128::from(self.scale.ticks.get());
        let i = u128::from(self.scale.instructions.get());
        let total = (ticks_needed * i).div_ceil(t);
        let delta = total.saturating_sub(u128::from(retired)).max(1);
        Some(u64::try_from(delta).unwrap_or(u64::MAX))
    }

    pub(crate) fn ctl(&self, id: TimerId, count: u64) -> u64 {
        let ctl = self.ctl[id as usize];
        if ctl & CTL_ENABLE != 0 && count >= self.cval[id as usize] {
            ctl | CTL_ISTATUS
        } else {
            ctl
        }
    }

    pub(crate) fn set_ctl(&mut self, id: TimerId, v: u64) {
        self.ctl[id as usize] = v & (CTL_ENABLE | CTL_IMASK);
    }

    pub(crate) fn cval(&self, id: TimerId) -> u64 {
        self.cval[id as usize]
    }

    pub(crate) fn set_cval(&mut self, id: TimerId, v: u64) {
        self.cval[id as usize] = v;
    }

    /// TVAL reads as the low 32 bits of CVAL - count (upper bits zero).
    pub(crate) fn tval(&self, id: TimerId, count: u64) -> u64 {
        self.cval[id as usize].wrapping_sub(count) & 0xFFFF_FFFF
    }

    /// Writing TVAL sets CVAL to count + the sign-extended low 32 bits.
    pub(crate) fn set_tval(&mut self, id: TimerId, count: u64, v: u64) {
        // Sign-extending the 32-bit TVAL is the architected behaviour.
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_possible_wrap,
            clippy::cast_sign_loss
        )]
        let delta = i64::from(v as u32 as i32) as u64;
        self.cval[id as usize] = count.wrapping_add(delta);
    }

    fn fires(&self, id: TimerId) -> bool {
        self.ctl[id as usize] & (CTL_ENABLE | CTL_IMASK) == CTL_ENABLE
    }

    pub(crate) fn lines(&self, count: u64) -> TimerLines {
        TimerLines {
            virt: self.fires(TimerId::Virt) && count >= self.cval[0],
            phys: self.fires(TimerId::Phys) && count >= self.cval[1],
        }
    }

    /// The earliest CVAL of an enabled, unmasked timer.
    pub(crate) fn next_deadline(&self) -> Option<u64> {
        [TimerId::Virt, TimerId::Phys]
            .into_iter()
            .filter(|&id| self.fires(id))
            .map(|id| self.cval[id as usize])
            .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scale(ticks: u32, instructions: u32) -> TimeScale {
        TimeScale {
            ticks: NonZeroU32::new(ticks).unwrap(),
            instructions: NonZeroU32::new(instructions).unwrap(),
        }
    }

    #[test]
    fn deadline_distance_respects_the_scale() {
        let t = Timer::new(scale(1, 4));
        // count = retired / 4: count 10 needs 40 instructions.
        assert_eq!(t.instructions_until(0, 10), Some(40));
        assert_eq!(t.instructions_until(39, 10), Some(1));
        assert_eq!(t.instructions_until(40, 10), None);
        let fast = Timer::new(scale(3, 1));
        // count = 3 * retired: 10 is reached at 4 instructions (12).
        assert_eq!(fast.instructions_until(0, 10), Some(4));
        assert_eq!(fast.count(4), 12);
    }

    #[test]
    fn tval_is_signed_32_bits() {
        let mut t = Timer::new(TimeScale::default());
        t.set_tval(TimerId::Virt, 1000, 0xFFFF_FFFF_FFFF_FFF6); // -10
        assert_eq!(t.cval(TimerId::Virt), 990);
        assert_eq!(t.tval(TimerId::Virt, 1000), 0xFFFF_FFF6);
    }

    #[test]
    fn lines_follow_enable_mask_and_count() {
        let mut t = Timer::new(TimeScale::default());
        t.set_cval(TimerId::Virt, 100);
        t.set_ctl(TimerId::Virt, CTL_ENABLE);
        assert!(!t.lines(99).virt);
        assert!(t.lines(100).virt);
        assert_eq!(t.ctl(TimerId::Virt, 100), CTL_ENABLE | CTL_ISTATUS);
        t.set_ctl(TimerId::Virt, CTL_ENABLE | CTL_IMASK);
        assert!(!t.lines(100).virt);
        // ISTATUS ignores IMASK.
        assert_eq!(
            t.ctl(TimerId::Virt, 100),
            CTL_ENABLE | CTL_IMASK | CTL_ISTATUS
        );
        assert_eq!(t.next_deadline(), None);
    }
}
