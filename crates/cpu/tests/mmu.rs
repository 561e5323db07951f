//! The stage-1 MMU: page tables built in RamBus memory, translations, every
//! fault kind and level with its exact ESR and FAR, permissions from EL0 and
//! EL1 (LDTR/STTR, WXN, PXN/UXN), ASID tagging and TLBI, AT/PAR_EL1,
//! unaligned and page-crossing accesses, stage-2 faults on a walk, DC ZVA,
//! and the same programs computing the same with the MMU on and off.

use apf_cpu::{AccessSize, Bus, Cpu, CpuConfig, Engine, Exit, RamBus, SysReg};

const RAM: u64 = 0x4000_0000;
const RAM_LEN: usize = 0x80_0000;
const CODE: u64 = RAM;
const VBAR: u64 = RAM + 0x1000;
const DATA: u64 = RAM + 0x10_0000;
const TABLES: u64 = RAM + 0x40_0000;

// Leaf descriptor bits.
const VALID_PAGE: u64 = 0b11;
const VALID_BLOCK: u64 = 0b01;
const AF: u64 = 1 << 10;
const NORMAL: u64 = (1 << 2) | (3 << 8) | AF; // AttrIndx 1, inner shareable
const DEVICE: u64 = AF; // AttrIndx 0
const AP_EL0: u64 = 1 << 6;
const AP_RO: u64 = 1 << 7;
const NG: u64 = 1 << 11;
const PXN: u64 = 1 << 53;
const UXN: u64 = 1 << 54;

/// T0SZ = T1SZ = 16 (48-bit VAs, level 0 start), TG1 = 4 KiB, IPS = 40 bits,
/// AS (16-bit ASIDs), A1 = 0 (ASID from TTBR0).
const TCR: u64 = 16 | (16 << 16) | (0b10 << 30) | (2 << 32) | (1 << 36);
/// Attr0 Device-nGnRnE, Attr1 Normal write-back.
const MAIR: u64 = 0xFF00;
const SCTLR_M: u64 = 1;
const SCTLR_A: u64 = 1 << 1;
const SCTLR_WXN: u64 = 1 << 19;

const EL0T: u64 = 0b0000;

struct Machine {
    cpu: Cpu,
    bus: RamBus,
    next_table: u64,
    root: u64,
}

impl Machine {
    /// MMU on, EL1h, with CODE and VBAR mapped read-only and executable at both
    /// ELs, DATA's 64 KiB mapped Normal read-write at both, all identity, ASID 1.
    fn new() -> Machine {
        Machine::with(CpuConfig::default().engine)
    }

    /// [`Machine::new`] with guest code run by `engine`.
    fn with(engine: Engine) -> Machine {
        let mut m = Machine {
            cpu: Cpu::new(CpuConfig {
                engine,
                ..CpuConfig::default()
            }),
            bus: RamBus::with_region(RAM, RAM_LEN),
            next_table: TABLES,
            root: 0,
        };
        m.root = m.table();
        for page in [CODE, VBAR] {
            m.map(m.root, page, page, NORMAL | AP_EL0 | AP_RO);
        }
        for k in 0..16 {
            let page = DATA + k * 0x1000;
            m.map(m.root, page, page, NORMAL | AP_EL0 | UXN | PXN);
        }
        m.cpu.set_sysreg(SysReg::VbarEl1, VBAR);
        m.cpu.set_sysreg(SysReg::TcrEl1, TCR);
        m.cpu.set_sysreg(SysReg::MairEl1, MAIR);
        m.cpu.set_sysreg(SysReg::Ttbr0El1, m.root | (1 << 48));
        let sctlr = m.cpu.sysreg(SysReg::SctlrEl1);
        m.cpu.set_sysreg(SysReg::SctlrEl1, sctlr | SCTLR_M);
        m
    }

    /// A zeroed page for a table.
    fn table(&mut self) -> u64 {
        let t = self.next_table;
        self.next_table += 0x1000;
        t
    }

    /// The address of the level-`level` descriptor for `va` under `root`,
    /// creating the tables above it.
    fn slot(&mut self, root: u64, va: u64, level: u32) -> u64 {
        let mut table = root;
        for l in 0..level {
            let at = table + 8 * ((va >> (39 - 9 * l)) & 0x1FF);
            let d = self.read(at);
            table = if d & 3 == 3 {
                d & 0x0000_FFFF_FFFF_F000
            } else {
                let t = self.table();
                self.write(at, t | 3);
                t
            };
        }
        table + 8 * ((va >> (39 - 9 * level)) & 0x1FF)
    }

    /// Maps the 4 KiB page at `va` to `pa` with leaf attributes `attrs`.
    fn map(&mut self, root: u64, va: u64, pa: u64, attrs: u64) {
        let at = self.slot(root, va, 3);
        self.write(at, pa | attrs | VALID_PAGE);
    }

    /// Maps the 2 MiB block at `va` to `pa`.
    fn map_block(&mut self, root: u64, va: u64, pa: u64, attrs: u64) {
        let at = self.slot(root, va, 2);
        self.write(at, pa | attrs | VALID_BLOCK);
    }

    fn read(&mut self, pa: u64) -> u64 {
        self.bus.read(pa, AccessSize::Double).unwrap()
    }

    fn write(&mut self, pa: u64, v: u64) {
        self.bus.write(pa, AccessSize::Double, v).unwrap();
    }

    /// Runs `words` from CODE for `steps` steps.
    fn run(&mut self, words: &[u32], steps: u64) -> Exit {
        assert!(self.bus.load_words(CODE, words));
        self.cpu.invalidate_decoded(CODE);
        self.cpu.set_pc(CODE);
        self.cpu.run(&mut self.bus, steps)
    }

    /// Runs one instruction at EL1 (or EL0) and returns (ESR_EL1, FAR_EL1) if it
    /// took an exception, else None.
    fn fault_of(&mut self, word: u32, el0: bool) -> Option<(u64, u64)> {
        if el0 {
            self.cpu.set_pstate(EL0T);
        } else {
            self.cpu.set_pstate(0b0101);
        }
        let before = self.cpu.sysreg(SysReg::VbarEl1);
        assert_eq!(self.run(&[word], 1), Exit::Budget);
        let took = self.cpu.pc() & !0x7FF == before;
        took.then(|| {
            (
                self.cpu.sysreg(SysReg::EsrEl1),
                self.cpu.sysreg(SysReg::FarEl1),
            )
        })
    }
}

const LDR_X0_X1: u32 = 0xF940_0020;
const STR_X2_X1: u32 = 0xF900_0022;
const LDTR_X0_X1: u32 = 0xF840_0820;
const STTR_X2_X1: u32 = 0xF800_0822;
const LDUR_X0_X1_1: u32 = 0xF840_1020;
const STUR_X2_X1_1: u32 = 0xF800_1022;
const LDP_X4_X5_X1: u32 = 0xA940_1424;
const STP_X2_X3_X1: u32 = 0xA900_0C22;
const DC_ZVA_X1: u32 = 0xD50B_7421;
const AT_S1E1R_X1: u32 = 0xD508_7801;
const AT_S1E0W_X1: u32 = 0xD508_7861;
const TLBI_VAE1_X1: u32 = 0xD508_8721;
const TLBI_ASIDE1_X1: u32 = 0xD508_8741;
const TLBI_VMALLE1: u32 = 0xD508_871F;
const TLBI_VAAE1IS_X1: u32 = 0xD508_8361;
const LDXR_X0_X1: u32 = 0xC85F_7C20;
const LDADD_X2_X0_X1: u32 = 0xF822_0020;

/// ESR_EL1 of a data abort from EL1 (EC 0x25) or EL0 (EC 0x24).
fn dabt(el0: bool, write: bool, dfsc: u64) -> u64 {
    let ec: u64 = if el0 { 0x24 } else { 0x25 };
    (ec << 26) | (1 << 25) | if write { 0x40 } else { 0 } | dfsc
}

/// ESR_EL1 of an instruction abort from EL1 (EC 0x21) or EL0 (EC 0x20).
fn iabt(el0: bool, ifsc: u64) -> u64 {
    let ec: u64 = if el0 { 0x20 } else { 0x21 };
    (ec << 26) | (1 << 25) | ifsc
}

#[test]
fn loads_and_stores_go_through_the_tables() {
    let mut m = Machine::new();
    // VA 0x1234_5000 → DATA + 0x3000, and a 2 MiB block at VA 0x8000_0000 → RAM.
    m.map(m.root, 0x1234_5000, DATA + 0x3000, NORMAL | AP_EL0);
    m.map_block(m.root, 0x8000_0000, RAM, NORMAL);
    m.write(DATA + 0x3008, 0xABCD);
    m.cpu.set_x(1, 0x1234_5008);
    assert_eq!(m.fault_of(LDR_X0_X1, false), None);
    assert_eq!(m.cpu.x(0), 0xABCD);
    m.cpu.set_x(1, 0x8010_0010); // DATA + 0x10 through the block
    m.cpu.set_x(2, 0x5555);
    assert_eq!(m.fault_of(STR_X2_X1, false), None);
    assert_eq!(m.read(DATA + 0x10), 0x5555);
    // Code runs from a VA that is not its PA: the decode cache is keyed by PA.
    m.map(m.root, 0x7000_0000, CODE, NORMAL | AP_RO);
    m.cpu.set_x(0, 0);
    assert!(m.bus.load_words(CODE, &[0x9100_0400, 0x9100_0400])); // add x0, x0, #1 twice
    m.cpu.invalidate_decoded(CODE);
    m.cpu.set_pc(0x7000_0000);
    assert_eq!(m.cpu.run(&mut m.bus, 2), Exit::Budget);
    assert_eq!((m.cpu.x(0), m.cpu.pc()), (2, 0x7000_0008));
}

#[test]
fn translation_faults_at_each_level() {
    let mut m = Machine::new();
    let a: u64 = (1 << 39) + (2 << 30) + (3 << 21) + (4 << 12);
    m.map(m.root, a, DATA, NORMAL);
    let cases = [
        (a + (1 << 39), 0x04),
        (a + (1 << 30), 0x05),
        (a + (1 << 21), 0x06),
        (a + (1 << 12), 0x07),
        // Not canonical: bits 63:48 are not copies of bit 55.
        (0x0001_0000_0000_0000, 0x04),
    ];
    for (va, dfsc) in cases {
        m.cpu.set_x(1, va + 8);
        assert_eq!(
            m.fault_of(LDR_X0_X1, false),
            Some((dabt(false, false, dfsc), va + 8)),
            "load {va:#x}"
        );
        assert_eq!(
            m.fault_of(STR_X2_X1, true),
            Some((dabt(true, true, dfsc), va + 8)),
            "store {va:#x}"
        );
    }
    // TTBR1 range: EPD1 disables its walks (level 0 fault); without it, the
    // empty TTBR1 table faults at level 0 too, and a block there translates.
    let kernel = 0xFFFF_8000_0000_0000u64;
    m.cpu.set_x(1, kernel);
    m.cpu.set_sysreg(SysReg::TcrEl1, TCR | (1 << 23));
    assert_eq!(
        m.fault_of(LDR_X0_X1, false),
        Some((dabt(false, false, 0x04), kernel))
    );
    let root1 = m.table();
    m.map_block(root1, kernel, RAM, NORMAL);
    m.cpu.set_sysreg(SysReg::TcrEl1, TCR);
    m.cpu.set_sysreg(SysReg::Ttbr1El1, root1);
    m.write(RAM + 0x20, 77);
    m.cpu.set_x(1, kernel + 0x20);
    assert_eq!(m.fault_of(LDR_X0_X1, false), None);
    assert_eq!(m.cpu.x(0), 77);
}

#[test]
fn access_flag_and_address_size_faults() {
    let mut m = Machine::new();
    m.map(m.root, 0x2000_0000, DATA, NORMAL & !AF);
    m.map_block(m.root, 0x4000_0000_0000, RAM, NORMAL & !AF);
    // An output address beyond the 40-bit PA size.
    m.map(m.root, 0x2000_1000, 1 << 41, NORMAL);
    for (va, dfsc) in [
        (0x2000_0000, 0x0B),
        (0x4000_0000_0000, 0x0A),
        (0x2000_1000, 0x03),
    ] {
        m.cpu.set_x(1, va);
        assert_eq!(
            m.fault_of(LDR_X0_X1, false),
            Some((dabt(false, false, dfsc), va)),
            "{va:#x}"
        );
    }
    // An external abort on a descriptor read: a table pointer outside RAM.
    let at = m.slot(m.root, 0x3000_0000, 2);
    m.write(at, 0x10_0000_0000 | 3);
    m.cpu.set_x(1, 0x3000_0000);
    assert_eq!(
        m.fault_of(LDR_X0_X1, false),
        Some((dabt(false, false, 0x17), 0x3000_0000))
    );
}

#[test]
fn permissions_from_el0_and_el1() {
    let mut m = Machine::new();
    let el1_rw = 0x2000_0000u64;
    let el1_ro = 0x2000_1000u64;
    let all_ro = 0x2000_2000u64;
    m.map(m.root, el1_rw, DATA, NORMAL);
    m.map(m.root, el1_ro, DATA, NORMAL | AP_RO);
    m.map(m.root, all_ro, DATA, NORMAL | AP_RO | AP_EL0);
    let perm = 0x0F;
    // (instruction, va, el0, fault expected)
    let cases = [
        (LDR_X0_X1, el1_rw, false, None),
        (STR_X2_X1, el1_rw, false, None),
        (LDR_X0_X1, el1_rw, true, Some(dabt(true, false, perm))),
        (STR_X2_X1, el1_ro, false, Some(dabt(false, true, perm))),
        (LDR_X0_X1, el1_ro, false, None),
        (LDR_X0_X1, all_ro, true, None),
        (STR_X2_X1, all_ro, true, Some(dabt(true, true, perm))),
        // LDTR/STTR at EL1 check EL0's permissions.
        (LDTR_X0_X1, el1_rw, false, Some(dabt(false, false, perm))),
        (STTR_X2_X1, el1_rw, false, Some(dabt(false, true, perm))),
        (LDTR_X0_X1, all_ro, false, None),
        (STTR_X2_X1, all_ro, false, Some(dabt(false, true, perm))),
        (STTR_X2_X1, DATA, false, None),
        (LDTR_X0_X1, all_ro, true, None),
    ];
    for (word, va, el0, want) in cases {
        m.cpu.set_x(1, va);
        assert_eq!(
            m.fault_of(word, el0),
            want.map(|esr| (esr, va)),
            "{word:#x} at {va:#x} from EL{}",
            u8::from(!el0)
        );
    }
}

#[test]
fn execute_permissions_pxn_uxn_and_wxn() {
    let mut m = Machine::new();
    // The code page: PXN (EL1 cannot run it), then UXN (EL0 cannot).
    let code = m.slot(m.root, CODE, 3);
    let nop = 0xD503_201F;
    let base = CODE | VALID_PAGE | NORMAL | AP_EL0 | AP_RO;
    for (attrs, el0, want) in [
        (base | PXN, false, Some(iabt(false, 0x0F))),
        (base | PXN, true, None),
        (base | UXN, true, Some(iabt(true, 0x0F))),
        (base | UXN, false, None),
        // Writable at EL0: EL1 may not execute it.
        (base & !AP_RO, false, Some(iabt(false, 0x0F))),
    ] {
        m.write(code, attrs);
        m.cpu.flush_tlb();
        assert_eq!(
            m.fault_of(nop, el0),
            want.map(|esr| (esr, CODE)),
            "{attrs:#x}"
        );
    }
    // WXN: a page writable at EL1 is not executable; read-only still is.
    m.write(code, (base & !(AP_RO | AP_EL0)) | UXN);
    m.cpu.flush_tlb();
    assert_eq!(m.fault_of(nop, false), None);
    let sctlr = m.cpu.sysreg(SysReg::SctlrEl1);
    m.cpu.set_sysreg(SysReg::SctlrEl1, sctlr | SCTLR_WXN);
    assert_eq!(m.fault_of(nop, false), Some((iabt(false, 0x0F), CODE)));
    m.write(code, base);
    m.cpu.flush_tlb();
    assert_eq!(m.fault_of(nop, false), None);
    // A fetch from an unmapped VA: translation fault level 3 with FAR = PC.
    m.cpu.set_sysreg(SysReg::SctlrEl1, sctlr);
    m.cpu.set_pc(CODE + 0x2000);
    assert_eq!(m.cpu.run(&mut m.bus, 1), Exit::Budget);
    assert_eq!(m.cpu.sysreg(SysReg::EsrEl1), iabt(false, 0x07));
    assert_eq!(m.cpu.sysreg(SysReg::FarEl1), CODE + 0x2000);
    assert_eq!(m.cpu.sysreg(SysReg::ElrEl1), CODE + 0x2000);
}

#[test]
fn table_level_controls_apply_to_the_whole_subtree() {
    let mut m = Machine::new();
    let va = 0x5000_0000u64;
    m.map(m.root, va, DATA, NORMAL | AP_EL0);
    // APTable[1] (bit 62) on the level-2 table descriptor: read-only below.
    let l2 = m.slot(m.root, va, 2);
    let table = m.read(l2);
    m.write(l2, table | (1 << 62));
    m.cpu.set_x(1, va);
    assert_eq!(
        m.fault_of(STR_X2_X1, false),
        Some((dabt(false, true, 0x0F), va))
    );
    // APTable[0] (bit 61): no EL0 access below.
    m.write(l2, table | (1 << 61));
    m.cpu.flush_tlb();
    assert_eq!(m.fault_of(LDR_X0_X1, false), None);
    assert_eq!(
        m.fault_of(LDR_X0_X1, true),
        Some((dabt(true, false, 0x0F), va))
    );
}

#[test]
fn asid_tagging_and_tlbi() {
    let mut m = Machine::new();
    let private = 0x6000_0000u64; // nG
    let shared = 0x6000_1000u64; // global
    let (pa_a, pa_b) = (DATA + 0x1000, DATA + 0x2000);
    m.write(pa_a, 0xA);
    m.write(pa_b, 0xB);
    m.map(m.root, private, pa_a, NORMAL | NG);
    m.map(m.root, shared, pa_a, NORMAL);
    let root2 = m.table();
    for page in [CODE, VBAR] {
        m.map(root2, page, page, NORMAL | AP_EL0 | AP_RO);
    }
    m.map(root2, private, pa_b, NORMAL | NG);
    m.map(root2, shared, pa_b, NORMAL);
    let load = |m: &mut Machine, va: u64| {
        m.cpu.set_x(1, va);
        assert_eq!(m.fault_of(LDR_X0_X1, false), None);
        m.cpu.x(0)
    };
    assert_eq!(load(&mut m, private), 0xA);
    assert_eq!(load(&mut m, shared), 0xA);
    // ASID 2 with the other tables: the nG entry of ASID 1 does not match,
    // the global one does (until a TLBI).
    m.cpu.set_sysreg(SysReg::Ttbr0El1, root2 | (2 << 48));
    assert_eq!(load(&mut m, private), 0xB);
    assert_eq!(
        load(&mut m, shared),
        0xA,
        "global entry survives the switch"
    );
    m.cpu.set_x(1, shared >> 12);
    assert_eq!(m.fault_of(TLBI_VAAE1IS_X1, false), None);
    assert_eq!(load(&mut m, shared), 0xB);
    // Back to ASID 1. Its nG entry may have been evicted (the TLB is
    // direct-mapped), so load it again, then change the tables: the cached
    // entry stays in use until a TLBI ASIDE1 for ASID 1.
    let root = m.root;
    m.cpu.set_sysreg(SysReg::Ttbr0El1, root | (1 << 48));
    assert_eq!(load(&mut m, private), 0xA);
    let at = m.slot(root, private, 3);
    m.write(at, pa_b | NORMAL | NG | VALID_PAGE);
    assert_eq!(load(&mut m, private), 0xA, "cached under ASID 1");
    m.cpu.set_x(1, 2 << 48);
    assert_eq!(m.fault_of(TLBI_ASIDE1_X1, false), None);
    assert_eq!(load(&mut m, private), 0xA, "ASID 2 flushed, not 1");
    m.cpu.set_x(1, 1 << 48);
    assert_eq!(m.fault_of(TLBI_ASIDE1_X1, false), None);
    assert_eq!(load(&mut m, private), 0xB);
    // TLBI VAE1 (with ASID 1) and VMALLE1.
    m.write(at, pa_a | NORMAL | NG | VALID_PAGE);
    assert_eq!(load(&mut m, private), 0xB);
    m.cpu.set_x(1, (1 << 48) | (private >> 12));
    assert_eq!(m.fault_of(TLBI_VAE1_X1, false), None);
    assert_eq!(load(&mut m, private), 0xA);
    m.write(at, pa_b | NORMAL | NG | VALID_PAGE);
    assert_eq!(m.fault_of(TLBI_VMALLE1, false), None);
    assert_eq!(load(&mut m, private), 0xB);
    // A TLBI by VA inside a 2 MiB block drops the whole block.
    m.map_block(m.root, 0x7000_0000, RAM, NORMAL);
    m.write(RAM + 0x10_0000, 1);
    assert_eq!(load(&mut m, 0x7010_0000), 1);
    let block = m.slot(m.root, 0x7000_0000, 2);
    m.write(block, (RAM + 0x20_0000) | NORMAL | VALID_BLOCK);
    m.cpu.set_x(1, 0x7000_0000 >> 12);
    assert_eq!(m.fault_of(TLBI_VAAE1IS_X1, false), None);
    assert_eq!(load(&mut m, 0x7010_0000), 0, "new block");
}

#[test]
fn at_writes_par_el1() {
    let mut m = Machine::new();
    m.map(m.root, 0x2000_0000, DATA + 0x5000, NORMAL);
    m.map(m.root, 0x2000_1000, DATA + 0x6000, DEVICE | AP_EL0 | AP_RO);
    let par = |m: &mut Machine, word: u32, va: u64| {
        m.cpu.set_x(1, va);
        assert_eq!(m.fault_of(word, false), None);
        m.cpu.sysreg(SysReg::ParEl1)
    };
    // Success: ATTR (MAIR byte) 63:56, PA 47:12, SH 8:7, bit 11 RES1.
    assert_eq!(
        par(&mut m, AT_S1E1R_X1, 0x2000_0123),
        (0xFF << 56) | (DATA + 0x5000) | (3 << 7) | (1 << 11)
    );
    assert_eq!(
        par(&mut m, AT_S1E1R_X1, 0x2000_1000),
        (DATA + 0x6000) | (2 << 7) | (1 << 11)
    );
    // Failure: F = 1, FST = the fault status (permission level 3 for an EL0
    // write to read-only memory, translation level 3 for nothing there).
    assert_eq!(
        par(&mut m, AT_S1E0W_X1, 0x2000_1000),
        1 | (0x0F << 1) | (1 << 11)
    );
    assert_eq!(
        par(&mut m, AT_S1E0W_X1, 0x2000_2000),
        1 | (0x07 << 1) | (1 << 11)
    );
    // MMU off: PA = VA.
    let sctlr = m.cpu.sysreg(SysReg::SctlrEl1);
    m.cpu.set_sysreg(SysReg::SctlrEl1, sctlr & !SCTLR_M);
    assert_eq!(
        par(&mut m, AT_S1E1R_X1, DATA + 0x10),
        DATA | (2 << 7) | (1 << 11)
    );
}

#[test]
fn unaligned_normal_accesses_and_device_alignment() {
    let mut m = Machine::new();
    m.map(m.root, 0x2000_0000, DATA + 0x1000, DEVICE);
    for k in 0..16 {
        m.bus
            .write(DATA + 0x7F0 + k, AccessSize::Byte, 0x10 + k)
            .unwrap();
    }
    // Normal memory: an unaligned load and store, and a pair.
    m.cpu.set_x(1, DATA + 0x7F0);
    assert_eq!(m.fault_of(LDUR_X0_X1_1, false), None);
    assert_eq!(m.cpu.x(0), 0x1817_1615_1413_1211);
    m.cpu.set_x(2, 0x8877_6655_4433_2211);
    assert_eq!(m.fault_of(STUR_X2_X1_1, false), None);
    assert_eq!(m.read(DATA + 0x7F0), 0x7766_5544_3322_1110);
    m.cpu.set_x(1, DATA + 0x7F3);
    assert_eq!(m.fault_of(LDP_X4_X5_X1, false), None);
    assert_eq!(m.cpu.x(4), 0x1A19_8877_6655_4433);
    // SCTLR.A makes it an alignment fault.
    let sctlr = m.cpu.sysreg(SysReg::SctlrEl1);
    m.cpu.set_sysreg(SysReg::SctlrEl1, sctlr | SCTLR_A);
    m.cpu.set_x(1, DATA + 0x7F0);
    assert_eq!(
        m.fault_of(LDUR_X0_X1_1, false),
        Some((dabt(false, false, 0x21), DATA + 0x7F1))
    );
    m.cpu.set_sysreg(SysReg::SctlrEl1, sctlr);
    // Device memory: alignment fault.
    m.cpu.set_x(1, 0x2000_0000);
    assert_eq!(
        m.fault_of(STUR_X2_X1_1, false),
        Some((dabt(false, true, 0x21), 0x2000_0001))
    );
    // Exclusives and atomics must be aligned even in Normal memory.
    m.cpu.set_x(1, DATA + 4);
    assert_eq!(
        m.fault_of(LDXR_X0_X1, false),
        Some((dabt(false, false, 0x21), DATA + 4))
    );
    assert_eq!(
        m.fault_of(LDADD_X2_X0_X1, false),
        Some((dabt(false, true, 0x21), DATA + 4))
    );
    // So must LDAR and STLR (ldar x0, [x1]; stlr x2, [x1]).
    assert_eq!(
        m.fault_of(0xC8DF_FC20, false),
        Some((dabt(false, false, 0x21), DATA + 4))
    );
    assert_eq!(
        m.fault_of(0xC89F_FC22, false),
        Some((dabt(false, true, 0x21), DATA + 4))
    );
    // Aligned, they work through the translation.
    m.cpu.set_x(1, DATA + 8);
    m.write(DATA + 8, 40);
    m.cpu.set_x(2, 2);
    assert_eq!(m.fault_of(LDADD_X2_X0_X1, false), None);
    assert_eq!((m.cpu.x(0), m.read(DATA + 8)), (40, 42));
}

#[test]
fn page_crossing_accesses_translate_both_pages_first() {
    let mut m = Machine::new();
    // VA 0x2000_0000 → DATA + 0x3000, VA 0x2000_1000 → DATA + 0x8000: the
    // second half of a crossing access lands on a non-adjacent PA page.
    m.map(m.root, 0x2000_0000, DATA + 0x3000, NORMAL);
    m.map(m.root, 0x2000_1000, DATA + 0x8000, NORMAL);
    m.cpu.set_x(1, 0x2000_0FFC);
    m.cpu.set_x(2, 0x1122_3344_5566_7788);
    m.cpu.set_x(3, 0x99AA_BBCC_DDEE_FF00);
    assert_eq!(m.fault_of(STP_X2_X3_X1, false), None);
    assert_eq!(
        m.bus.slice(DATA + 0x3FFC, 4).unwrap(),
        &[0x88, 0x77, 0x66, 0x55]
    );
    assert_eq!(m.read(DATA + 0x8000) & 0xFFFF_FFFF, 0x1122_3344);
    assert_eq!(m.read(DATA + 0x8004), 0x99AA_BBCC_DDEE_FF00);
    m.cpu.set_x(1, 0x2000_0FFB);
    assert_eq!(m.fault_of(LDUR_X0_X1_1, false), None);
    assert_eq!(m.cpu.x(0), 0x1122_3344_5566_7788);
    // A fault on the second page: no effect on the first, FAR = the second page.
    m.cpu.set_x(1, 0x2000_1FFC);
    assert_eq!(
        m.fault_of(STUR_X2_X1_1, false),
        Some((dabt(false, true, 0x07), 0x2000_2000))
    );
    assert_eq!(m.read(DATA + 0x8FF8), 0, "first page untouched");
    // A stage-2 fault on the second page's data: an exit, nothing written.
    m.map(m.root, 0x2000_2000, DATA + 0xA000, NORMAL);
    m.bus.set_unmapped(DATA + 0xA000, true);
    m.cpu.set_pstate(0b0101);
    assert!(m.bus.load_words(CODE, &[STUR_X2_X1_1]));
    m.cpu.invalidate_decoded(CODE);
    m.cpu.set_pc(CODE);
    match m.cpu.run(&mut m.bus, 1) {
        Exit::Stage2Abort { far, hpfar, .. } => {
            assert_eq!((far, hpfar), (0x2000_2000, ((DATA + 0xA000) >> 12) << 4));
        }
        other => panic!("expected a stage-2 abort, got {other:?}"),
    }
    assert_eq!(m.cpu.pc(), CODE);
    assert_eq!(m.read(DATA + 0x8FF8), 0, "nothing written before the exit");
    m.bus.set_unmapped(DATA + 0xA000, false);
    assert_eq!(m.cpu.run(&mut m.bus, 1), Exit::Budget);
    assert_eq!(m.read(DATA + 0x8FF8), 0x6677_8800_0000_0000);
    assert_eq!(m.read(DATA + 0xA000), 0x11_2233_4455);
}

#[test]
fn stage2_fault_on_a_walk_reports_s1ptw_and_the_descriptor_page() {
    let mut m = Machine::new();
    let va = 0x2345_6000u64;
    m.map(m.root, va, DATA, NORMAL);
    let l3 = m.slot(m.root, va, 3) & !0xFFF;
    m.bus.set_unmapped(l3, true);
    m.cpu.set_x(1, va + 0x18);
    assert!(m.bus.load_words(CODE, &[STR_X2_X1]));
    m.cpu.set_pc(CODE);
    let regs: Vec<u64> = (0..31).map(|r| m.cpu.x(r)).collect();
    // EC 0x24, IL, ISV = 0, S1PTW, WnR = 0 (the walk reads), DFSC level 3.
    assert_eq!(
        m.cpu.run(&mut m.bus, 1),
        Exit::Stage2Abort {
            esr_el2: 0x9200_0087,
            far: va + 0x18,
            hpfar: (l3 >> 12) << 4,
        }
    );
    assert_eq!((0..31).map(|r| m.cpu.x(r)).collect::<Vec<_>>(), regs);
    assert_eq!(m.cpu.pc(), CODE);
    m.bus.set_unmapped(l3, false);
    assert_eq!(m.cpu.run(&mut m.bus, 1), Exit::Budget);
    assert_eq!(m.read(DATA), 0);
    // The same for an instruction fetch: EC 0x20 with S1PTW.
    let code_va = 0x3000_0000u64;
    m.map(m.root, code_va, CODE, NORMAL | AP_RO);
    let l3 = m.slot(m.root, code_va, 3) & !0xFFF;
    m.bus.set_unmapped(l3, true);
    m.cpu.set_pc(code_va);
    assert_eq!(
        m.cpu.run(&mut m.bus, 1),
        Exit::Stage2Abort {
            esr_el2: 0x8200_0087,
            far: code_va,
            hpfar: (l3 >> 12) << 4,
        }
    );
    // And a stage-2 fault on the data itself: FAR = VA, HPFAR = the PA's page.
    m.bus.set_unmapped(l3, false);
    m.map(m.root, 0x2000_0000, DATA + 0x4000, NORMAL);
    m.bus.set_unmapped(DATA + 0x4000, true);
    m.cpu.set_x(1, 0x2000_0010);
    assert!(m.bus.load_words(CODE, &[LDR_X0_X1]));
    m.cpu.invalidate_decoded(CODE);
    m.cpu.set_pc(CODE);
    assert_eq!(
        m.cpu.run(&mut m.bus, 1),
        Exit::Stage2Abort {
            esr_el2: 0x93C0_8007,
            far: 0x2000_0010,
            hpfar: ((DATA + 0x4000) >> 12) << 4,
        }
    );
}

#[test]
fn dc_zva_zeroes_64_bytes_of_normal_memory() {
    let mut m = Machine::new();
    for k in 0..32 {
        m.write(DATA + 0x100 + 8 * k, u64::MAX);
    }
    m.cpu.set_x(1, DATA + 0x148);
    assert_eq!(m.fault_of(DC_ZVA_X1, false), None);
    for k in 0..32 {
        let want = if (8..16).contains(&k) { 0 } else { u64::MAX };
        assert_eq!(m.read(DATA + 0x100 + 8 * k), want, "doubleword {k}");
    }
    // DCZID_EL0: 64-byte blocks, permitted.
    assert_eq!(m.run(&[0xD53B_00E0], 1), Exit::Budget); // mrs x0, dczid_el0
    assert_eq!(m.cpu.x(0), 4);
    // Device memory: alignment fault; read-only: permission fault (WnR).
    m.map(m.root, 0x2000_0000, DATA, DEVICE);
    m.map(m.root, 0x2000_1000, DATA, NORMAL | AP_RO);
    m.cpu.set_x(1, 0x2000_0040);
    assert_eq!(
        m.fault_of(DC_ZVA_X1, false),
        Some((dabt(false, true, 0x21), 0x2000_0040))
    );
    m.cpu.set_x(1, 0x2000_1040);
    assert_eq!(
        m.fault_of(DC_ZVA_X1, false),
        Some((dabt(false, true, 0x0F), 0x2000_1040))
    );
    // At EL0 it traps (EC 0x18) unless SCTLR_EL1.DZE, and DCZID says so (DZP).
    m.cpu.set_x(1, DATA);
    let (esr, _) = m.fault_of(DC_ZVA_X1, true).unwrap();
    assert_eq!(esr >> 26, 0x18);
    m.cpu.set_pstate(EL0T);
    assert_eq!(m.run(&[0xD53B_00E0], 1), Exit::Budget);
    assert_eq!(m.cpu.x(0), 0x14);
}

#[test]
fn tagged_pointers_with_tbi0() {
    let mut m = Machine::new();
    m.write(DATA + 0x30, 0x77);
    let tagged = (0x5Au64 << 56) | (DATA + 0x30);
    m.cpu.set_x(1, tagged);
    assert_eq!(
        m.fault_of(LDR_X0_X1, false),
        Some((dabt(false, false, 0x04), tagged)),
        "without TBI0 the top byte makes it non-canonical"
    );
    m.cpu.set_sysreg(SysReg::TcrEl1, TCR | (1 << 37));
    assert_eq!(m.fault_of(LDR_X0_X1, false), None);
    assert_eq!(m.cpu.x(0), 0x77);
}

/// The interpreter benchmark's memory workload and a call/return loop give
/// the same registers and memory with the MMU off and on over an identity map.
#[test]
fn identity_map_computes_what_flat_memory_computes() {
    let program = [
        0xD280_0004, // outer: mov x4, #0
        0xF864_7822, // inner: ldr x2, [x1, x4, lsl #3]
        0x8B02_0000, // add x0, x0, x2
        0xF824_7860, // str x0, [x3, x4, lsl #3]
        0xF840_1066, // ldur x6, [x3, #1] (unaligned only with the MMU on)
        0x9100_0484, // add x4, x4, #1
        0xEB05_009F, // cmp x4, x5
        0x54FF_FF41, // b.ne inner
        0x17FF_FFF8, // b outer
    ];
    let run = |mmu: bool| {
        let mut m = Machine::new();
        // Identity over all of RAM with 2 MiB blocks, Normal memory.
        let root = m.table();
        for k in 0..(RAM_LEN as u64 >> 21) {
            let block = RAM + (k << 21);
            m.map_block(root, block, block, NORMAL);
        }
        m.cpu.set_sysreg(SysReg::Ttbr0El1, root);
        if !mmu {
            let sctlr = m.cpu.sysreg(SysReg::SctlrEl1);
            m.cpu.set_sysreg(SysReg::SctlrEl1, sctlr & !SCTLR_M);
        }
        for k in 0..64 {
            m.write(DATA + 8 * k, k * k + 1);
        }
        m.cpu.set_x(1, DATA);
        m.cpu.set_x(3, DATA + 0x1000);
        m.cpu.set_x(5, 64);
        let mut words = program.to_vec();
        if !mmu {
            words[4] = 0xF940_0466; // ldr x6, [x3] (Device needs alignment)
        }
        let exit = m.run(&words, 10_000);
        let out: Vec<u64> = (0..64).map(|k| m.read(DATA + 0x1000 + 8 * k)).collect();
        (exit, m.cpu.x(0), m.cpu.x(4), m.cpu.pc(), out)
    };
    let (off, on) = (run(false), run(true));
    assert_eq!(off.0, Exit::Budget);
    assert_eq!(off, on);
}

/// The system registers the stock Linux kernel touches at boot.
#[test]
fn boot_system_registers() {
    let mut m = Machine::new();
    let exec = |m: &mut Machine, word: u32, x2: u64| {
        m.cpu.set_x(2, x2);
        m.cpu.set_x(0, 0xDEAD);
        let fault = m.fault_of(word, false);
        (fault.map(|(esr, _)| esr >> 26), m.cpu.x(0))
    };
    // Debug registers: RAZ/WI.
    assert_eq!(exec(&mut m, 0xD510_0242, 0x8000), (None, 0xDEAD)); // msr mdscr_el1, x2
    assert_eq!(exec(&mut m, 0xD530_0240, 0), (None, 0)); // mrs x0, mdscr_el1
    assert_eq!(exec(&mut m, 0xD510_0582, 0x1234), (None, 0xDEAD)); // msr dbgbvr5_el1, x2
    assert_eq!(exec(&mut m, 0xD530_03E0, 0), (None, 0)); // mrs x0, dbgwcr3_el1
    assert_eq!(exec(&mut m, 0xD510_1382, 1), (None, 0xDEAD)); // msr osdlr_el1, x2
    // The OS lock: locked at reset, cleared by OSLAR.
    assert_eq!(exec(&mut m, 0xD530_1180, 0), (None, 0b1010)); // mrs x0, oslsr_el1
    assert_eq!(exec(&mut m, 0xD510_109F, 0), (None, 0xDEAD)); // msr oslar_el1, xzr
    assert_eq!(exec(&mut m, 0xD530_1180, 0), (None, 0b1000));
    // PMU: RAZ/WI at EL1.
    assert_eq!(exec(&mut m, 0xD51B_9E1F, 0), (None, 0xDEAD)); // msr pmuserenr_el0, xzr
    assert_eq!(exec(&mut m, 0xD53B_9C00, 0), (None, 0)); // mrs x0, pmcr_el0
    // ID registers: CSV2/CSV3, GICv3, FP/AdvSIMD absent; 16-bit ASIDs, 40-bit
    // PA, 4 KiB granule only; debug v8 with 6 breakpoints and 4 watchpoints.
    assert_eq!(exec(&mut m, 0xD538_0400, 0), (None, 0x1100_0000_01FF_0011));
    assert_eq!(exec(&mut m, 0xD538_0700, 0), (None, 0x0F00_0022));
    assert_eq!(exec(&mut m, 0xD538_0500, 0), (None, 0x0030_5006));
    // FEAT_TLBIRANGE is not advertised: TLBI RVAE1IS is UNDEFINED.
    assert_eq!(exec(&mut m, 0xD508_8221, 0), (Some(0), 0xDEAD));
    // From EL0 the debug registers are UNDEFINED.
    m.cpu.set_x(0, 0xDEAD);
    assert_eq!(
        m.fault_of(0xD530_0240, true).map(|(esr, _)| esr >> 26),
        Some(0)
    );
}

/// What a program that ends in an HVC left behind.
#[derive(Debug, PartialEq, Eq)]
struct End {
    x: [u64; 11],
    esr: u64,
    far: u64,
    data: [u64; 2],
    /// Instructions retired: a compiled run that went round a loop more often
    /// (a stale direct page) can end in the same registers when the budget's
    /// end puts it on the single-op path.
    retired: u64,
}

/// Runs `words` at EL1 from CODE under each engine (the compiler compiling
/// every block at its first entry) after `setup`, to an HVC from a vector or
/// the program, and checks that both end in the same state. A block is built
/// only once all its ops were decoded, so code that runs once stays on the
/// single-op path: the programs below loop, so that compiled code fills direct
/// pages and then meets the exception-level change, TLBI or TTBR write that
/// must forget them.
fn both_engines(words: &[u32], setup: impl Fn(&mut Machine)) -> End {
    let run = |engine| {
        let mut m = Machine::with(engine);
        assert!(m.bus.load_words(VBAR, &[HVC1; 0x800 / 4]));
        m.cpu.invalidate_decoded(VBAR);
        setup(&mut m);
        m.cpu.set_pstate(0b0101);
        assert!(matches!(m.run(words, 10_000), Exit::Hvc { .. }));
        End {
            x: std::array::from_fn(|i| m.cpu.x(i)),
            esr: m.cpu.sysreg(SysReg::EsrEl1),
            far: m.cpu.sysreg(SysReg::FarEl1),
            data: [m.read(DATA), m.read(DATA + 0x1000)],
            retired: m.cpu.retired(),
        }
    };
    let interpreted = run(Engine::Interpreter);
    assert_eq!(run(Engine::Compiler { after: 0 }), interpreted);
    interpreted
}

const HVC0: u32 = 0xD400_0002;
const HVC1: u32 = 0xD400_0022;
const ERET: u32 = 0xD69F_03E0;
const ISB: u32 = 0xD503_3FDF;
const STR_X5_X4: u32 = 0xF900_0085;
const MSR_TTBR0_X7: u32 = 0xD518_2007;
const TLBI_VAE1_X6: u32 = 0xD508_8726;
const SUBS_X9_1: u32 = 0xF100_0529;
const MOV_X9_1: u32 = 0xD280_0029;
const MOV_X10_1: u32 = 0xD280_002A;
/// b.ne back over the two ops before it.
const BNE_BACK_2: u32 = 0x54FF_FFC1;
/// Passes of a loop before the one that must see the change: the first
/// decodes its ops, the second builds, compiles and runs the block (whose
/// access misses and fills the direct page), the rest go direct.
const PASSES: u64 = 4;

#[test]
fn direct_pages_end_at_an_exception_level_change() {
    // The loop reads a page EL0 may not at EL1, then ERETs to itself at EL0,
    // where the same compiled read must fault.
    let el1_only = 0x2000_0000u64;
    let end = both_engines(
        &[LDR_X0_X1, SUBS_X9_1, BNE_BACK_2, MOV_X9_1, ERET],
        |m: &mut Machine| {
            m.map(m.root, el1_only, DATA, NORMAL);
            m.write(DATA, 0x5EC);
            m.cpu.set_x(1, el1_only);
            m.cpu.set_x(9, PASSES);
            m.cpu.set_sysreg(SysReg::ElrEl1, CODE);
            m.cpu.set_sysreg(SysReg::SpsrEl1, EL0T);
        },
    );
    assert_eq!(end.x[0], 0x5EC);
    assert_eq!(end.x[9], 1, "EL0 faulted on its first pass");
    assert_eq!((end.esr, end.far), (dabt(true, false, 0x0F), el1_only));
}

#[test]
fn direct_pages_end_at_a_tlbi() {
    // The loop stores to a page; then the page becomes read-only in the
    // tables and a TLBI VAE1 drops it: the loop's next store must fault.
    let va = 0x2000_0000u64;
    let end = both_engines(
        &[
            STR_X2_X1,
            SUBS_X9_1,
            BNE_BACK_2,
            STR_X5_X4,
            TLBI_VAE1_X6,
            MOV_X9_1,
            0x17FF_FFFA, // b to the start
        ],
        |m: &mut Machine| {
            m.map(m.root, va, DATA, NORMAL);
            // The tables, identity-mapped so that the program can write them.
            m.map_block(m.root, TABLES, TABLES, NORMAL);
            let at = m.slot(m.root, va, 3);
            m.cpu.set_x(1, va);
            m.cpu.set_x(2, 0xD1);
            m.cpu.set_x(4, at);
            m.cpu.set_x(5, DATA | NORMAL | AP_RO | VALID_PAGE);
            m.cpu.set_x(6, (1 << 48) | (va >> 12));
            m.cpu.set_x(9, PASSES);
        },
    );
    assert_eq!(end.data[0], 0xD1);
    assert_eq!(
        end.x[9], 1,
        "the store faulted on the first pass after the TLBI"
    );
    assert_eq!((end.esr, end.far), (dabt(false, true, 0x0F), va));
}

#[test]
fn direct_pages_end_at_a_ttbr_write() {
    // The loop reads a VA under ASID 1, then under ASID 2, where it reaches
    // another page.
    let va = 0x6000_0000u64;
    let end = both_engines(
        &[
            LDR_X0_X1,
            SUBS_X9_1,
            BNE_BACK_2,
            0xB500_00CA, // cbnz x10 to the hvc
            MSR_TTBR0_X7,
            ISB,
            MOV_X9_1,
            MOV_X10_1,
            0x17FF_FFF8, // b to the start
            HVC0,
        ],
        |m: &mut Machine| {
            m.write(DATA, 0xA);
            m.write(DATA + 0x1000, 0xB);
            m.map(m.root, va, DATA, NORMAL | NG);
            let root2 = m.table();
            for page in [CODE, VBAR] {
                m.map(root2, page, page, NORMAL | AP_EL0 | AP_RO);
            }
            m.map(root2, va, DATA + 0x1000, NORMAL | NG);
            m.cpu.set_x(1, va);
            m.cpu.set_x(7, root2 | (2 << 48));
            m.cpu.set_x(9, PASSES);
        },
    );
    assert_eq!((end.x[0], end.x[10]), (0xB, 1));
}

#[test]
fn stores_into_code_never_go_direct() {
    // MMU off: the loop stores an ADD into its own page, then runs it; the
    // second pass stores another. A direct store would skip the decode
    // cache's check and run the first ADD twice.
    let add_1 = 0x9100_0400; // add x0, x0, #1
    let add_16 = 0x9100_4000; // add x0, x0, #16
    let target = CODE + 0x40;
    let mut words = vec![
        0xB900_0085, // str w5, [x4]
        0x9400_000F, // bl target (+0x3C from 0x04)
        0xAA06_03E5, // mov x5, x6
        0xF100_0529, // subs x9, x9, #1
        0x54FF_FF81, // b.ne the start (-0x10)
        HVC0,
    ];
    words.resize(0x40 / 4, 0xD503_201F);
    words.extend([0xD503_201F, 0xD65F_03C0]); // target: nop (replaced), ret
    let end = both_engines(&words, |m: &mut Machine| {
        let sctlr = m.cpu.sysreg(SysReg::SctlrEl1);
        m.cpu.set_sysreg(SysReg::SctlrEl1, sctlr & !SCTLR_M);
        m.cpu.set_x(4, target);
        m.cpu.set_x(5, add_1);
        m.cpu.set_x(6, add_16);
        m.cpu.set_x(9, 2);
    });
    assert_eq!(end.x[0], 17);
}
