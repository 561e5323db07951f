/*
 * mmu_stage1 (1 vCPU): the stage-1 MMU at EL1 and EL0, observed. Unlike the
 * other images it does not judge what it sees: it prints one line per
 * observation, `OBS <name> <field>=0x<hex> ...`, then `DONE`, and
 * crates/vm/tests/mmu_oracle.rs runs it on QEMU (the reference) and on apf and
 * compares the lines. Only values the Arm ARM defines are printed:
 *
 * - ESR_EL1 as esr_arch() keeps it: EC, IL, ISV, the instruction syndrome
 *   (ISS[23:14]) only when ISV is 1, FnV, EA, CM, S1PTW, WnR and the fault
 *   status code. ISV itself is kept: the Arm ARM sets it for stage-2 aborts
 *   reported in ESR_EL2, so a stage-1 fault taken to EL1 reports 0. VNCR, SET
 *   and ESR[63:32] are masked (later features, RES0 here).
 * - PAR_EL1 as par_arch() keeps it: F=0: ATTR, PA, SH, bit 11 (RES1);
 *   F=1: FST, PTW, S, bit 11. NS (UNKNOWN for a Non-secure regime) and the
 *   IMPLEMENTATION DEFINED bits are masked.
 * - FAR_EL1 whole, except where the Arm ARM lets the address vary: an access
 *   that crosses into a faulting page reports some address in that page
 *   (far_page = FAR & ~0xfff), DC ZVA some address in its block
 *   (far_block = FAR & ~63).
 * - A faulting store leaves the Normal memory it would write UNKNOWN, and a
 *   faulting load its destination register: neither is printed. What is
 *   printed is the value after the handler fixed the descriptor and the
 *   access was retried.
 * - No value that depends on what a TLB happens to hold: a descriptor is only
 *   changed with break-before-make and the TLB maintenance under test in
 *   between, and a translation is only read where every entry a TLB may hold
 *   for it gives the same answer.
 *
 * The image maps itself (text read-only and executable, the rest writable
 * and never executable, so SCTLR_EL1.WXN can be set), the UART and the GIC as
 * Device memory and RAM as 2 MiB blocks, all global, and a test area of pages,
 * blocks and holes in both halves of the address space; page-table layout
 * below. Its own vector table records faults and recovers from them: skip
 * the instruction, return from a branch to a page that cannot execute, or
 * fix the descriptor and retry.
 */
#include "rt.h"

/* --- Translation table descriptors (4 KiB granule) --- */
#define D_VALID		1ul
#define D_BLOCK		1ul		/* levels 1 and 2 */
#define D_TABLE		3ul		/* levels 0..2; a page at level 3 */
#define D_PAGE		3ul
#define D_ATTR(i)	((u64)(i) << 2)	/* AttrIndx into MAIR_EL1 */
#define D_EL0		(1ul << 6)	/* AP[1]: EL0 may access */
#define D_RO		(1ul << 7)	/* AP[2]: read-only */
#define D_SH_OUTER	(2ul << 8)
#define D_SH_INNER	(3ul << 8)
#define D_AF		(1ul << 10)
#define D_NG		(1ul << 11)
#define D_PXN		(1ul << 53)
#define D_UXN		(1ul << 54)
#define T_PXN		(1ul << 59)	/* table: PXNTable */
#define T_RO		(2ul << 61)	/* table: APTable = no write at any EL */
#define D_OA_MASK	0x0000fffffffff000ul

/* MAIR_EL1: attribute 0 Normal write-back, 1 Device-nGnRnE. */
#define ATTR_NORMAL	0
#define ATTR_DEVICE	1
#define MAIR_VALUE	0x00fful

/* TCR_EL1: 48-bit VAs both halves, 4 KiB granules, walks write-back inner
 * shareable, 36-bit IPS (RAM is far below), 8-bit ASIDs from TTBR0. */
#define TCR_T0SZ	16ul
#define TCR_T1SZ	(16ul << 16)
#define TCR_WALK0	((1ul << 8) | (1ul << 10) | (3ul << 12))
#define TCR_WALK1	((1ul << 24) | (1ul << 26) | (3ul << 28))
#define TCR_TG1_4K	(2ul << 30)
#define TCR_IPS_36	(1ul << 32)
#define TCR_EPD1	(1ul << 23)
#define TCR_TBI0	(1ul << 37)
#define TCR_VALUE	(TCR_T0SZ | TCR_T1SZ | TCR_WALK0 | TCR_WALK1 | TCR_TG1_4K | TCR_IPS_36)

#define SCTLR_M		(1ul << 0)
#define SCTLR_A		(1ul << 1)
#define SCTLR_C		(1ul << 2)
#define SCTLR_I		(1ul << 12)
#define SCTLR_WXN	(1ul << 19)

#define ASID_A		1ul
#define ASID_B		2ul
#define ASID_OTHER	0x55ul		/* never installed */
#define TTBR_ASID(a)	((a) << 48)

#define KiB 1024ul
#define GiB (1024ul * MiB)

/*
 * Physical memory of the tests, above the image (TEST_DATA_BASE = RAM + 4 MiB):
 * three 2 MiB regions for blocks and the pages PG(n).
 */
#define BLK_A		(TEST_DATA_BASE)
#define BLK_B		(TEST_DATA_BASE + 2 * MiB)
#define PG(n)		(TEST_DATA_BASE + 4 * MiB + (u64)(n) * 4 * KiB)
#define BLK_C		(TEST_DATA_BASE + 6 * MiB)
#define DATA_END	(BLK_C + 2 * MiB)

/*
 * Virtual layout. TTBR0 (root A with ASID 1 or root B with ASID 2; both share
 * the level-1 table of the low 512 GiB):
 *   L0[0] -> L1 low:  [0] -> L2 dev (UART, GIC: Device blocks)
 *                     [1] -> L2 ram (RAM identity; its first 2 MiB through
 *                            L3 img for the image's own W^X pages)
 *                     [2] hole                    VA_L1_HOLE
 *                     [3] 1 GiB block -> RAM      VA_L1_BLK
 *                     [4] -> L2 test              VA_TEST
 *                     [5] 1 GiB block, AF=0       VA_L1_AF
 *   L0[1] hole                                    VA_L0_HOLE
 *   L0[2] -> L1 asid A|B -> L2 asid A|B: [0] nG block -> BLK_A (A), BLK_B (B)
 * L2 test: [0] -> L3 test (the pages TPG(n)), [1] hole, [2] block AF=0,
 *   [3] block -> BLK_A, [4] -> L3 hier (APTable read-only, PXNTable).
 * TTBR1: L0[0] -> L1 hi: [0] -> L2 hi: [0] -> L3 hi, [1] block -> BLK_A;
 *   L1 hi [1] hole.
 */
#define VA_L1_HOLE	(2 * GiB)
#define VA_L1_BLK	(3 * GiB)
#define VA_TEST		(4 * GiB)
#define VA_L1_AF	(5 * GiB)
#define VA_L0_HOLE	(512 * GiB)
#define VA_ASID		(1024 * GiB)
#define VA_NONCANON	0x0001000000000000ul
#define TPG(n)		(VA_TEST + (u64)(n) * 4 * KiB)
#define VA_L2_HOLE	(VA_TEST + 2 * MiB)
#define VA_L2_AF	(VA_TEST + 4 * MiB)
#define VA_L2_BLK	(VA_TEST + 6 * MiB)
#define VA_HIER		(VA_TEST + 8 * MiB)
#define VA_HI		0xffff000000000000ul
#define VA_HI_BLK	(VA_HI + 2 * MiB)
#define VA_HI_L1_HOLE	(VA_HI + 1 * GiB)

/* The pages of L3 test: TPG(n) and the physical page behind it. */
enum {
	P_RW = 0,		/* EL1 read/write -> PG(0) */
	P_ALIAS = 1,		/* EL1 read/write -> PG(0) as well */
	P_RO = 2,		/* EL1 read-only -> PG(1) */
	P_EL0_RW = 3,		/* EL0 and EL1 read/write, never executable -> PG(2) */
	P_HOLE = 4,		/* invalid; the handler maps PG(3) */
	P_NO_AF = 5,		/* AF=0 -> PG(4) */
	P_PXN_CODE = 6,		/* EL1 read/write, PXN, holds `ret` -> PG(5) */
	P_EL0_RO = 7,		/* EL0 read-only data -> PG(6) */
	P_EL0_CODE = 8,		/* EL0 read-only, EL0 executable: the EL0 program -> PG(7) */
	P_UXN_CODE = 9,		/* EL0 read-only, UXN, holds `ret` -> PG(8) */
	P_EL1_CODE = 10,	/* EL1 read/write, executable at EL1, holds `ret` -> PG(9) */
	P_DEVICE = 11,		/* Device-nGnRnE -> PG(10) */
	P_CROSS_A = 12,		/* two mapped pages in a row -> PG(11), PG(12) */
	P_CROSS_B = 13,
	P_EDGE = 14,		/* mapped -> PG(13), followed by */
	P_EDGE_HOLE = 15,	/* invalid; the handler maps PG(14) */
	P_UNALIGNED = 16,	/* EL1 read/write -> PG(15) */
	P_GLOBAL = 17,		/* global, remapped between PG(16) and PG(17) */
	P_NG = 18,		/* nG, remapped between PG(18) and PG(19) */
	P_EL0_RW_CODE = 19,	/* EL0 writable, PXN=0, holds `ret` -> PG(20) */
	P_NO_AF_ST = 20,	/* AF=0 -> PG(21) */
	P_RO_FIX = 21,		/* EL1 read-only; the handler makes it writable -> PG(22) */
	P_ZVA = 22,		/* EL1 read/write -> PG(23) */
};

enum {
	TB_L0_A, TB_L0_B, TB_L1_LOW, TB_L2_DEV, TB_L2_RAM, TB_L3_IMG, TB_L2_TEST,
	TB_L3_TEST, TB_L3_HIER, TB_L1_ASID_A, TB_L1_ASID_B, TB_L2_ASID_A,
	TB_L2_ASID_B, TB_L0_HI, TB_L1_HI, TB_L2_HI, TB_L3_HI, NR_TABLES
};
static u64 tables[NR_TABLES][512] __attribute__((aligned(4096)));
#define TABLE(t) ((u64)tables[t])

extern char __text_end[];

/* --- Barriers, TLB maintenance --- */
#define dsb_ish() __asm__ volatile("dsb ish" ::: "memory")
#define tlbi(op, x) __asm__ volatile("tlbi " #op ", %0" :: "r"((u64)(x)) : "memory")
#define tlbi_all(op) __asm__ volatile("tlbi " #op ::: "memory")

static void tlb_flush_all(void)
{
	dsb_ish();
	tlbi_all(vmalle1);
	dsb_ish();
	isb();
}

/* The operand of the by-VA TLBI operations: VA[55:12], ASID in [63:48]. */
static u64 tlbi_va(u64 va, u64 asid)
{
	return ((va >> 12) & 0xfffffffffffful) | TTBR_ASID(asid);
}

/* --- Descriptors --- */
static u64 normal(u64 pa) { return pa | D_ATTR(ATTR_NORMAL) | D_SH_INNER | D_AF; }
/* Outer Shareable: what PAR_EL1.SH reports for any Device memory. */
static u64 device(u64 pa) { return pa | D_ATTR(ATTR_DEVICE) | D_SH_OUTER | D_AF; }
static u64 table(unsigned t) { return TABLE(t) | D_TABLE; }
static u64 *l3_test(unsigned n) { return &tables[TB_L3_TEST][n]; }

/* --- Faults: what the vector table saw, and how it recovers --- */
struct fault {
	u64 esr, far, elr;
};
#define MAX_FAULTS 8
static volatile u64 nr_faults;
static struct fault faults[MAX_FAULTS];
/* When set, the next abort writes fix_value there (then TLBI if fix_tlbi) and retries. */
static u64 *volatile fix_desc;
static u64 fix_value;
static int fix_tlbi;

static void expect_faults(void)
{
	nr_faults = 0;
	memset(faults, 0, sizeof(faults));
}

static void fix_with(u64 *desc, u64 value, int with_tlbi)
{
	fix_value = value;
	fix_tlbi = with_tlbi;
	fix_desc = desc;
}

#define EC_IABT_LOWER	0x20
#define EC_IABT_CUR	0x21
#define EC_DABT_LOWER	0x24
#define EC_DABT_CUR	0x25
#define EC_SVC64	0x15
#define VEC_CUR_SYNC	4
#define VEC_LOW_SYNC	8
#define SPSR_EL1H_MASKED 0x3c5ul

/* ESR_EL1 without the fields the Arm ARM leaves open here (see the top). */
static u64 esr_arch(u64 esr)
{
	u64 keep = (0x3ful << 26) | (1ul << 25) | (1ul << 24) | 0x7fful;
	if (esr & (1ul << 24))
		keep |= 0x3fful << 14;
	return esr & keep;
}

/* PAR_EL1 without NS and the IMPLEMENTATION DEFINED fields. */
static u64 par_arch(u64 par)
{
	if (par & 1)
		return par & (1ul | (0x3ful << 1) | (1ul << 8) | (1ul << 9) | (1ul << 11));
	return par & ((0xfful << 56) | D_OA_MASK | (3ul << 7) | (1ul << 11));
}

void el0_landing(void);
void mmu_vectors(void);

void mmu_trap(struct frame *f, unsigned vec);
void mmu_trap(struct frame *f, unsigned vec)
{
	u64 esr = read_sysreg(esr_el1), far = read_sysreg(far_el1);
	u32 ec = (u32)(esr >> 26) & 0x3f;
	int from_el0 = vec == VEC_LOW_SYNC, here = vec == VEC_CUR_SYNC;
	if (from_el0 && ec == EC_SVC64) {
		/* The EL0 program is done: back to run_el0's caller at EL1. */
		faults[MAX_FAULTS - 1].esr = esr;
		faults[MAX_FAULTS - 1].elr = f->elr;
		faults[MAX_FAULTS - 1].far = f->spsr;
		f->elr = (u64)el0_landing;
		f->spsr = SPSR_EL1H_MASKED;
		return;
	}
	int abort = ec == EC_IABT_LOWER || ec == EC_IABT_CUR || ec == EC_DABT_LOWER ||
		    ec == EC_DABT_CUR;
	if (!abort || !(from_el0 || here) || nr_faults >= MAX_FAULTS - 1) {
		kprintf("FAIL unexpected_exception cpu=0 vector=0x%x esr=0x%lx elr=0x%lx "
			"far=0x%lx spsr=0x%lx\n", vec * 0x80, esr, f->elr, far, f->spsr);
		hvc(PSCI_SYSTEM_OFF, 0, 0, 0);	/* without DONE: the run is cut short */
		park();
	}
	struct fault *rec = &faults[nr_faults++];
	rec->esr = esr;
	rec->far = far;
	rec->elr = f->elr;
	u64 *desc = fix_desc;
	if (desc) {
		fix_desc = NULL;
		*desc = fix_value;
		dsb_ish();
		if (fix_tlbi) {
			tlbi_all(vmalle1);
			dsb_ish();
		}
		isb();
		return;		/* retry the access */
	}
	if (ec == EC_IABT_LOWER || ec == EC_IABT_CUR)
		f->elr = f->x[30];	/* every test branches there with BLR */
	else
		f->elr += 4;
}

/*
 * The vector table: every entry saves a struct frame (kernel.h) and calls
 * mmu_trap(frame, vector); run_el0 enters EL0 and el0_landing comes back.
 */
__asm__(
	"	.text\n"
	"	.macro mmu_ventry vec\n"
	"	.balign 0x80\n"
	"	sub	sp, sp, #272\n"
	"	stp	x0, x1, [sp]\n"
	"	mov	x1, #\\vec\n"
	"	b	mmu_entry\n"
	"	.endm\n"
	"	.balign 2048\n"
	"	.globl mmu_vectors\n"
	"mmu_vectors:\n"
	"	mmu_ventry 0\n	mmu_ventry 1\n	mmu_ventry 2\n	mmu_ventry 3\n"
	"	mmu_ventry 4\n	mmu_ventry 5\n	mmu_ventry 6\n	mmu_ventry 7\n"
	"	mmu_ventry 8\n	mmu_ventry 9\n	mmu_ventry 10\n	mmu_ventry 11\n"
	"	mmu_ventry 12\n	mmu_ventry 13\n	mmu_ventry 14\n	mmu_ventry 15\n"
	"mmu_entry:\n"
	"	stp	x2, x3, [sp, #16]\n"
	"	stp	x4, x5, [sp, #32]\n"
	"	stp	x6, x7, [sp, #48]\n"
	"	stp	x8, x9, [sp, #64]\n"
	"	stp	x10, x11, [sp, #80]\n"
	"	stp	x12, x13, [sp, #96]\n"
	"	stp	x14, x15, [sp, #112]\n"
	"	stp	x16, x17, [sp, #128]\n"
	"	stp	x18, x19, [sp, #144]\n"
	"	stp	x20, x21, [sp, #160]\n"
	"	stp	x22, x23, [sp, #176]\n"
	"	stp	x24, x25, [sp, #192]\n"
	"	stp	x26, x27, [sp, #208]\n"
	"	stp	x28, x29, [sp, #224]\n"
	"	mrs	x2, sp_el0\n"
	"	stp	x30, x2, [sp, #240]\n"
	"	mrs	x2, elr_el1\n"
	"	mrs	x3, spsr_el1\n"
	"	stp	x2, x3, [sp, #256]\n"
	"	mov	x0, sp\n"
	"	bl	mmu_trap\n"
	"	ldp	x30, x2, [sp, #240]\n"
	"	msr	sp_el0, x2\n"
	"	ldp	x2, x3, [sp, #256]\n"
	"	msr	elr_el1, x2\n"
	"	msr	spsr_el1, x3\n"
	"	ldp	x0, x1, [sp]\n"
	"	ldp	x2, x3, [sp, #16]\n"
	"	ldp	x4, x5, [sp, #32]\n"
	"	ldp	x6, x7, [sp, #48]\n"
	"	ldp	x8, x9, [sp, #64]\n"
	"	ldp	x10, x11, [sp, #80]\n"
	"	ldp	x12, x13, [sp, #96]\n"
	"	ldp	x14, x15, [sp, #112]\n"
	"	ldp	x16, x17, [sp, #128]\n"
	"	ldp	x18, x19, [sp, #144]\n"
	"	ldp	x20, x21, [sp, #160]\n"
	"	ldp	x22, x23, [sp, #176]\n"
	"	ldp	x24, x25, [sp, #192]\n"
	"	ldp	x26, x27, [sp, #208]\n"
	"	ldp	x28, x29, [sp, #224]\n"
	"	add	sp, sp, #272\n"
	"	eret\n"
	/* run_el0(entry, sp_el0, x0): EL0t at entry; returns when EL0 calls SVC. */
	"	.globl run_el0\n"
	"run_el0:\n"
	"	adrp	x9, el1_saved\n"
	"	add	x9, x9, :lo12:el1_saved\n"
	"	stp	x19, x20, [x9]\n"
	"	stp	x21, x22, [x9, #16]\n"
	"	stp	x23, x24, [x9, #32]\n"
	"	stp	x25, x26, [x9, #48]\n"
	"	stp	x27, x28, [x9, #64]\n"
	"	stp	x29, x30, [x9, #80]\n"
	"	mov	x10, sp\n"
	"	str	x10, [x9, #96]\n"
	"	msr	elr_el1, x0\n"
	"	msr	sp_el0, x1\n"
	"	mov	x10, #0x3c0\n"		/* EL0t, DAIF masked */
	"	msr	spsr_el1, x10\n"
	"	mov	x0, x2\n"
	"	eret\n"
	"	.globl el0_landing\n"
	"el0_landing:\n"
	"	adrp	x9, el1_saved\n"
	"	add	x9, x9, :lo12:el1_saved\n"
	"	ldp	x19, x20, [x9]\n"
	"	ldp	x21, x22, [x9, #16]\n"
	"	ldp	x23, x24, [x9, #32]\n"
	"	ldp	x25, x26, [x9, #48]\n"
	"	ldp	x27, x28, [x9, #64]\n"
	"	ldp	x29, x30, [x9, #80]\n"
	"	ldr	x10, [x9, #96]\n"
	"	mov	sp, x10\n"
	"	ret\n"
	/*
	 * The EL0 program, copied to PG(7) and run at TPG(P_EL0_CODE);
	 * x0 = struct el0_args at its data page. Position independent.
	 */
	"	.globl el0_prog_start, el0_prog_end\n"
	"	.balign 4\n"
	"el0_prog_start:\n"
	"	ldp	x1, x2, [x0]\n"		/* data, el1_only */
	"	ldp	x3, x4, [x0, #16]\n"	/* el0_ro, uxn_code */
	"	ldr	x5, [x1, #64]\n"	/* EL0 reads its page */
	"	str	x5, [x0, #32]\n"	/* and writes it */
	"	ldr	x6, [x3]\n"		/* EL0 reads a read-only page */
	"	str	x6, [x0, #40]\n"
	"	ldr	x7, [x2]\n"		/* EL1-only: data abort from EL0 */
	"	str	x5, [x3]\n"		/* read-only: write fault from EL0 */
	"	blr	x4\n"			/* UXN: instruction abort from EL0 */
	"	mov	x0, #0x77\n"
	"	svc	#0\n"
	"el0_prog_end:\n"
	/* Copied to the code pages that BLR tests reach: returns 1 in x0. */
	"	.globl snippet_start, snippet_end\n"
	"snippet_start:\n"
	"	mov	x0, #1\n"
	"	ret\n"
	"snippet_end:\n");

void run_el0(u64 entry, u64 sp, u64 arg);
extern const u32 el0_prog_start[], el0_prog_end[], snippet_start[], snippet_end[];
u64 el1_saved[13];

/* What the EL0 program is given and leaves, at the start of its data page. */
struct el0_args {
	u64 data, el1_only, el0_ro, uxn_code;
	u64 read, ro_read;
};

/* --- Accesses whose faults the handler skips: one instruction each --- */
static inline u64 ld64(u64 va)
{
	u64 v = 0;
	__asm__ volatile("ldr %0, [%1]" : "+r"(v) : "r"(va) : "memory");
	return v;
}
static inline u64 ld32(u64 va)
{
	u64 v = 0;
	__asm__ volatile("ldr %w0, [%1]" : "+r"(v) : "r"(va) : "memory");
	return v;
}
static inline u64 ld16(u64 va)
{
	u64 v = 0;
	__asm__ volatile("ldrh %w0, [%1]" : "+r"(v) : "r"(va) : "memory");
	return v;
}
static inline void st64(u64 va, u64 v)
{
	__asm__ volatile("str %0, [%1]" :: "r"(v), "r"(va) : "memory");
}
static inline void st32(u64 va, u64 v)
{
	__asm__ volatile("str %w0, [%1]" :: "r"(v), "r"(va) : "memory");
}
static inline void st16(u64 va, u64 v)
{
	__asm__ volatile("strh %w0, [%1]" :: "r"(v), "r"(va) : "memory");
}
static inline u64 ldtr64(u64 va)
{
	u64 v = 0;
	__asm__ volatile("ldtr %0, [%1]" : "+r"(v) : "r"(va) : "memory");
	return v;
}
static inline void sttr64(u64 va, u64 v)
{
	__asm__ volatile("sttr %0, [%1]" :: "r"(v), "r"(va) : "memory");
}
static inline u64 ldxr64(u64 va)
{
	u64 v = 0;
	__asm__ volatile("ldxr %0, [%1]\n\tclrex" : "+r"(v) : "r"(va) : "memory");
	return v;
}
static inline u64 ldar64(u64 va)
{
	u64 v = 0;
	__asm__ volatile("ldar %0, [%1]" : "+r"(v) : "r"(va) : "memory");
	return v;
}
static inline void dc_zva(u64 va)
{
	__asm__ volatile("dc zva, %0" :: "r"(va) : "memory");
}
/* BLR to a copied snippet at va: 1 if it ran, 0 if the handler returned instead. */
static int call_code(u64 va)
{
	u64 ran;
	__asm__ volatile("mov x0, #0\n\tblr %1\n\tmov %0, x0"
			 : "=r"(ran) : "r"(va) : "x0", "x30", "memory");
	return (int)ran;
}

#define AT(op, va) ({ __asm__ volatile("at " #op ", %0\n\tisb" :: "r"((u64)(va)) : "memory"); \
		      par_arch(read_sysreg(par_el1)); })

/* --- Output --- */
static unsigned nr_obs;

static void obs1(const char *name, const char *k, u64 v)
{
	kprintf("OBS %s %s=0x%lx\n", name, k, v);
	nr_obs++;
}

static void obs2(const char *name, const char *k1, u64 v1, const char *k2, u64 v2)
{
	kprintf("OBS %s %s=0x%lx %s=0x%lx\n", name, k1, v1, k2, v2);
	nr_obs++;
}

#define FAR_ALL (~0ul)
#define FAR_PAGE (~0xffful)
#define FAR_BLOCK (~0x3ful)

/*
 * The first fault the step before took: `faults`, its ESR and FAR (far_key
 * names how FAR was reduced), ELR, and value_key=value when value_key is set
 * (the retried access's value, or whether branched-to code ran).
 */
static void obs_fault(const char *name, const char *far_key, u64 far_mask,
		      const char *value_key, u64 value)
{
	const struct fault *f = &faults[0];
	kprintf("OBS %s faults=0x%lx esr=0x%lx %s=0x%lx elr=0x%lx", name, nr_faults,
		esr_arch(f->esr), far_key, f->far & far_mask, f->elr);
	if (value_key)
		kprintf(" %s=0x%lx", value_key, value);
	kprintf("\n");
	nr_obs++;
}

/* BLR to va, then the fault it took: ran=1 if the code ran. */
static void obs_exec_fault(const char *name, u64 va)
{
	expect_faults();
	u64 ran = (u64)call_code(va);
	obs_fault(name, "far", FAR_ALL, "ran", ran);
}

/* A faulting access whose fault is skipped: faults, ESR, FAR, ELR. */
#define OBS_SKIP(name, access) do { expect_faults(); access; \
	obs_fault(name, "far", FAR_ALL, NULL, 0); } while (0)
/* A faulting access the handler fixes: the same and the retried value. */
#define OBS_FIX(name, desc, new_desc, tlbi_after, expr) do { expect_faults(); \
	fix_with(desc, new_desc, tlbi_after); u64 v_ = (expr); \
	obs_fault(name, "far", FAR_ALL, "value", v_); } while (0)

/* A recognisable word for physical page/offset: the tests read it back. */
static u64 pattern(u64 pa) { return 0x5a00000000000000ul | (pa & 0xffffffffffful); }

static void fill_page(u64 pa)
{
	for (u64 off = 0; off < 4096; off += 8)
		*(volatile u64 *)(pa + off) = pattern(pa + off);
}

static void copy_code(u64 pa, const u32 *start, const u32 *end)
{
	u32 *dst = (u32 *)pa;
	for (const u32 *p = start; p < end; p++)
		*dst++ = *p;
	/* Make the copy visible to instruction fetch. */
	__asm__ volatile("dc cvau, %0\n\tdsb ish\n\tic iallu\n\tdsb ish\n\tisb"
			 :: "r"(pa) : "memory");
}

/* --- Building the tables (MMU off) --- */
static void build_tables(void)
{
	u64 ram = APF_RAM_BASE;
	u64 *l0a = tables[TB_L0_A], *l0b = tables[TB_L0_B], *l1 = tables[TB_L1_LOW];
	l0a[0] = l0b[0] = table(TB_L1_LOW);
	l0a[2] = table(TB_L1_ASID_A);
	l0b[2] = table(TB_L1_ASID_B);
	l1[0] = table(TB_L2_DEV);
	l1[1] = table(TB_L2_RAM);
	l1[3] = normal(ram) | D_BLOCK | D_PXN | D_UXN;
	l1[4] = table(TB_L2_TEST);
	l1[5] = (normal(ram) & ~D_AF) | D_BLOCK | D_PXN | D_UXN;

	/* The GIC (0x08000000) and the UART (0x09000000): 2 MiB Device blocks. */
	for (u64 pa = 0x08000000; pa < 0x0a000000; pa += 2 * MiB)
		tables[TB_L2_DEV][pa >> 21] = device(pa) | D_BLOCK | D_PXN | D_UXN;

	/* RAM: the image's 2 MiB in pages (text RO + executable, the rest RW + PXN). */
	tables[TB_L2_RAM][0] = table(TB_L3_IMG);
	for (unsigned i = 0; i < 512; i++) {
		u64 pa = ram + i * 4 * KiB;
		int text = pa >= 0x40080000ul && pa < (u64)__text_end;
		tables[TB_L3_IMG][i] = normal(pa) | D_PAGE | D_UXN | (text ? D_RO : D_PXN);
	}
	for (unsigned i = 1; i < TEST_RAM_SIZE / (2 * MiB); i++)
		tables[TB_L2_RAM][i] = normal(ram + i * 2 * MiB) | D_BLOCK | D_PXN | D_UXN;

	u64 *l2t = tables[TB_L2_TEST];
	l2t[0] = table(TB_L3_TEST);
	l2t[2] = (normal(BLK_B) & ~D_AF) | D_BLOCK | D_PXN | D_UXN;
	l2t[3] = normal(BLK_A) | D_BLOCK | D_PXN | D_UXN;
	l2t[4] = table(TB_L3_HIER) | T_RO | T_PXN;
	tables[TB_L3_HIER][0] = normal(PG(24)) | D_PAGE | D_UXN;	/* RW, but APTable */
	tables[TB_L3_HIER][1] = normal(PG(25)) | D_PAGE | D_UXN | D_RO; /* code, but PXNTable */

	u64 xn = D_PXN | D_UXN;
	*l3_test(P_RW) = normal(PG(0)) | D_PAGE | xn;
	*l3_test(P_ALIAS) = normal(PG(0)) | D_PAGE | xn;
	*l3_test(P_RO) = normal(PG(1)) | D_PAGE | xn | D_RO;
	*l3_test(P_EL0_RW) = normal(PG(2)) | D_PAGE | xn | D_EL0;
	*l3_test(P_NO_AF) = (normal(PG(4)) & ~D_AF) | D_PAGE | xn;
	*l3_test(P_PXN_CODE) = normal(PG(5)) | D_PAGE | xn;
	*l3_test(P_EL0_RO) = normal(PG(6)) | D_PAGE | xn | D_EL0 | D_RO;
	*l3_test(P_EL0_CODE) = normal(PG(7)) | D_PAGE | D_PXN | D_EL0 | D_RO;
	*l3_test(P_UXN_CODE) = normal(PG(8)) | D_PAGE | xn | D_EL0 | D_RO;
	*l3_test(P_EL1_CODE) = normal(PG(9)) | D_PAGE | D_UXN;
	*l3_test(P_DEVICE) = device(PG(10)) | D_PAGE | xn;
	*l3_test(P_CROSS_A) = normal(PG(11)) | D_PAGE | xn;
	*l3_test(P_CROSS_B) = normal(PG(12)) | D_PAGE | xn;
	*l3_test(P_EDGE) = normal(PG(13)) | D_PAGE | xn;
	*l3_test(P_UNALIGNED) = normal(PG(15)) | D_PAGE | xn;
	*l3_test(P_GLOBAL) = normal(PG(16)) | D_PAGE | xn;
	*l3_test(P_NG) = normal(PG(18)) | D_PAGE | xn | D_NG;
	*l3_test(P_EL0_RW_CODE) = normal(PG(20)) | D_PAGE | D_UXN | D_EL0;
	*l3_test(P_NO_AF_ST) = (normal(PG(21)) & ~D_AF) | D_PAGE | xn;
	*l3_test(P_RO_FIX) = normal(PG(22)) | D_PAGE | xn | D_RO;
	*l3_test(P_ZVA) = normal(PG(23)) | D_PAGE | xn;

	/* The same VA under two ASIDs: BLK_A for ASID 1, BLK_B for ASID 2. */
	tables[TB_L1_ASID_A][0] = table(TB_L2_ASID_A);
	tables[TB_L1_ASID_B][0] = table(TB_L2_ASID_B);
	tables[TB_L2_ASID_A][0] = normal(BLK_A) | D_BLOCK | xn | D_NG;
	tables[TB_L2_ASID_B][0] = normal(BLK_B) | D_BLOCK | xn | D_NG;

	/* TTBR1: a page aliasing PG(0), a read-only page, a block on BLK_A. */
	tables[TB_L0_HI][0] = table(TB_L1_HI);
	tables[TB_L1_HI][0] = table(TB_L2_HI);
	tables[TB_L2_HI][0] = table(TB_L3_HI);
	tables[TB_L2_HI][1] = normal(BLK_A) | D_BLOCK | xn;
	tables[TB_L3_HI][0] = normal(PG(0)) | D_PAGE | xn;
	tables[TB_L3_HI][1] = normal(PG(1)) | D_PAGE | xn | D_RO;
}

static void mmu_on(void)
{
	write_sysreg(mair_el1, MAIR_VALUE);
	write_sysreg(tcr_el1, TCR_VALUE);
	write_sysreg(ttbr0_el1, TABLE(TB_L0_A) | TTBR_ASID(ASID_A));
	write_sysreg(ttbr1_el1, TABLE(TB_L0_HI));
	isb();
	tlb_flush_all();
	write_sysreg(sctlr_el1, read_sysreg(sctlr_el1) | SCTLR_M | SCTLR_C | SCTLR_I);
	isb();
}

static void set_sctlr(u64 set, u64 clear)
{
	write_sysreg(sctlr_el1, (read_sysreg(sctlr_el1) | set) & ~clear);
	isb();
	tlb_flush_all();	/* SCTLR_EL1.WXN may be held in TLB entries */
}

/* --- The observations --- */

static void mappings(void)
{
	/* Pages, aliases, blocks: a write through one VA seen through the others. */
	st64(TPG(P_RW) + 8, 0x1111222233334444ul);
	obs1("page_alias_read", "value", ld64(TPG(P_ALIAS) + 8));
	obs1("page_ttbr1_alias_read", "value", ld64(VA_HI + 8));
	obs1("page_phys_read", "value", *(volatile u64 *)(PG(0) + 8));
	st64(VA_HI + 16, 0x5555666677778888ul);
	obs1("page_ttbr1_write_seen_low", "value", ld64(TPG(P_RW) + 16));
	obs1("page_ro_read", "value", ld64(TPG(P_RO) + 0x18));
	obs1("block_l2_read", "value", ld64(VA_L2_BLK + 0x12340));
	obs1("block_l1_read", "value", ld64(VA_L1_BLK + (BLK_A - APF_RAM_BASE) + 0x1230));
	obs1("block_ttbr1_read", "value", ld64(VA_HI_BLK + 0x1ff8));
	obs1("page_ttbr1_ro_read", "value", ld64(VA_HI + 4096 + 0x28));
	/* TBI0: the top byte is ignored for TTBR0 addresses. */
	write_sysreg(tcr_el1, TCR_VALUE | TCR_TBI0);
	isb();
	tlb_flush_all();
	obs1("tbi0_tagged_read", "value", ld64(TPG(P_RW) | (0xa5ul << 56)));
	write_sysreg(tcr_el1, TCR_VALUE);
	isb();
	tlb_flush_all();
}

static void translation_faults(void)
{
	OBS_SKIP("xlat_l0_hole", ld64(VA_L0_HOLE + 0x40));
	OBS_SKIP("xlat_l0_noncanonical", ld64(VA_NONCANON | 0x40));
	OBS_SKIP("xlat_l0_tagged_without_tbi", ld64(TPG(P_RW) | (0xa5ul << 56)));
	OBS_SKIP("xlat_l1_ttbr1_hole", ld64(VA_HI_L1_HOLE + 0x80));
	OBS_SKIP("xlat_l3_store_hole", st64(TPG(P_EDGE_HOLE) + 8, 1));
	/* Invalid entries are never cached: the handler's fix needs no TLBI. */
	OBS_FIX("xlat_l1_fixed", &tables[TB_L1_LOW][2],
		normal(APF_RAM_BASE) | D_BLOCK | D_PXN | D_UXN, 0,
		ld64(VA_L1_HOLE + (BLK_B - APF_RAM_BASE) + 0x100));
	OBS_FIX("xlat_l2_fixed", &tables[TB_L2_TEST][1], normal(BLK_C) | D_BLOCK | D_PXN | D_UXN,
		0, ld64(VA_L2_HOLE + 0x208));
	OBS_FIX("xlat_l3_fixed", l3_test(P_HOLE), normal(PG(3)) | D_PAGE | D_PXN | D_UXN, 0,
		ld64(TPG(P_HOLE) + 0x310));
	obs_exec_fault("xlat_exec_hole", VA_L0_HOLE);
	/* EPD1: no walk of TTBR1 (after TLBI nothing of it is cached). */
	write_sysreg(tcr_el1, TCR_VALUE | TCR_EPD1);
	isb();
	tlb_flush_all();
	OBS_SKIP("xlat_epd1", ld64(VA_HI + 8));
	write_sysreg(tcr_el1, TCR_VALUE);
	isb();
	tlb_flush_all();
}

static void access_flag_faults(void)
{
	/* AF=0 entries are not cached either: set AF in the handler and retry. */
	OBS_FIX("af_l1_block", &tables[TB_L1_LOW][5],
		normal(APF_RAM_BASE) | D_BLOCK | D_PXN | D_UXN, 0,
		ld64(VA_L1_AF + (BLK_A - APF_RAM_BASE) + 0x400));
	OBS_FIX("af_l2_block", &tables[TB_L2_TEST][2], normal(BLK_B) | D_BLOCK | D_PXN | D_UXN,
		0, ld64(VA_L2_AF + 0x1008));
	OBS_FIX("af_l3_page", l3_test(P_NO_AF), normal(PG(4)) | D_PAGE | D_PXN | D_UXN, 0,
		ld64(TPG(P_NO_AF) + 0x7f8));
	expect_faults();
	fix_with(l3_test(P_NO_AF_ST), normal(PG(21)) | D_PAGE | D_PXN | D_UXN, 0);
	st64(TPG(P_NO_AF_ST) + 0x20, 0xaf5707e000000001ul);
	obs_fault("af_l3_store", "far", FAR_ALL, "value", *(volatile u64 *)(PG(21) + 0x20));
}

static void permission_faults(void)
{
	OBS_SKIP("perm_write_ro", st64(TPG(P_RO) + 0x30, 1));
	OBS_SKIP("perm_write_ttbr1_ro", st64(VA_HI + 4096 + 0x30, 1));
	/* A permission fault's entry may be cached: the fix needs the TLBI. */
	expect_faults();
	fix_with(l3_test(P_RO_FIX), normal(PG(22)) | D_PAGE | D_PXN | D_UXN, 1);
	st64(TPG(P_RO_FIX) + 0x38, 0xf1c5ed0000000002ul);
	obs_fault("perm_write_ro_fixed", "far", FAR_ALL, "value",
		  *(volatile u64 *)(PG(22) + 0x38));
	OBS_SKIP("perm_aptable_ro_write", st64(VA_HIER + 0x48, 1));
	obs1("perm_aptable_ro_read", "value", ld64(VA_HIER + 0x48));

	/* Execution at EL1: allowed, PXN, PXNTable, EL0-writable (implicit PXN), WXN. */
	expect_faults();
	obs2("exec_el1_page", "ran", (u64)call_code(TPG(P_EL1_CODE)), "faults", nr_faults);
	obs_exec_fault("exec_pxn", TPG(P_PXN_CODE));
	obs_exec_fault("exec_pxntable", VA_HIER + 4096);
	obs_exec_fault("exec_el0_writable", TPG(P_EL0_RW_CODE));
	set_sctlr(SCTLR_WXN, 0);
	obs_exec_fault("exec_wxn", TPG(P_EL1_CODE));
	set_sctlr(0, SCTLR_WXN);
}

static void unprivileged_accesses(void)
{
	/* LDTR/STTR at EL1 check EL0's permissions. */
	OBS_SKIP("ldtr_el1_only", ldtr64(TPG(P_RW) + 0x50));
	OBS_SKIP("sttr_el0_ro", sttr64(TPG(P_EL0_RO) + 0x50, 1));
	obs1("ldtr_el0_ro", "value", ldtr64(TPG(P_EL0_RO) + 0x58));
	sttr64(TPG(P_EL0_RW) + 0x800, 0x5777000000000003ul);
	obs1("sttr_el0_rw", "value", ldtr64(TPG(P_EL0_RW) + 0x800));

	/* The EL0 program: reads and writes its page, then three faults, then SVC. */
	u64 data = TPG(P_EL0_RW);
	struct el0_args *args = (struct el0_args *)data;
	args->data = data;
	args->el1_only = TPG(P_RW) + 0x60;
	args->el0_ro = TPG(P_EL0_RO) + 0x68;
	args->uxn_code = TPG(P_UXN_CODE);
	args->read = args->ro_read = 0;
	st64(data + 64, 0xe10e10e1000000aaul);
	expect_faults();
	run_el0(TPG(P_EL0_CODE), data + 4096, data);
	const struct fault *svc = &faults[MAX_FAULTS - 1];
	obs2("el0_rw_page", "read", args->read, "ro_read", args->ro_read);
	obs2("el0_svc", "esr", svc->esr, "elr", svc->elr);
	obs1("el0_svc_spsr_mode", "m", svc->far & 0x1f);	/* far holds the SPSR here */
	obs1("el0_faults", "faults", nr_faults);
	const char *names[3] = { "el0_read_el1_only", "el0_write_ro", "el0_exec_uxn" };
	for (unsigned i = 0; i < 3; i++) {
		kprintf("OBS %s esr=0x%lx far=0x%lx elr=0x%lx\n", names[i], esr_arch(faults[i].esr),
			faults[i].far, faults[i].elr);
		nr_obs++;
	}
}

static void at_instructions(void)
{
	obs1("at_s1e1r_page", "par", AT(s1e1r, TPG(P_RW) + 0x123));
	obs1("at_s1e1w_page", "par", AT(s1e1w, TPG(P_ALIAS)));
	obs1("at_s1e1r_ro", "par", AT(s1e1r, TPG(P_RO)));
	obs1("at_s1e1w_ro", "par", AT(s1e1w, TPG(P_RO)));
	obs1("at_s1e0r_el1_only", "par", AT(s1e0r, TPG(P_RW)));
	obs1("at_s1e0r_el0_ro", "par", AT(s1e0r, TPG(P_EL0_RO)));
	obs1("at_s1e0w_el0_ro", "par", AT(s1e0w, TPG(P_EL0_RO)));
	obs1("at_s1e0w_el0_rw", "par", AT(s1e0w, TPG(P_EL0_RW)));
	obs1("at_s1e1r_device", "par", AT(s1e1r, TPG(P_DEVICE)));
	obs1("at_s1e1r_l2_block", "par", AT(s1e1r, VA_L2_BLK + 0x1a5000));
	obs1("at_s1e1r_ttbr1", "par", AT(s1e1r, VA_HI + 4096));
	obs1("at_s1e1r_l3_hole", "par", AT(s1e1r, TPG(P_EDGE_HOLE)));
	obs1("at_s1e1r_l0_noncanonical", "par", AT(s1e1r, VA_NONCANON));
	/* The handler set AF earlier: clear it again (the entry may be cached: TLBI). */
	tables[TB_L3_TEST][P_NO_AF] &= ~D_AF;
	tlb_flush_all();
	obs1("at_s1e1r_no_af", "par", AT(s1e1r, TPG(P_NO_AF)));
	tables[TB_L3_TEST][P_NO_AF] |= D_AF;
	tlb_flush_all();
}

static void unaligned_accesses(void)
{
	u64 base = TPG(P_UNALIGNED), pa = PG(15);
	obs1("unaligned_ldr_x", "value", ld64(base + 1));
	obs1("unaligned_ldr_w", "value", ld32(base + 0x1e));
	obs1("unaligned_ldrh", "value", ld16(base + 0x27));
	st64(base + 0x39, 0x0102030405060708ul);
	st32(base + 0x4b, 0x11223344ul);
	st16(base + 0x5f, 0xa1b2ul);
	obs2("unaligned_str_x", "w0", *(volatile u64 *)(pa + 0x38), "w1",
	     *(volatile u64 *)(pa + 0x40));
	obs1("unaligned_str_w", "w0", *(volatile u64 *)(pa + 0x48));
	obs2("unaligned_str_h", "w0", *(volatile u64 *)(pa + 0x58), "w1",
	     *(volatile u64 *)(pa + 0x60));
	/* Across a page boundary, both pages mapped (to PAs that are adjacent too). */
	u64 cross = TPG(P_CROSS_B) - 3;
	obs1("cross_page_ldr_x", "value", ld64(cross));
	st64(TPG(P_CROSS_B) - 5, 0xc0c1c2c3c4c5c6c7ul);
	obs2("cross_page_str_x", "below", *(volatile u64 *)(PG(11) + 0xff8), "above",
	     *(volatile u64 *)PG(12));
	/* Into the hole after P_EDGE: the fault is on the second page. */
	u64 edge = TPG(P_EDGE_HOLE) - 4;
	expect_faults();
	fix_with(l3_test(P_EDGE_HOLE), normal(PG(14)) | D_PAGE | D_PXN | D_UXN, 0);
	u64 v = ld64(edge);
	obs_fault("cross_into_hole_ldr_x", "far_page", FAR_PAGE, "value", v);
	*l3_test(P_EDGE_HOLE) = 0;
	tlb_flush_all();
	expect_faults();
	fix_with(l3_test(P_EDGE_HOLE), normal(PG(14)) | D_PAGE | D_PXN | D_UXN, 0);
	st64(edge - 2, 0xd0d1d2d3d4d5d6d7ul);
	obs_fault("cross_into_hole_str_x", "far_page", FAR_PAGE, NULL, 0);
	obs2("cross_into_hole_str_x_bytes", "below", *(volatile u64 *)(PG(13) + 0xff8), "above",
	     *(volatile u64 *)PG(14));
	*l3_test(P_EDGE_HOLE) = 0;
	tlb_flush_all();

	/* Alignment faults: SCTLR_EL1.A, Device memory, exclusives and acquires. */
	set_sctlr(SCTLR_A, 0);
	OBS_SKIP("align_sctlr_a_ldr_x", ld64(base + 4));
	obs1("align_sctlr_a_aligned_ldr_x", "value", ld64(base + 8));
	set_sctlr(0, SCTLR_A);
	OBS_SKIP("align_device_ldr_w", ld32(TPG(P_DEVICE) + 2));
	OBS_SKIP("align_device_str_x", st64(TPG(P_DEVICE) + 0x14, 1));
	obs1("device_aligned_ldr_x", "value", ld64(TPG(P_DEVICE) + 0x20));
	OBS_SKIP("align_ldxr", ldxr64(base + 0x104));
	OBS_SKIP("align_ldar", ldar64(base + 0x10c));
	obs1("ldxr_aligned", "value", ldxr64(base + 0x110));
}

static void dc_zva_cases(void)
{
	obs1("dczid", "value", read_sysreg(dczid_el0));
	u64 base = TPG(P_ZVA), pa = PG(23);
	for (u64 off = 0; off < 256; off += 8)
		*(volatile u64 *)(pa + off) = ~0ul;
	dc_zva(base + 64 + 13);	/* any address in the block */
	u64 zero = 0;
	for (unsigned i = 0; i < 32; i++)
		zero |= (u64)(*(volatile u64 *)(pa + i * 8) == 0) << i;
	obs1("dc_zva_zeroed_words", "mask", zero);
	expect_faults();
	dc_zva(TPG(P_RO) + 0x1c0 + 8);
	obs_fault("dc_zva_ro", "far_block", FAR_BLOCK, NULL, 0);
}

/*
 * Remaps `page` to the other of its two physical pages, break-before-make
 * with `invalidate` as the only TLB maintenance, and reads it: the new page's
 * pattern, whatever a TLB held before.
 */
static u64 remap_and_read(unsigned page, void (*invalidate)(u64 va))
{
	u64 *d = l3_test(page), va = TPG(page);
	u64 first = page == P_NG ? PG(18) : PG(16);
	u64 pa = (*d & D_OA_MASK) == first ? first + 4096 : first;
	u64 ng = *d & D_NG;
	(void)ld64(va);		/* the old translation may now be in a TLB */
	*d = 0;
	dsb_ish();
	invalidate(va);
	dsb_ish();
	*d = normal(pa) | D_PAGE | D_PXN | D_UXN | ng;
	dsb_ish();
	isb();
	return ld64(va + 0x88);
}

static void inv_vae1(u64 va) { tlbi(vae1, tlbi_va(va, ASID_A)); }
static void inv_vale1(u64 va) { tlbi(vale1, tlbi_va(va, ASID_A)); }
static void inv_vaae1(u64 va) { tlbi(vaae1, tlbi_va(va, 0)); }
static void inv_vaale1(u64 va) { tlbi(vaale1, tlbi_va(va, 0)); }
static void inv_aside1(u64 va) { (void)va; tlbi(aside1, TTBR_ASID(ASID_A)); }
static void inv_vmalle1(u64 va) { (void)va; tlbi_all(vmalle1); }
static void inv_vae1is(u64 va) { tlbi(vae1is, tlbi_va(va, ASID_A)); }
static void inv_vale1is(u64 va) { tlbi(vale1is, tlbi_va(va, ASID_A)); }
static void inv_vaae1is(u64 va) { tlbi(vaae1is, tlbi_va(va, 0)); }
static void inv_vaale1is(u64 va) { tlbi(vaale1is, tlbi_va(va, 0)); }
static void inv_aside1is(u64 va) { (void)va; tlbi(aside1is, TTBR_ASID(ASID_A)); }
static void inv_vmalle1is(u64 va) { (void)va; tlbi_all(vmalle1is); }
/* A global entry matches a by-VA TLBI whatever ASID the operand names. */
static void inv_vae1_other_asid(u64 va) { tlbi(vae1, tlbi_va(va, ASID_OTHER)); }

static void tlb_maintenance(void)
{
	static const struct { const char *name; unsigned page; void (*inv)(u64); } ops[] = {
		{ "tlbi_vae1", P_NG, inv_vae1 },
		{ "tlbi_vale1", P_NG, inv_vale1 },
		{ "tlbi_vaae1", P_NG, inv_vaae1 },
		{ "tlbi_vaale1", P_NG, inv_vaale1 },
		{ "tlbi_aside1", P_NG, inv_aside1 },
		{ "tlbi_vmalle1", P_NG, inv_vmalle1 },
		{ "tlbi_vae1is", P_NG, inv_vae1is },
		{ "tlbi_vale1is", P_NG, inv_vale1is },
		{ "tlbi_vaae1is", P_NG, inv_vaae1is },
		{ "tlbi_vaale1is", P_NG, inv_vaale1is },
		{ "tlbi_aside1is", P_NG, inv_aside1is },
		{ "tlbi_vmalle1is", P_NG, inv_vmalle1is },
		{ "tlbi_vae1_global_other_asid", P_GLOBAL, inv_vae1_other_asid },
		{ "tlbi_vaae1_global", P_GLOBAL, inv_vaae1 },
	};
	for (unsigned i = 0; i < sizeof(ops) / sizeof(ops[0]); i++)
		obs1(ops[i].name, "value", remap_and_read(ops[i].page, ops[i].inv));
}

static void asids(void)
{
	/* Nothing of ASID 2 is cached before its first use. */
	tlb_flush_all();
	obs1("asid1_read", "value", ld64(VA_ASID + 0x90));
	write_sysreg(ttbr0_el1, TABLE(TB_L0_B) | TTBR_ASID(ASID_B));
	isb();
	obs1("asid2_read", "value", ld64(VA_ASID + 0x90));
	/* Global entries (the image, the test pages) serve both ASIDs. */
	obs1("asid2_global_read", "value", ld64(TPG(P_RW) + 8));
	write_sysreg(ttbr0_el1, TABLE(TB_L0_A) | TTBR_ASID(ASID_A));
	isb();
	obs1("asid1_read_again", "value", ld64(VA_ASID + 0x90));
	/* ASID 1's block moves to BLK_C: break, TLBI ASIDE1, make. */
	tables[TB_L2_ASID_A][0] = 0;
	dsb_ish();
	tlbi(aside1, TTBR_ASID(ASID_A));
	dsb_ish();
	tables[TB_L2_ASID_A][0] = normal(BLK_C) | D_BLOCK | D_PXN | D_UXN | D_NG;
	dsb_ish();
	isb();
	obs1("asid1_after_aside1", "value", ld64(VA_ASID + 0x90));
	write_sysreg(ttbr0_el1, TABLE(TB_L0_B) | TTBR_ASID(ASID_B));
	isb();
	obs1("asid2_unchanged", "value", ld64(VA_ASID + 0x90));
	write_sysreg(ttbr0_el1, TABLE(TB_L0_A) | TTBR_ASID(ASID_A));
	isb();
	obs1("asid1_back", "value", ld64(VA_ASID + 0x90));
}

void test_main(void)
{
	check_layout(DATA_END);
	for (u64 pa = BLK_A; pa < DATA_END; pa += 4096)
		fill_page(pa);
	copy_code(PG(5), snippet_start, snippet_end);
	copy_code(PG(8), snippet_start, snippet_end);
	copy_code(PG(9), snippet_start, snippet_end);
	copy_code(PG(20), snippet_start, snippet_end);
	copy_code(PG(25), snippet_start, snippet_end);
	copy_code(PG(7), el0_prog_start, el0_prog_end);
	build_tables();
	write_sysreg(vbar_el1, (u64)mmu_vectors);
	isb();
	mmu_on();
	obs1("mmu_on", "sctlr_m", read_sysreg(sctlr_el1) & SCTLR_M);
	mappings();
	translation_faults();
	access_flag_faults();
	permission_faults();
	unprivileged_accesses();
	at_instructions();
	unaligned_accesses();
	dc_zva_cases();
	tlb_maintenance();
	asids();
	kprintf("OBS_COUNT %u\n", nr_obs);
	finish();
}

void test_secondary(unsigned cpu)
{
	(void)cpu;
	park();
}
