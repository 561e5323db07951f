//! Which PPIs may carry page-ready.

/// The default page-ready INTID.
pub const APF_DEFAULT_PPI: u32 = 17;
/// First PPI INTID.
pub const PPI_FIRST: u32 = 16;
/// Last PPI INTID.
pub const PPI_LAST: u32 = 31;
/// PMU overflow interrupt.
pub const PPI_PMU: u32 = 23;
/// GIC virtual CPU interface maintenance interrupt.
pub const PPI_GIC_MAINTENANCE: u32 = 25;
/// EL2 physical timer.
pub const PPI_TIMER_HYP: u32 = 26;
/// EL1 virtual timer.
pub const PPI_TIMER_VIRT: u32 = 27;
/// EL2 virtual timer.
pub const PPI_TIMER_HYP_VIRT: u32 = 28;
/// Secure EL1 physical timer.
pub const PPI_TIMER_SECURE: u32 = 29;
/// EL1 physical timer.
pub const PPI_TIMER_PHYS: u32 = 30;

/// Whether `intid` may be used for page-ready: a PPI (16..=31) that is not one of
/// the architected timer, PMU or GIC maintenance interrupts.
pub fn is_valid_apf_ppi(intid: u64) -> bool {
    let Ok(intid) = u32::try_from(intid) else {
        return false;
    };
    (PPI_FIRST..=PPI_LAST).contains(&intid)
        && !matches!(
            intid,
            PPI_PMU
                | PPI_GIC_MAINTENANCE
                | PPI_TIMER_HYP
                | PPI_TIMER_VIRT
                | PPI_TIMER_HYP_VIRT
                | PPI_TIMER_SECURE
                | PPI_TIMER_PHYS
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_free_ppis_are_valid() {
        let valid: [u64; 9] = [16, 17, 18, 19, 20, 21, 22, 24, 31];
        for intid in 0..64u64 {
            assert_eq!(
                is_valid_apf_ppi(intid),
                valid.contains(&intid),
                "INTID {intid}"
            );
        }
        assert!(!is_valid_apf_ppi(u64::MAX));
        assert!(
            !is_valid_apf_ppi((1 << 32) | 17),
            "high bits must not alias"
        );
    }
}
