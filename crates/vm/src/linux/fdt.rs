//! The flattened device tree a Linux guest is given: apf's platform as it is
//! (RAM, the vCPUs, PSCI, the GICv3, the generic timer, the PL011, SDEI) and the
//! boot's `/chosen` (command line, console, initrd, a seed for its RNG).

use apf_abi::platform::{
    GICD_BASE, GICD_SIZE, GICR_BASE, GICR_STRIDE, RAM_BASE, UART_BASE, UART_INTID, UART_SIZE,
};
use apf_abi::ppi::{PPI_FIRST, PPI_TIMER_HYP, PPI_TIMER_PHYS, PPI_TIMER_SECURE, PPI_TIMER_VIRT};
use apf_host::regs::affinity_of;
use std::ops::Range;
use thiserror::Error;
use vm_fdt::FdtWriter;

/// The GIC binding's first interrupt cell: an SPI.
const GIC_SPI: u32 = 0;
/// The GIC binding's first interrupt cell: a PPI.
const GIC_PPI: u32 = 1;
/// The GIC binding's flags cell: level-sensitive, active-high. apf's GIC
/// treats the timer and UART lines as levels (asserted = pending), and a
/// GICv3 has no active-low inputs.
const IRQ_LEVEL_HIGH: u32 = 4;
/// First SPI INTID.
const SPI_FIRST: u32 = 32;
/// The PL011's reference and bus clock (the value QEMU `virt` gives; apf's
/// UART transmits at once, so the rate only sets the divisors Linux programs).
const UART_CLOCK_HZ: u32 = 24_000_000;
const PHANDLE_GIC: u32 = 1;
const PHANDLE_CLOCK: u32 = 2;
/// Bytes of `/chosen/rng-seed`.
pub const RNG_SEED_BYTES: usize = 32;

/// The node path of the console, for `stdout-path`.
pub fn uart_node() -> String {
    format!("/pl011@{UART_BASE:x}")
}

/// What the tree describes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreeSpec {
    /// Guest RAM bytes (from [`RAM_BASE`]).
    pub ram_size: u64,
    /// vCPUs.
    pub vcpus: usize,
    /// The kernel command line.
    pub bootargs: String,
    /// Where the initrd is, if there is one.
    pub initrd: Option<Range<u64>>,
    /// Seed for the kernel's RNG (reproducible: derived from the run's seed).
    pub rng_seed: [u8; RNG_SEED_BYTES],
}

/// Why the device tree could not be built.
#[derive(Debug, Error)]
#[error("building the device tree: {0}")]
pub struct FdtError(#[from] vm_fdt::Error);

/// `RNG_SEED_BYTES` bytes from the run's seed (splitmix64), so two runs with
/// one seed give the kernel the same entropy.
pub fn rng_seed_of(run_seed: u64) -> [u8; RNG_SEED_BYTES] {
    let mut out = [0u8; RNG_SEED_BYTES];
    let mut state = run_seed ^ 0x6c69_6e75_785f_726e; // "linux_rn": not the workloads' stream
    for chunk in out.chunks_mut(8) {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        chunk.copy_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    out
}

/// A PPI as the GIC binding writes it: its number counts from INTID 16.
fn ppi(intid: u32) -> [u32; 3] {
    [GIC_PPI, intid - PPI_FIRST, IRQ_LEVEL_HIGH]
}

/// The device tree blob for `spec`.
pub fn device_tree(spec: &TreeSpec) -> Result<Vec<u8>, FdtError> {
    let mut fdt = FdtWriter::new()?;
    let root = fdt.begin_node("")?;
    fdt.property_string("compatible", "linux,dummy-virt")?;
    fdt.property_u32("#address-cells", 2)?;
    fdt.property_u32("#size-cells", 2)?;
    fdt.property_u32("interrupt-parent", PHANDLE_GIC)?;

    let chosen = fdt.begin_node("chosen")?;
    fdt.property_string("bootargs", &spec.bootargs)?;
    fdt.property_string("stdout-path", &uart_node())?;
    if let Some(initrd) = &spec.initrd {
        fdt.property_u64("linux,initrd-start", initrd.start)?;
        fdt.property_u64("linux,initrd-end", initrd.end)?;
    }
    fdt.property("rng-seed", &spec.rng_seed)?;
    fdt.end_node(chosen)?;

    let memory = fdt.begin_node(&format!("memory@{RAM_BASE:x}"))?;
    fdt.property_string("device_type", "memory")?;
    fdt.property_array_u64("reg", &[RAM_BASE, spec.ram_size])?;
    fdt.end_node(memory)?;

    let cpus = fdt.begin_node("cpus")?;
    fdt.property_u32("#address-cells", 1)?;
    fdt.property_u32("#size-cells", 0)?;
    for index in 0..spec.vcpus {
        // reg is the MPIDR's affinity, which PSCI CPU_ON takes as the target.
        let reg = u32::try_from(affinity_of(index)).unwrap_or(u32::MAX);
        let cpu = fdt.begin_node(&format!("cpu@{reg:x}"))?;
        fdt.property_string("device_type", "cpu")?;
        fdt.property_string("compatible", "arm,armv8")?;
        fdt.property_u32("reg", reg)?;
        fdt.property_string("enable-method", "psci")?;
        fdt.end_node(cpu)?;
    }
    fdt.end_node(cpus)?;

    // apf implements PSCI 1.1; "arm,psci-1.0" is the binding for 1.0 and later.
    let psci = fdt.begin_node("psci")?;
    fdt.property_string_list(
        "compatible",
        vec!["arm,psci-1.0".into(), "arm,psci-0.2".into()],
    )?;
    fdt.property_string("method", "hvc")?;
    fdt.end_node(psci)?;

    let firmware = fdt.begin_node("firmware")?;
    let sdei = fdt.begin_node("sdei")?;
    fdt.property_string("compatible", "arm,sdei-1.0")?;
    fdt.property_string("method", "hvc")?;
    fdt.end_node(sdei)?;
    fdt.end_node(firmware)?;

    // No ITS: apf's GICv3 has none, so the node has no children.
    let gic = fdt.begin_node(&format!("intc@{GICD_BASE:x}"))?;
    fdt.property_string("compatible", "arm,gic-v3")?;
    fdt.property_u32("#interrupt-cells", 3)?;
    fdt.property_null("interrupt-controller")?;
    fdt.property_u32("#redistributor-regions", 1)?;
    // Cells for child nodes (an ITS would be one), so the node is a complete
    // interrupt provider to `dtc`.
    fdt.property_u32("#address-cells", 2)?;
    fdt.property_u32("#size-cells", 2)?;
    fdt.property_null("ranges")?;
    let redistributors = GICR_STRIDE * spec.vcpus as u64;
    fdt.property_array_u64("reg", &[GICD_BASE, GICD_SIZE, GICR_BASE, redistributors])?;
    fdt.property_phandle(PHANDLE_GIC)?;
    fdt.end_node(gic)?;

    // The binding's order: secure physical, non-secure physical, virtual, hyp.
    let timer = fdt.begin_node("timer")?;
    fdt.property_string("compatible", "arm,armv8-timer")?;
    let interrupts: Vec<u32> = [
        PPI_TIMER_SECURE,
        PPI_TIMER_PHYS,
        PPI_TIMER_VIRT,
        PPI_TIMER_HYP,
    ]
    .into_iter()
    .flat_map(ppi)
    .collect();
    fdt.property_array_u32("interrupts", &interrupts)?;
    fdt.property_null("always-on")?;
    fdt.end_node(timer)?;

    let clock = fdt.begin_node("apb-pclk")?;
    fdt.property_string("compatible", "fixed-clock")?;
    fdt.property_u32("#clock-cells", 0)?;
    fdt.property_u32("clock-frequency", UART_CLOCK_HZ)?;
    fdt.property_string("clock-output-names", "clk24mhz")?;
    fdt.property_phandle(PHANDLE_CLOCK)?;
    fdt.end_node(clock)?;

    let uart = fdt.begin_node(&uart_node()[1..])?;
    fdt.property_string_list(
        "compatible",
        vec!["arm,pl011".into(), "arm,primecell".into()],
    )?;
    fdt.property_array_u64("reg", &[UART_BASE, UART_SIZE])?;
    fdt.property_array_u32(
        "interrupts",
        &[GIC_SPI, UART_INTID - SPI_FIRST, IRQ_LEVEL_HIGH],
    )?;
    fdt.property_array_u32("clocks", &[PHANDLE_CLOCK, PHANDLE_CLOCK])?;
    fdt.property_string_list("clock-names", vec!["uartclk".into(), "apb_pclk".into()])?;
    fdt.end_node(uart)?;

    fdt.end_node(root)?;
    Ok(fdt.finish()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// A tiny FDT reader: every property of every node, by path.
    type Tree = BTreeMap<String, BTreeMap<String, Vec<u8>>>;

    const FDT_MAGIC: u32 = 0xD00D_FEED;
    const BEGIN_NODE: u32 = 1;
    const END_NODE: u32 = 2;
    const PROP: u32 = 3;
    const NOP: u32 = 4;
    const END: u32 = 9;

    fn be32(b: &[u8], at: usize) -> u32 {
        u32::from_be_bytes(b[at..at + 4].try_into().unwrap())
    }

    fn cstr(b: &[u8], at: usize) -> String {
        let end = b[at..].iter().position(|&c| c == 0).unwrap() + at;
        String::from_utf8(b[at..end].to_vec()).unwrap()
    }

    fn parse(blob: &[u8]) -> Tree {
        assert_eq!(be32(blob, 0), FDT_MAGIC, "FDT magic");
        assert_eq!(be32(blob, 4) as usize, blob.len(), "totalsize");
        let structs = be32(blob, 8) as usize;
        let strings = be32(blob, 12) as usize;
        assert!(be32(blob, 20) >= 17, "version");
        let mut tree = Tree::new();
        let mut path: Vec<String> = Vec::new();
        let mut at = structs;
        let full = |path: &[String]| {
            if path.len() <= 1 {
                "/".to_string()
            } else {
                path[1..].iter().map(|p| format!("/{p}")).collect()
            }
        };
        loop {
            let token = be32(blob, at);
            at += 4;
            match token {
                BEGIN_NODE => {
                    let name = cstr(blob, at);
                    at = (at + name.len() + 1).next_multiple_of(4);
                    path.push(name);
                    tree.entry(full(&path)).or_default();
                }
                END_NODE => {
                    path.pop().expect("balanced nodes");
                }
                PROP => {
                    let len = be32(blob, at) as usize;
                    let name = cstr(blob, strings + be32(blob, at + 4) as usize);
                    let value = blob[at + 8..at + 8 + len].to_vec();
                    at = (at + 8 + len).next_multiple_of(4);
                    tree.get_mut(&full(&path)).unwrap().insert(name, value);
                }
                NOP => {}
                END => break,
                other => panic!("bad FDT token {other}"),
            }
        }
        assert!(path.is_empty(), "every node ended");
        tree
    }

    fn cells(value: &[u8]) -> Vec<u32> {
        value
            .chunks(4)
            .map(|c| u32::from_be_bytes(c.try_into().unwrap()))
            .collect()
    }

    fn strings(value: &[u8]) -> Vec<String> {
        value
            .split(|&c| c == 0)
            .filter(|s| !s.is_empty())
            .map(|s| String::from_utf8(s.to_vec()).unwrap())
            .collect()
    }

    fn u64s(value: &[u8]) -> Vec<u64> {
        let c = cells(value);
        c.chunks(2)
            .map(|p| u64::from(p[0]) << 32 | u64::from(p[1]))
            .collect()
    }

    fn spec(vcpus: usize, initrd: Option<Range<u64>>) -> TreeSpec {
        TreeSpec {
            ram_size: 512 << 20,
            vcpus,
            bootargs: "console=ttyAMA0 apf.proc=scan,0,4096,10,7".into(),
            initrd,
            rng_seed: rng_seed_of(1),
        }
    }

    #[test]
    fn the_tree_has_what_linux_needs() {
        let t = parse(&device_tree(&spec(2, Some(0x4400_0000..0x4410_0000))).unwrap());
        let root = &t["/"];
        assert_eq!(cells(&root["#address-cells"]), [2]);
        assert_eq!(cells(&root["#size-cells"]), [2]);
        assert_eq!(cells(&root["interrupt-parent"]), [PHANDLE_GIC]);

        let chosen = &t["/chosen"];
        assert_eq!(
            strings(&chosen["bootargs"]),
            ["console=ttyAMA0 apf.proc=scan,0,4096,10,7"]
        );
        assert_eq!(strings(&chosen["stdout-path"]), ["/pl011@9000000"]);
        assert_eq!(u64s(&chosen["linux,initrd-start"]), [0x4400_0000]);
        assert_eq!(u64s(&chosen["linux,initrd-end"]), [0x4410_0000]);
        assert_eq!(chosen["rng-seed"], rng_seed_of(1));

        let memory = &t["/memory@40000000"];
        assert_eq!(strings(&memory["device_type"]), ["memory"]);
        assert_eq!(u64s(&memory["reg"]), [RAM_BASE, 512 << 20]);

        assert_eq!(cells(&t["/cpus"]["#address-cells"]), [1]);
        assert_eq!(cells(&t["/cpus"]["#size-cells"]), [0]);
        for (node, reg) in [("/cpus/cpu@0", 0), ("/cpus/cpu@1", 1)] {
            let cpu = &t[node];
            assert_eq!(cells(&cpu["reg"]), [reg]);
            assert_eq!(strings(&cpu["device_type"]), ["cpu"]);
            assert_eq!(strings(&cpu["enable-method"]), ["psci"]);
        }
        assert!(!t.contains_key("/cpus/cpu@2"));

        let psci = &t["/psci"];
        assert_eq!(
            strings(&psci["compatible"]),
            ["arm,psci-1.0", "arm,psci-0.2"]
        );
        assert_eq!(strings(&psci["method"]), ["hvc"]);
        let sdei = &t["/firmware/sdei"];
        assert_eq!(strings(&sdei["compatible"]), ["arm,sdei-1.0"]);
        assert_eq!(strings(&sdei["method"]), ["hvc"]);

        let gic = &t["/intc@8000000"];
        assert_eq!(strings(&gic["compatible"]), ["arm,gic-v3"]);
        assert!(gic.contains_key("interrupt-controller"));
        assert_eq!(cells(&gic["#interrupt-cells"]), [3]);
        assert_eq!(cells(&gic["phandle"]), [PHANDLE_GIC]);
        assert_eq!(
            u64s(&gic["reg"]),
            [GICD_BASE, GICD_SIZE, GICR_BASE, 2 * GICR_STRIDE],
            "one redistributor frame pair per vCPU"
        );

        let timer = &t["/timer"];
        assert_eq!(strings(&timer["compatible"]), ["arm,armv8-timer"]);
        assert_eq!(
            cells(&timer["interrupts"]),
            [1, 13, 4, 1, 14, 4, 1, 11, 4, 1, 10, 4],
            "secure, non-secure physical, virtual, hyp: INTIDs 29, 30, 27, 26"
        );

        let clock = &t["/apb-pclk"];
        assert_eq!(cells(&clock["clock-frequency"]), [UART_CLOCK_HZ]);
        let uart = &t["/pl011@9000000"];
        assert_eq!(strings(&uart["compatible"]), ["arm,pl011", "arm,primecell"]);
        assert_eq!(u64s(&uart["reg"]), [UART_BASE, UART_SIZE]);
        assert_eq!(cells(&uart["interrupts"]), [0, 1, 4], "SPI 1 = INTID 33");
        assert_eq!(
            cells(&uart["clocks"]),
            [cells(&clock["phandle"])[0], cells(&clock["phandle"])[0]]
        );
        assert_eq!(strings(&uart["clock-names"]), ["uartclk", "apb_pclk"]);
    }

    #[test]
    fn without_an_initrd_chosen_names_none() {
        let t = parse(&device_tree(&spec(1, None)).unwrap());
        assert!(!t["/chosen"].contains_key("linux,initrd-start"));
        assert!(!t["/chosen"].contains_key("linux,initrd-end"));
    }

    #[test]
    fn cpus_past_sixteen_are_in_the_next_cluster() {
        let t = parse(&device_tree(&spec(17, None)).unwrap());
        assert_eq!(cells(&t["/cpus/cpu@f"]["reg"]), [0xF]);
        assert_eq!(cells(&t["/cpus/cpu@100"]["reg"]), [0x100]);
        assert_eq!(u64s(&t["/intc@8000000"]["reg"])[3], 17 * GICR_STRIDE);
    }

    #[test]
    fn the_rng_seed_follows_the_run_seed() {
        assert_eq!(rng_seed_of(7), rng_seed_of(7));
        assert_ne!(rng_seed_of(7), rng_seed_of(8));
        assert_ne!(rng_seed_of(0), [0u8; RNG_SEED_BYTES]);
    }
}
