//! `guest/include/abi.h` must say exactly what the Rust side says: every value in
//! the table below appears in the header with the same value, and every `#define`
//! in the header appears in the table.

use apf_abi::{boot, control, esr, platform, ppi, psci, sdei, shared, smccc, token};
use std::collections::BTreeMap;

fn rust_values() -> Vec<(&'static str, i128)> {
    let v = |x: u64| i128::from(x);
    let w = |x: u32| i128::from(x);
    let s = |x: i64| i128::from(x);
    vec![
        ("APF_ASYNC_PF_PER_VCPU", apf_abi::ASYNC_PF_PER_VCPU as i128),
        ("APF_VERSION", w(apf_abi::APF_VERSION)),
        ("APF_PAGE_SIZE", v(apf_abi::PAGE_SIZE)),
        ("APF_REASON_NONE", w(shared::REASON_NONE)),
        (
            "APF_REASON_PAGE_NOT_PRESENT",
            w(shared::REASON_PAGE_NOT_PRESENT),
        ),
        ("APF_REASON_PAGE_READY", w(shared::REASON_PAGE_READY)),
        ("APF_SHARED_BLOCK_ALIGN", v(shared::SHARED_BLOCK_ALIGN)),
        ("APF_SHARED_BLOCK_SIZE", v(shared::SHARED_BLOCK_SIZE)),
        ("APF_SHARED_OFF_REASON", v(shared::OFF_REASON)),
        ("APF_SHARED_OFF_TOKEN", v(shared::OFF_TOKEN)),
        ("APF_SHARED_OFF_READY_REASON", v(shared::OFF_READY_REASON)),
        ("APF_SHARED_OFF_READY_TOKEN", v(shared::OFF_READY_TOKEN)),
        ("APF_SHARED_OFF_ENABLED", v(shared::OFF_ENABLED)),
        ("APF_CONTROL_ENABLED", v(control::CONTROL_ENABLED)),
        ("APF_CONTROL_SEND_ALWAYS", v(control::CONTROL_SEND_ALWAYS)),
        (
            "APF_CONTROL_SEPARATE_READY",
            v(control::CONTROL_SEPARATE_READY),
        ),
        (
            "APF_CONTROL_RESERVED_MASK",
            v(control::CONTROL_RESERVED_MASK),
        ),
        ("APF_TOKEN_VCPU_BITS", w(token::TOKEN_VCPU_BITS)),
        ("APF_TOKEN_WAKE_ALL", w(token::TOKEN_WAKE_ALL)),
        ("SMCCC_VERSION", w(smccc::SMCCC_VERSION)),
        ("SMCCC_ARCH_FEATURES", w(smccc::SMCCC_ARCH_FEATURES)),
        ("SMCCC_VERSION_1_1", w(smccc::SMCCC_VERSION_1_1)),
        ("SMCCC_RET_SUCCESS", s(smccc::SMCCC_RET_SUCCESS)),
        ("SMCCC_RET_NOT_SUPPORTED", s(smccc::SMCCC_RET_NOT_SUPPORTED)),
        ("SMCCC_RET_NOT_REQUIRED", s(smccc::SMCCC_RET_NOT_REQUIRED)),
        (
            "SMCCC_RET_INVALID_PARAMETER",
            s(smccc::SMCCC_RET_INVALID_PARAMETER),
        ),
        ("SMCCC_VENDOR_HYP_UID", w(smccc::VENDOR_HYP_UID)),
        ("SMCCC_VENDOR_HYP_FEATURES", w(smccc::VENDOR_HYP_FEATURES)),
        (
            "SMCCC_VENDOR_HYP_FUNC_ASYNC_PF",
            w(smccc::VENDOR_HYP_FUNC_ASYNC_PF),
        ),
        ("SMCCC_VENDOR_HYP_ASYNC_PF", w(smccc::VENDOR_HYP_ASYNC_PF)),
        ("APF_UID_0", w(smccc::APF_UID[0])),
        ("APF_UID_1", w(smccc::APF_UID[1])),
        ("APF_UID_2", w(smccc::APF_UID[2])),
        ("APF_UID_3", w(smccc::APF_UID[3])),
        ("ASYNC_PF_FUNC_VERSION", v(smccc::ASYNC_PF_FUNC_VERSION)),
        ("ASYNC_PF_FUNC_SLOTS", v(smccc::ASYNC_PF_FUNC_SLOTS)),
        ("ASYNC_PF_FUNC_SDEI", v(smccc::ASYNC_PF_FUNC_SDEI)),
        ("ASYNC_PF_FUNC_IRQ", v(smccc::ASYNC_PF_FUNC_IRQ)),
        ("ASYNC_PF_FUNC_ENABLE", v(smccc::ASYNC_PF_FUNC_ENABLE)),
        ("ASYNC_PF_FUNC_IRQ_ACK", v(smccc::ASYNC_PF_FUNC_IRQ_ACK)),
        ("SDEI_VERSION", w(sdei::SDEI_VERSION)),
        ("SDEI_EVENT_REGISTER", w(sdei::SDEI_EVENT_REGISTER)),
        ("SDEI_EVENT_ENABLE", w(sdei::SDEI_EVENT_ENABLE)),
        ("SDEI_EVENT_DISABLE", w(sdei::SDEI_EVENT_DISABLE)),
        ("SDEI_EVENT_CONTEXT", w(sdei::SDEI_EVENT_CONTEXT)),
        ("SDEI_EVENT_COMPLETE", w(sdei::SDEI_EVENT_COMPLETE)),
        (
            "SDEI_EVENT_COMPLETE_AND_RESUME",
            w(sdei::SDEI_EVENT_COMPLETE_AND_RESUME),
        ),
        ("SDEI_EVENT_UNREGISTER", w(sdei::SDEI_EVENT_UNREGISTER)),
        ("SDEI_EVENT_STATUS", w(sdei::SDEI_EVENT_STATUS)),
        ("SDEI_EVENT_GET_INFO", w(sdei::SDEI_EVENT_GET_INFO)),
        ("SDEI_EVENT_ROUTING_SET", w(sdei::SDEI_EVENT_ROUTING_SET)),
        ("SDEI_PE_MASK", w(sdei::SDEI_PE_MASK)),
        ("SDEI_PE_UNMASK", w(sdei::SDEI_PE_UNMASK)),
        ("SDEI_INTERRUPT_BIND", w(sdei::SDEI_INTERRUPT_BIND)),
        ("SDEI_INTERRUPT_RELEASE", w(sdei::SDEI_INTERRUPT_RELEASE)),
        ("SDEI_PRIVATE_RESET", w(sdei::SDEI_PRIVATE_RESET)),
        ("SDEI_SHARED_RESET", w(sdei::SDEI_SHARED_RESET)),
        ("SDEI_VERSION_1_0", v(sdei::SDEI_VERSION_1_0)),
        ("SDEI_SUCCESS", s(sdei::SDEI_SUCCESS)),
        ("SDEI_NOT_SUPPORTED", s(sdei::SDEI_NOT_SUPPORTED)),
        ("SDEI_INVALID_PARAMETERS", s(sdei::SDEI_INVALID_PARAMETERS)),
        ("SDEI_DENIED", s(sdei::SDEI_DENIED)),
        ("SDEI_PENDING", s(sdei::SDEI_PENDING)),
        ("SDEI_OUT_OF_RESOURCE", s(sdei::SDEI_OUT_OF_RESOURCE)),
        ("SDEI_STATUS_REGISTERED", v(sdei::SDEI_STATUS_REGISTERED)),
        ("SDEI_STATUS_ENABLED", v(sdei::SDEI_STATUS_ENABLED)),
        ("SDEI_STATUS_RUNNING", v(sdei::SDEI_STATUS_RUNNING)),
        ("SDEI_RM_ANY", v(sdei::SDEI_RM_ANY)),
        ("SDEI_RM_PE", v(sdei::SDEI_RM_PE)),
        ("SDEI_INFO_TYPE", v(sdei::SDEI_INFO_TYPE)),
        ("SDEI_INFO_SIGNALED", v(sdei::SDEI_INFO_SIGNALED)),
        ("SDEI_INFO_PRIORITY", v(sdei::SDEI_INFO_PRIORITY)),
        ("SDEI_INFO_ROUTING_MODE", v(sdei::SDEI_INFO_ROUTING_MODE)),
        ("SDEI_INFO_ROUTING_AFF", v(sdei::SDEI_INFO_ROUTING_AFF)),
        ("SDEI_TYPE_PRIVATE", v(sdei::SDEI_TYPE_PRIVATE)),
        ("SDEI_PRIORITY_CRITICAL", v(sdei::SDEI_PRIORITY_CRITICAL)),
        ("SDEI_EVENT_ASYNC_PF", w(sdei::SDEI_EVENT_ASYNC_PF)),
        ("PSCI_VERSION", w(psci::PSCI_VERSION)),
        ("PSCI_CPU_OFF", w(psci::PSCI_CPU_OFF)),
        ("PSCI_CPU_ON", w(psci::PSCI_CPU_ON)),
        ("PSCI_AFFINITY_INFO", w(psci::PSCI_AFFINITY_INFO)),
        ("PSCI_SYSTEM_OFF", w(psci::PSCI_SYSTEM_OFF)),
        ("PSCI_SYSTEM_RESET", w(psci::PSCI_SYSTEM_RESET)),
        ("PSCI_FEATURES", w(psci::PSCI_FEATURES)),
        ("PSCI_VERSION_1_1", w(psci::PSCI_VERSION_1_1)),
        ("PSCI_RET_SUCCESS", s(psci::PSCI_RET_SUCCESS)),
        ("PSCI_RET_NOT_SUPPORTED", s(psci::PSCI_RET_NOT_SUPPORTED)),
        (
            "PSCI_RET_INVALID_PARAMETERS",
            s(psci::PSCI_RET_INVALID_PARAMETERS),
        ),
        ("PSCI_RET_ALREADY_ON", s(psci::PSCI_RET_ALREADY_ON)),
        (
            "PSCI_RET_INVALID_ADDRESS",
            s(psci::PSCI_RET_INVALID_ADDRESS),
        ),
        ("PSCI_AFFINITY_ON", s(psci::PSCI_AFFINITY_ON)),
        ("PSCI_AFFINITY_OFF", s(psci::PSCI_AFFINITY_OFF)),
        ("APF_DEFAULT_PPI", w(ppi::APF_DEFAULT_PPI)),
        ("PPI_TIMER_VIRT", w(ppi::PPI_TIMER_VIRT)),
        ("PPI_TIMER_PHYS", w(ppi::PPI_TIMER_PHYS)),
        ("ESR_EC_SHIFT", w(esr::ESR_EC_SHIFT)),
        ("ESR_EC_UNKNOWN", w(esr::ec::UNKNOWN)),
        ("ESR_EC_SVC64", w(esr::ec::SVC64)),
        ("ESR_EC_HVC64", w(esr::ec::HVC64)),
        ("ESR_EC_SMC64", w(esr::ec::SMC64)),
        ("ESR_EC_IABT_LOWER", w(esr::ec::IABT_LOWER)),
        ("ESR_EC_IABT_CURRENT", w(esr::ec::IABT_CURRENT)),
        ("ESR_EC_DABT_LOWER", w(esr::ec::DABT_LOWER)),
        ("ESR_EC_DABT_CURRENT", w(esr::ec::DABT_CURRENT)),
        ("ESR_FSC_TRANSLATION_L3", w(esr::fsc::TRANSLATION_L3)),
        ("ESR_FSC_SYNC_EXTERNAL", w(esr::fsc::SYNC_EXTERNAL)),
        ("ESR_FSC_ALIGNMENT", w(esr::fsc::ALIGNMENT)),
        ("APF_RAM_BASE", v(platform::RAM_BASE)),
        ("APF_IMAGE_LOAD_ADDR", v(platform::IMAGE_LOAD_ADDR)),
        ("APF_GICD_BASE", v(platform::GICD_BASE)),
        ("APF_GICR_BASE", v(platform::GICR_BASE)),
        ("APF_GICR_STRIDE", v(platform::GICR_STRIDE)),
        ("APF_GICR_SGI_OFFSET", v(platform::GICR_SGI_OFFSET)),
        ("APF_UART_BASE", v(platform::UART_BASE)),
        ("APF_BOOT_BLOCK_GPA", v(boot::BOOT_BLOCK_GPA)),
        ("APF_BOOT_MAGIC", w(boot::BOOT_MAGIC)),
        ("APF_BOOT_VERSION", w(boot::BOOT_VERSION)),
        ("APF_BOOT_MAX_PROCS", boot::BOOT_MAX_PROCS as i128),
        ("APF_WRITE_PCT_ALL", w(boot::WRITE_PCT_ALL)),
        ("APF_WORKLOAD_SCAN", w(boot::workload::SCAN)),
        ("APF_WORKLOAD_CALC", w(boot::workload::CALC)),
        ("APF_WORKLOAD_KV", w(boot::workload::KV)),
        ("APF_WORKLOAD_BUILD", w(boot::workload::BUILD)),
        ("APF_PROC_NEW", w(boot::proc_state::NEW)),
        ("APF_PROC_RUNNING", w(boot::proc_state::RUNNING)),
        ("APF_PROC_DONE", w(boot::proc_state::DONE)),
        ("APF_PROC_KILLED", w(boot::proc_state::KILLED)),
        ("APF_BOOT_OFF_STOP", v(boot::BOOT_OFF_STOP)),
        ("APF_BOOT_OFF_FINISHED", v(boot::BOOT_OFF_FINISHED)),
        ("APF_BOOT_OFF_PROCS", v(boot::BOOT_OFF_PROCS)),
        ("APF_BOOT_OFF_RESULTS", v(boot::BOOT_OFF_RESULTS)),
        ("APF_BOOT_BLOCK_SIZE", v(boot::BOOT_BLOCK_SIZE)),
    ]
}

/// Parses `#define NAME LITERAL` lines; the header keeps its values literal so
/// this stays trivial. Any other `#define` with a value is an error.
fn header_values(text: &str) -> BTreeMap<String, i128> {
    let mut out = BTreeMap::new();
    for (n, line) in text.lines().enumerate() {
        let Some(rest) = line.trim().strip_prefix("#define ") else {
            continue;
        };
        let mut parts = rest.split_whitespace();
        let name = parts.next().expect("a name");
        let Some(value) = parts.next() else { continue }; // include guard
        assert!(
            parts.next().is_none(),
            "line {}: value of {name} is not one literal",
            n + 1
        );
        let (neg, digits) = match value.strip_prefix('-') {
            Some(d) => (true, d),
            None => (false, value),
        };
        let parsed = match digits.strip_prefix("0x") {
            Some(hex) => i128::from_str_radix(hex, 16),
            None => digits.parse::<i128>(),
        }
        .unwrap_or_else(|e| panic!("line {}: {name} = {value}: {e}", n + 1));
        let parsed = if neg { -parsed } else { parsed };
        assert!(
            out.insert(name.to_string(), parsed).is_none(),
            "{name} defined twice"
        );
    }
    out
}

#[test]
fn header_matches_rust() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../guest/include/abi.h");
    let text = std::fs::read_to_string(path).expect("guest/include/abi.h");
    let mut header = header_values(&text);
    let mut errors = Vec::new();
    for (name, value) in rust_values() {
        match header.remove(name) {
            None => errors.push(format!("{name} is missing from abi.h")),
            Some(h) if h != value => {
                errors.push(format!("{name}: abi.h says {h:#x}, Rust says {value:#x}"))
            }
            Some(_) => {}
        }
    }
    for name in header.keys() {
        errors.push(format!("{name} is in abi.h but not checked against Rust"));
    }
    assert!(errors.is_empty(), "abi.h drifted:\n{}", errors.join("\n"));
}

/// The Linux module (`guest/linux/apf/apf.c`) repeats abi.h's values under the
/// same names: each of its literal `#define`s must be in abi.h with the same value,
/// except the PPI range, which abi.h does not have and Rust does, and the module's
/// own `MOD_` values (GIC offsets, its struct layout).
#[test]
fn linux_module_matches_abi_h() {
    let read = |rel: &str| {
        std::fs::read_to_string(format!("{}/../../{rel}", env!("CARGO_MANIFEST_DIR")))
            .unwrap_or_else(|e| panic!("{rel}: {e}"))
    };
    let header = header_values(&read("guest/include/abi.h"));
    // Function-like macros (a `(` in the name) are code, not values.
    let module_text: String = read("guest/linux/apf/apf.c")
        .lines()
        .filter(|l| {
            l.trim().strip_prefix("#define ").is_some_and(|rest| {
                let name = rest.split_whitespace().next().unwrap_or("");
                !name.contains('(') && !name.starts_with("MOD_")
            })
        })
        .map(|l| format!("{l}\n"))
        .collect();
    let module = header_values(&module_text);
    let rust_only = [
        ("PPI_FIRST", i128::from(ppi::PPI_FIRST)),
        ("PPI_LAST", i128::from(ppi::PPI_LAST)),
    ];
    assert!(
        module.len() >= 10,
        "too few values found in apf.c: {module:?}"
    );
    let mut errors = Vec::new();
    for (name, value) in &module {
        let want = header
            .get(name)
            .copied()
            .or_else(|| rust_only.iter().find(|(n, _)| n == name).map(|(_, v)| *v));
        match want {
            None => errors.push(format!("{name} is in apf.c but not in abi.h")),
            Some(w) if w != *value => errors.push(format!(
                "{name}: apf.c says {value:#x}, abi.h/Rust say {w:#x}"
            )),
            Some(_) => {}
        }
    }
    assert!(errors.is_empty(), "apf.c drifted:\n{}", errors.join("\n"));
}

#[test]
fn parser_catches_a_drift() {
    let header = header_values("#define APF_VERSION 0x010000\n#define SDEI_DENIED -3\n");
    assert_eq!(header["APF_VERSION"], 0x01_0000);
    assert_ne!(header["APF_VERSION"], i128::from(apf_abi::APF_VERSION));
    assert_eq!(header["SDEI_DENIED"], -3);
}
