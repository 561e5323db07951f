/*
 * psci_calls (3 vCPUs): PSCI 1.1 over HVC as the Arm PSCI specification (DEN
 * 0022) defines it. vCPU 1 is brought up twice through probe_entry, which
 * records the state PSCI promises at the entry point (x0 = context id, EL1h,
 * MMU off, DAIF masked); it goes off once with CPU_OFF and stays on the second
 * time, so SYSTEM_OFF has to stop a running vCPU. vCPU 2 only ever gets a
 * CPU_ON with an entry point outside RAM, which must leave it off.
 *
 * On QEMU (which runs this image too) the only expected failure is
 * cpu_on_entry_outside_ram: QEMU does not validate the entry point.
 */
#include "rt.h"

#define NONEXISTENT_MPIDR 0xfful	/* Aff0 255: no VM has that many vCPUs */
#define ENTRY_OUTSIDE_RAM 0x1000ul	/* below guest RAM: no memory on apf */
#define PSCI_UNASSIGNED 0x8400001Ful	/* in the PSCI range, no function */
#define CTX_FIRST 0xc0de0001a9f00001ul
#define CTX_SECOND 0xc0de0002a9f00002ul
#define SCTLR_M 1ul

/* What probe_entry saw, before it joined the runtime at secondary_entry. */
struct probe {
	u64 x0, current_el, spsel, sctlr, daif;
};
volatile struct probe probe;

enum { CMD_WAIT, CMD_OFF, CMD_STAY };
static volatile u32 arrivals;		/* secondary entries so far */
static volatile u32 command = CMD_WAIT;
static volatile u64 cpu_off_returned;

void probe_entry(void);
__asm__(
	"	.text\n"
	"	.globl probe_entry\n"
	"probe_entry:\n"
	"	adrp	x9, probe\n"
	"	add	x9, x9, :lo12:probe\n"
	"	mrs	x10, CurrentEL\n"
	"	mrs	x11, SPSel\n"
	"	mrs	x12, sctlr_el1\n"
	"	mrs	x13, daif\n"
	"	stp	x0, x10, [x9]\n"
	"	stp	x11, x12, [x9, #16]\n"
	"	str	x13, [x9, #32]\n"
	"	dsb	sy\n"
	"	b	secondary_entry\n");

static u64 affinity(u64 mpidr)
{
	return (u64)hvc(PSCI_AFFINITY_INFO, mpidr, 0, 0);
}

static void features(void)
{
	static const struct { const char *name; u64 fn; } implemented[] = {
		{ "features_version", PSCI_VERSION },
		{ "features_cpu_off", PSCI_CPU_OFF },
		{ "features_cpu_on", PSCI_CPU_ON },
		{ "features_affinity_info", PSCI_AFFINITY_INFO },
		{ "features_system_off", PSCI_SYSTEM_OFF },
		{ "features_system_reset", PSCI_SYSTEM_RESET },
		{ "features_features", PSCI_FEATURES },
	};
	for (unsigned i = 0; i < sizeof(implemented) / sizeof(implemented[0]); i++)
		check(implemented[i].name, (u64)hvc(PSCI_FEATURES, implemented[i].fn, 0, 0),
		      PSCI_RET_SUCCESS);
	check("features_unimplemented", (u64)hvc(PSCI_FEATURES, PSCI_UNASSIGNED, 0, 0),
	      (u64)PSCI_RET_NOT_SUPPORTED);
}

/* CPU_ON of vCPU 1 at probe_entry; checks `<what>_<round>` of what it found. */
static void bring_up_cpu1(const char *round, u64 ctx)
{
	u32 before = arrivals;
	check_cat("cpu_on_", round, (u64)hvc(PSCI_CPU_ON, 1, (u64)probe_entry, ctx),
		   PSCI_RET_SUCCESS);
	while (arrivals == before)
		;
	check_cat("secondary_context_id_", round, probe.x0, ctx);
	check_cat("secondary_el1h_", round, probe.current_el | probe.spsel, CURRENTEL_EL1 | 1);
	check_cat("secondary_mmu_off_", round, probe.sctlr & SCTLR_M, 0);
	check_cat("secondary_daif_masked_", round, probe.daif, DAIF_MASKED);
}

/* Polls AFFINITY_INFO until vCPU 1 is off; anything but ON or OFF fails. */
static void wait_cpu1_off(const char *name)
{
	u64 state;
	do
		state = affinity(1);
	while (state == PSCI_AFFINITY_ON);
	check(name, state, PSCI_AFFINITY_OFF);
}

void test_main(void)
{
	check("psci_version", (u64)hvc(PSCI_VERSION, 0, 0, 0), PSCI_VERSION_1_1);
	features();
	check("affinity_self_on", affinity(0), PSCI_AFFINITY_ON);
	check("affinity_cpu1_off_before", affinity(1), PSCI_AFFINITY_OFF);
	check("affinity_nonexistent", affinity(NONEXISTENT_MPIDR),
	      (u64)PSCI_RET_INVALID_PARAMETERS);
	check("cpu_on_nonexistent", (u64)hvc(PSCI_CPU_ON, NONEXISTENT_MPIDR, (u64)probe_entry, 0),
	      (u64)PSCI_RET_INVALID_PARAMETERS);
	check("cpu_on_self", (u64)hvc(PSCI_CPU_ON, 0, (u64)probe_entry, 0),
	      (u64)PSCI_RET_ALREADY_ON);

	bring_up_cpu1("first", CTX_FIRST);
	check("affinity_cpu1_on", affinity(1), PSCI_AFFINITY_ON);
	check("cpu_on_running", (u64)hvc(PSCI_CPU_ON, 1, (u64)probe_entry, 0),
	      (u64)PSCI_RET_ALREADY_ON);
	command = CMD_OFF;
	wait_cpu1_off("affinity_cpu1_off_after_cpu_off");

	command = CMD_STAY;
	bring_up_cpu1("again", CTX_SECOND);
	check("affinity_cpu1_on_again", affinity(1), PSCI_AFFINITY_ON);
	check("cpu_off_does_not_return", cpu_off_returned, 0);

	check("cpu_on_entry_outside_ram",
	      (u64)hvc(PSCI_CPU_ON, 2, ENTRY_OUTSIDE_RAM, 0), (u64)PSCI_RET_INVALID_ADDRESS);
	check("affinity_cpu2_off_after_bad_entry", affinity(2), PSCI_AFFINITY_OFF);
	finish();	/* SYSTEM_OFF with vCPU 1 still on */
}

void test_secondary(unsigned cpu)
{
	if (cpu != 1) {
		kprintf("FAIL unexpected_cpu got=0x%x want=0x1\n", cpu);
		finish();
	}
	u32 cmd;
	barrier();
	arrivals = arrivals + 1;
	while ((cmd = command) == CMD_WAIT)
		;
	if (cmd == CMD_OFF) {
		hvc(PSCI_CPU_OFF, 0, 0, 0);
		cpu_off_returned = 1;
	}
	park();
}
