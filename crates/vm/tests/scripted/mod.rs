//! The scripted test guests (`guest/tests/`, see its README): the images, the
//! vCPUs each boots, the checks each prints, and the reading of their console.
//!
//! An image prints one line per check, `OK <name> [info]` or
//! `FAIL <name> <got/want or why>`, then `DONE`, then powers off.

use std::collections::BTreeSet;
use std::path::PathBuf;

/// One test image and what it prints.
#[derive(Debug)]
pub struct Image {
    /// `guest/tests/<name>.bin`.
    pub name: &'static str,
    /// vCPUs it needs.
    pub vcpus: u32,
    /// Every check it prints on a platform that does what the spec says; all
    /// must be `OK`.
    pub checks: &'static [&'static str],
    /// Checks printed only when their event happens; when printed, `OK`.
    pub optional: &'static [&'static str],
    /// Lines printed instead of a group of checks when an earlier step failed
    /// (so a broken platform still gets a `FAIL` with a name).
    pub fallback: &'static [&'static str],
}

impl Image {
    /// The committed image.
    pub fn path(&self) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../guest/tests")
            .join(format!("{}.bin", self.name))
    }

    /// Whether the image can print a check of this name.
    pub fn knows(&self, name: &str) -> bool {
        [self.checks, self.optional, self.fallback]
            .iter()
            .any(|names| names.contains(&name))
    }
}

/// What a console says.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Console {
    /// Names of the `OK` lines.
    pub ok: BTreeSet<String>,
    /// Whole `FAIL` lines.
    pub failed: Vec<String>,
    /// Names of every check line, `OK` or `FAIL`, in order.
    pub names: Vec<String>,
    /// A `DONE` line was printed.
    pub done: bool,
}

/// Reads the check lines of a console; other lines are ignored.
pub fn parse(uart: &str) -> Console {
    let mut console = Console::default();
    for line in uart.lines().map(str::trim_end) {
        let mut words = line.split_whitespace();
        match (words.next(), words.next()) {
            (Some("OK"), Some(name)) => {
                console.ok.insert(name.to_string());
                console.names.push(name.to_string());
            }
            (Some("FAIL"), Some(name)) => {
                console.failed.push(line.to_string());
                console.names.push(name.to_string());
            }
            (Some("DONE"), None) => console.done = true,
            _ => {}
        }
    }
    console
}

impl Console {
    /// The verdict on a platform that must pass everything: no `FAIL`, every
    /// check `OK`, `DONE`, and no check the image does not know.
    pub fn verdict(&self, image: &Image) -> Result<(), String> {
        if !self.failed.is_empty() {
            return Err(format!("failed:\n{}", self.failed.join("\n")));
        }
        let missing: Vec<&str> = image
            .checks
            .iter()
            .copied()
            .filter(|name| !self.ok.contains(*name))
            .collect();
        if !missing.is_empty() {
            return Err(format!("no OK line for: {}", missing.join(" ")));
        }
        if let Some(stranger) = self.names.iter().find(|n| !image.knows(n)) {
            return Err(format!("unknown check {stranger}"));
        }
        if !self.done {
            return Err("no DONE line: the image did not finish".to_string());
        }
        Ok(())
    }
}

/// The SDEI 1.0 calls outside any handler.
pub const SDEI_CALLS: Image = Image {
    name: "sdei_calls",
    vcpus: 1,
    checks: &[
        "sdei_version",
        "status_before_register",
        "register_unknown_event",
        "register_event_0",
        "register_event_ffffffff",
        "register_event_high_bits",
        "enable_event_0",
        "enable_event_ffffffff",
        "enable_event_high_bits",
        "disable_event_0",
        "disable_event_ffffffff",
        "disable_event_high_bits",
        "unregister_event_0",
        "unregister_event_ffffffff",
        "unregister_event_high_bits",
        "status_event_0",
        "status_event_ffffffff",
        "status_event_high_bits",
        "get_info_event_0",
        "get_info_event_ffffffff",
        "get_info_event_high_bits",
        "register_reserved_flags",
        "status_after_refused_registers",
        "enable_unregistered",
        "disable_unregistered",
        "unregister_unregistered",
        "register",
        "status_registered",
        "register_twice",
        "status_after_register_twice",
        "info_type",
        "info_signaled",
        "info_priority",
        "info_routing_mode_private",
        "info_routing_aff_private",
        "info_unknown_info",
        "info_unknown_event",
        "routing_set_private",
        "enable",
        "status_enabled",
        "context_outside_handler",
        "complete_outside_handler",
        "complete_and_resume_outside_handler",
        "status_after_outside_calls",
        "disable",
        "status_disabled",
        "pe_mask_starts_masked",
        "pe_unmask",
        "pe_unmask_again",
        "pe_mask_changes",
        "pe_mask_again",
        "interrupt_bind",
        "interrupt_release",
        "unregister",
        "status_unregistered",
        "unregister_again",
        "register_for_reset",
        "enable_for_reset",
        "private_reset",
        "status_after_private_reset",
        "register_after_private_reset",
        "shared_reset",
        "status_after_shared_reset",
        "unregister_after_resets",
        "unassigned_0xc400002f",
        "unassigned_0xc4000030",
        "unassigned_0xc4000033",
        "sdei_version_still",
    ],
    optional: &[],
    fallback: &[],
};

/// PSCI 1.1 with three vCPUs.
pub const PSCI_CALLS: Image = Image {
    name: "psci_calls",
    vcpus: 3,
    checks: &[
        "psci_version",
        "features_version",
        "features_cpu_off",
        "features_cpu_on",
        "features_affinity_info",
        "features_system_off",
        "features_system_reset",
        "features_features",
        "features_unimplemented",
        "affinity_self_on",
        "affinity_cpu1_off_before",
        "affinity_nonexistent",
        "cpu_on_nonexistent",
        "cpu_on_self",
        "cpu_on_first",
        "secondary_context_id_first",
        "secondary_el1h_first",
        "secondary_mmu_off_first",
        "secondary_daif_masked_first",
        "affinity_cpu1_on",
        "cpu_on_running",
        "affinity_cpu1_off_after_cpu_off",
        "cpu_on_again",
        "secondary_context_id_again",
        "secondary_el1h_again",
        "secondary_mmu_off_again",
        "secondary_daif_masked_again",
        "affinity_cpu1_on_again",
        "cpu_off_does_not_return",
        "cpu_on_entry_outside_ram",
        "affinity_cpu2_off_after_bad_entry",
    ],
    optional: &[],
    fallback: &[],
};

/// The APF hypercall surface, and the wake-all PPI after ENABLE.
pub const APF_CALLS: Image = Image {
    name: "apf_calls",
    vcpus: 1,
    checks: &[
        "gic_setup",
        "vendor_uid_0",
        "vendor_uid_1",
        "vendor_uid_2",
        "vendor_uid_3",
        "vendor_features_async_pf",
        "vendor_features_self",
        "smccc_version",
        "psci_features_smccc_version",
        "arch_features_async_pf_not_arch",
        "arch_features_arch_features",
        "arch_features_unassigned",
        "vendor_hyp_unassigned",
        "apf_version_ret",
        "apf_version",
        "apf_slots_ret",
        "apf_slots",
        "apf_sdei_ret",
        "apf_sdei",
        "apf_irq_ret",
        "apf_irq",
        "apf_subfn_upper_bits_ignored_ret",
        "apf_subfn_upper_bits_ignored",
        "apf_unknown_subfn",
        "irq_ack_before_enable",
        "enable_reserved_bit3",
        "enable_reserved_bit4",
        "enable_reserved_bit5",
        "enable_unaligned_gpa",
        "enable_gpa_below_ram",
        "enable_gpa_at_ram_end",
        "enable_gpa_far_outside_ram",
        "enable_gpa_mmio_uart",
        "disable_while_disabled",
        "enable_upper_bits_ignored",
        "wake_all_ready_reason",
        "wake_all_ready_token",
        "wake_all_not_present_channel_clear",
        "ppi_iar",
        "ppi_held_until_ack",
        "ppi_iar_again",
        "irq_ack",
        "irq_ack_lowers_ppi",
        "enable_again",
        "enable_storm_not_required",
        "enable_storm_no_wake_all",
        "irq_ack_nothing_pending",
        "disable",
        "disable_again",
        "apf_version_after_disable",
    ],
    optional: &[],
    fallback: &["wake_all_ppi"],
};

/// The whole flow against a slow store.
pub const APF_FLOW: Image = Image {
    name: "apf_flow",
    vcpus: 1,
    checks: &[
        "layout",
        "gic_setup",
        "flow_discover",
        "flow_sdei_register",
        "flow_sdei_enable",
        "flow_pe_unmask",
        "flow_apf_enable",
        "data_stamps",
        "sdei_entry_el1h_masked",
        "sdei_x0_event",
        "sdei_x1_arg",
        "sdei_x2_el0_code",
        "sdei_x3_el0t",
        "not_present_reason",
        "not_present_token",
        "sdei_status_running",
        "sdei_context_index_out_of_range",
        "resume_elr_is_x2",
        "resume_spsr_is_x3",
        "resume_x0_x17_are_context",
        "interrupt_is_page_ready",
        "page_ready_reason",
        "page_ready_token_known",
        "irq_ack",
        "not_present_seen",
        "tokens_all_woken",
        "flow_counts",
        "apf_disable",
    ],
    optional: &[],
    fallback: &[],
};

/// A vCPU that never acknowledges a page-ready, beside one that behaves.
pub const HOSTILE_NEVER_ACK: Image = Image {
    name: "hostile_never_ack",
    vcpus: 2,
    checks: &[
        "layout",
        "gic_setup",
        "cpu1_on",
        "never_ack_discover",
        "never_ack_sdei_register",
        "never_ack_sdei_enable",
        "never_ack_pe_unmask",
        "never_ack_apf_enable",
        "never_ack_wake_all_reason",
        "never_ack_wake_all_token",
        "data_stamps",
        "not_present_within_slots",
        "no_page_ready_while_unacked",
        "gic_setup_secondary",
        "cpu1_discover",
        "cpu1_sdei_register",
        "cpu1_sdei_enable",
        "cpu1_pe_unmask",
        "cpu1_apf_enable",
        "cpu1_data_stamps",
        "cpu1_sdei_entry_el1h_masked",
        "cpu1_sdei_x0_event",
        "cpu1_sdei_x1_arg",
        "cpu1_sdei_x2_el0_code",
        "cpu1_sdei_x3_el0t",
        "cpu1_not_present_reason",
        "cpu1_not_present_token",
        "cpu1_interrupt_is_page_ready",
        "cpu1_page_ready_reason",
        "cpu1_page_ready_token_known",
        "cpu1_irq_ack",
        "cpu1_not_present_seen",
        "cpu1_tokens_all_woken",
    ],
    // vCPU 0's host may stop notifying at once, or after filling its slots.
    optional: &[
        "sdei_entry_el1h_masked",
        "sdei_x0_event",
        "sdei_x1_arg",
        "sdei_x2_el0_code",
        "sdei_x3_el0t",
        "not_present_reason",
        "not_present_token",
    ],
    fallback: &[],
};

/// Disable with faults in flight; CPU_OFF with faults in flight.
pub const HOSTILE_DISABLE_IN_FLIGHT: Image = Image {
    name: "hostile_disable_in_flight",
    vcpus: 2,
    checks: &[
        "layout",
        "gic_setup",
        "cpu1_on",
        "gic_setup_secondary",
        "cpu1_discover",
        "cpu1_sdei_register",
        "cpu1_sdei_enable",
        "cpu1_pe_unmask",
        "cpu1_apf_enable",
        "cpu0_discover",
        "cpu0_sdei_register",
        "cpu0_sdei_enable",
        "cpu0_pe_unmask",
        "cpu0_apf_enable",
        "cpu1_off_with_faults_in_flight",
        "cpu1_faults_in_flight_at_off",
        "faults_in_flight_at_disable",
        "disable_with_faults_in_flight",
        "data_stamps",
        "data_stamps_cpu1_after_off",
        "cpu0_sdei_entry_el1h_masked",
        "cpu0_sdei_x0_event",
        "cpu0_sdei_x1_arg",
        "cpu0_sdei_x2_el0_code",
        "cpu0_sdei_x3_el0t",
        "cpu0_not_present_reason",
        "cpu0_not_present_token",
        "cpu0_interrupt_is_page_ready",
        "cpu0_page_ready_reason",
        "cpu0_page_ready_token_known",
        "cpu0_irq_ack",
        "cpu0_not_present_seen",
        "cpu1_sdei_entry_el1h_masked",
        "cpu1_sdei_x0_event",
        "cpu1_sdei_x1_arg",
        "cpu1_sdei_x2_el0_code",
        "cpu1_sdei_x3_el0t",
        "cpu1_not_present_reason",
        "cpu1_not_present_token",
        "cpu1_interrupt_is_page_ready",
        "cpu1_page_ready_reason",
        "cpu1_page_ready_token_known",
        "cpu1_irq_ack",
        "cpu1_not_present_seen",
        "no_not_present_after_disable",
        "no_notification_after_disable",
        "disable_again",
        "cpu1_on_after_off",
        "cpu1_reset_gic",
        "cpu1_reset_enable",
        "cpu1_reset_wake_all_reason",
        "cpu1_reset_wake_all_token",
        "cpu1_reset_wake_all_ack",
        "cpu1_reset_no_stale_page_ready",
        "cpu1_reset_disable",
    ],
    optional: &[],
    fallback: &[],
};

/// Two vCPUs fighting over one shared block; block addresses off the 64-byte grid.
pub const HOSTILE_BLOCKS: Image = Image {
    name: "hostile_blocks",
    vcpus: 2,
    checks: &[
        "gic_setup",
        "cpu1_on",
        "owner_enable",
        "owner_wake_all",
        "gic_setup_secondary",
        "overlap",
        "overlap_send_always",
        "overlap_abi_1_0",
        "overlap_block_untouched",
        "adjacent_block",
        "adjacent_wake_all",
        "adjacent_disable",
        "unaligned_plus_8",
        "unaligned_plus_16",
        "unaligned_plus_32",
        "unaligned_plus_2_is_send_always",
        "unaligned_plus_2_wake_all_at_block",
        "unaligned_plus_2_disable",
        "adjacent_leaves_neighbour_alone",
        "owner_disable",
        "freed_block_taken",
        "freed_block_wake_all",
        "overlap_after_handover",
        "owner_still_disabled",
        "taker_disable",
    ],
    optional: &[],
    fallback: &[],
};
