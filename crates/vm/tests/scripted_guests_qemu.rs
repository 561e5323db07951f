//! The scripted test guests on `qemu-system-aarch64 -M virt,gic-version=3`: an
//! independent machine with PSCI but no apf hypervisor, where every SDEI and APF
//! call is UNDEFINED and answered NOT_SUPPORTED by the image's runtime.
//!
//! What this proves: every image boots, prints only checks its list in
//! `scripted/mod.rs` knows (so the list the apf test asserts stays true), reaches
//! DONE and powers off; the checks that need no hypervisor pass, so the images'
//! own logic (EL0 tasks, barrier, data stamps, PSCI, GIC) is right on a second
//! implementation. And `psci_calls` passes whole on QEMU but for two checks QEMU
//! is known not to honour.

#[path = "common/qemu.rs"]
mod qemu;
mod scripted;

use qemu::qemu_present;
use scripted::Image;

/// Boots the image with its vCPUs and 64 MiB (TEST_RAM_SIZE) and returns the
/// console once the guest has powered QEMU off.
fn run_qemu(image: &Image) -> String {
    qemu::run(image.name, &image.path(), image.vcpus, 64, &[])
}

/// Runs an image and checks: DONE, only known check names, and `must_pass` OK.
fn check_on_qemu(image: &Image, must_pass: &[&str]) -> scripted::Console {
    let out = run_qemu(image);
    let console = scripted::parse(&out);
    assert!(console.done, "{}: no DONE\n{out}", image.name);
    if let Some(stranger) = console.names.iter().find(|n| !image.knows(n)) {
        panic!("{}: prints unknown check {stranger}\n{out}", image.name);
    }
    for name in must_pass {
        assert!(
            console.ok.contains(*name),
            "{}: {name} must pass on QEMU\n{out}",
            image.name
        );
    }
    console
}

#[test]
fn psci_calls_pass_on_qemu_but_for_entry_point_validation() {
    if !qemu_present() {
        return;
    }
    let image = &scripted::PSCI_CALLS;
    // QEMU starts a vCPU at any entry point, so CPU_ON outside RAM succeeds
    // there, and vCPU 2 reads as off or on depending on how far it got.
    let qemu_differs = [
        "cpu_on_entry_outside_ram",
        "affinity_cpu2_off_after_bad_entry",
    ];
    let must_pass: Vec<&str> = image
        .checks
        .iter()
        .copied()
        .filter(|name| !qemu_differs.contains(name))
        .collect();
    let console = check_on_qemu(image, &must_pass);
    let failed: Vec<&str> = console
        .failed
        .iter()
        .map(|l| l.split_whitespace().nth(1).unwrap_or(""))
        .collect();
    assert!(
        failed == qemu_differs[..1] || failed == qemu_differs,
        "{:?}",
        console.failed
    );
}

#[test]
fn sdei_calls_run_to_the_end_on_qemu() {
    if !qemu_present() {
        return;
    }
    // Every call is NOT_SUPPORTED there: these are the checks that expect it.
    let console = check_on_qemu(
        &scripted::SDEI_CALLS,
        &[
            "interrupt_bind",
            "interrupt_release",
            "unassigned_0xc400002f",
            "unassigned_0xc4000030",
            "unassigned_0xc4000033",
        ],
    );
    assert_eq!(console.names.len(), scripted::SDEI_CALLS.checks.len());
}

#[test]
fn apf_calls_run_to_the_end_on_qemu() {
    if !qemu_present() {
        return;
    }
    let console = check_on_qemu(
        &scripted::APF_CALLS,
        &[
            "gic_setup",
            "arch_features_async_pf_not_arch",
            "arch_features_unassigned",
            "vendor_hyp_unassigned",
            "apf_unknown_subfn",
            "enable_storm_no_wake_all",
        ],
    );
    assert!(
        console
            .failed
            .iter()
            .any(|l| l.starts_with("FAIL wake_all_ppi ")),
        "without APF the wake-all is reported missing: {:?}",
        console.failed
    );
}

#[test]
fn hostile_blocks_runs_to_the_end_on_qemu() {
    if !qemu_present() {
        return;
    }
    // Without APF every ENABLE is NOT_SUPPORTED: the two vCPUs still take
    // their turns, and nothing writes either block.
    check_on_qemu(
        &scripted::HOSTILE_BLOCKS,
        &[
            "gic_setup",
            "cpu1_on",
            "gic_setup_secondary",
            "overlap_block_untouched",
            "adjacent_leaves_neighbour_alone",
        ],
    );
}

#[test]
fn apf_flow_keeps_its_data_on_qemu() {
    if !qemu_present() {
        return;
    }
    check_on_qemu(
        &scripted::APF_FLOW,
        &["layout", "gic_setup", "data_stamps", "tokens_all_woken"],
    );
}

#[test]
fn hostile_never_ack_keeps_both_vcpus_data_on_qemu() {
    if !qemu_present() {
        return;
    }
    check_on_qemu(
        &scripted::HOSTILE_NEVER_ACK,
        &[
            "layout",
            "gic_setup",
            "cpu1_on",
            "gic_setup_secondary",
            "data_stamps",
            "cpu1_data_stamps",
            "not_present_within_slots",
            "no_page_ready_while_unacked",
            "cpu1_tokens_all_woken",
        ],
    );
}

#[test]
fn hostile_disable_in_flight_runs_both_vcpus_on_qemu() {
    if !qemu_present() {
        return;
    }
    check_on_qemu(
        &scripted::HOSTILE_DISABLE_IN_FLIGHT,
        &[
            "layout",
            "gic_setup",
            "gic_setup_secondary",
            "cpu1_on",
            "cpu1_off_with_faults_in_flight",
            "data_stamps",
            "data_stamps_cpu1_after_off",
            "no_not_present_after_disable",
            "no_notification_after_disable",
            "cpu1_on_after_off",
            "cpu1_reset_gic",
        ],
    );
}

#[test]
fn every_image_is_committed_and_lists_distinct_checks() {
    let images = [
        &scripted::SDEI_CALLS,
        &scripted::PSCI_CALLS,
        &scripted::APF_CALLS,
        &scripted::APF_FLOW,
        &scripted::HOSTILE_NEVER_ACK,
        &scripted::HOSTILE_DISABLE_IN_FLIGHT,
    ];
    for image in images {
        assert!(image.path().is_file(), "{} is not built", image.name);
        let mut names: Vec<&str> = [image.checks, image.optional, image.fallback].concat();
        let all = names.len();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), all, "{}: a check is listed twice", image.name);
    }
}

const PASSING: &str = "\
boot noise
OK a n=3
OK b
DONE
";

#[test]
fn the_verdict_accepts_a_full_pass_and_names_what_is_wrong() {
    let image = Image {
        name: "sample",
        vcpus: 1,
        checks: &["a", "b"],
        optional: &["c"],
        fallback: &["d"],
    };
    assert_eq!(scripted::parse(PASSING).verdict(&image), Ok(()));

    let failed = PASSING.replace("OK b", "FAIL b got=0x1 want=0x0");
    let why = scripted::parse(&failed).verdict(&image).unwrap_err();
    assert!(why.contains("FAIL b got=0x1 want=0x0"), "{why}");

    let missing = PASSING.replace("OK b\n", "");
    let why = scripted::parse(&missing).verdict(&image).unwrap_err();
    assert!(why.contains("no OK line for: b"), "{why}");

    let stranger = PASSING.replace("OK b", "OK b\nOK e");
    let why = scripted::parse(&stranger).verdict(&image).unwrap_err();
    assert!(why.contains("unknown check e"), "{why}");

    let unfinished = PASSING.replace("DONE\n", "");
    let why = scripted::parse(&unfinished).verdict(&image).unwrap_err();
    assert!(why.contains("no DONE"), "{why}");

    let optional = PASSING.replace("OK b", "OK b\nOK c");
    assert_eq!(scripted::parse(&optional).verdict(&image), Ok(()));
}
