/*
 * hostile_blocks (2 vCPUs, the calls VM): shared blocks two vCPUs fight over,
 * and block addresses off the 64-byte grid.
 *
 * The host reads and writes only the first 16 bytes of a block (both channels,
 * SHARED_HOST_WINDOW) and a block's GPA is 64-byte aligned by construction (the
 * low 6 bits of ENABLE's control word are flags), so two blocks share a byte the
 * host writes exactly when they are at the same GPA. What the host must do
 * (DESIGN §4):
 *
 * - vCPU 1 asks for vCPU 0's block: INVALID_PARAMETER, whatever its flags
 *   (`overlap_*`); nothing is written to the block (`overlap_block_untouched`).
 * - the block 64 bytes further on shares no host-written byte with it (it lies
 *   on vCPU 0's guest-private `enabled` word, which the host never touches):
 *   SUCCESS (`adjacent_block`), its wake-all lands there, and vCPU 0's channels
 *   stay clear (`adjacent_leaves_neighbour_alone`).
 * - an address off the grid is an aligned block plus flags, not an unaligned
 *   block: B + 8, + 16, + 32 set reserved bits 3, 4, 5 and are INVALID_PARAMETER
 *   (`unaligned_plus_8` ...); B + 2 with ENABLED is the block B with SEND_ALWAYS,
 *   SUCCESS, and the wake-all lands at B, not at B + 2 (`unaligned_plus_2_*`).
 * - once vCPU 0 disables, its block is free: vCPU 1 takes it (SUCCESS,
 *   `freed_block_taken`), and now vCPU 0 is refused it (`overlap_after_handover`).
 *
 * The vCPUs take turns through `step`; nothing here faults.
 */
#include "rt.h"

#define FLAGS (APF_CONTROL_ENABLED | APF_CONTROL_SEPARATE_READY)
#define BLOCK_BYTES 64

/* Four blocks on the 64-byte grid, back to back. */
static volatile u32 area[4 * BLOCK_BYTES / 4] __attribute__((aligned(APF_SHARED_BLOCK_ALIGN)));
static volatile u32 step;

static u64 block_at(unsigned n)
{
	return (u64)&area[n * BLOCK_BYTES / 4];
}

static volatile u32 *words(u64 block)
{
	return (volatile u32 *)block;
}

/* Both channels of a block, as one value per channel: reason << 32 | token. */
static u64 not_present_channel(u64 block)
{
	return ((u64)words(block)[0] << 32) | words(block)[1];
}

static u64 ready_channel(u64 block)
{
	return ((u64)words(block)[2] << 32) | words(block)[3];
}

/* The wake-all every successful ENABLE posts: checked, cleared and acknowledged. */
static void take_wake_all(const char *name, u64 block)
{
	check(name, ready_channel(block), ((u64)APF_REASON_PAGE_READY << 32) | APF_TOKEN_WAKE_ALL);
	words(block)[3] = 0;
	barrier_st();
	words(block)[2] = 0;
	apf_call(ASYNC_PF_FUNC_IRQ_ACK, 0, 0, NULL);
}

static void wait_step(u32 n)
{
	while (step != n)
		;
	barrier();
}

static void next_step(u32 n)
{
	barrier();
	step = n;
}

void test_main(void)
{
	gic_setup(0);
	check("cpu1_on", (u64)hvc(PSCI_CPU_ON, 1, (u64)secondary_entry, 0), PSCI_RET_SUCCESS);
	u64 a = block_at(0);
	check("owner_enable", (u64)apf_enable(a | FLAGS), SMCCC_RET_SUCCESS);
	take_wake_all("owner_wake_all", a);
	next_step(1);

	wait_step(2);
	check("adjacent_leaves_neighbour_alone", not_present_channel(a) | ready_channel(a), 0);
	check("owner_disable", (u64)apf_enable(0), SMCCC_RET_SUCCESS);
	next_step(3);

	wait_step(4);
	check("overlap_after_handover", (u64)apf_enable(a | FLAGS),
	      (u64)SMCCC_RET_INVALID_PARAMETER);
	check("owner_still_disabled", (u64)apf_enable(0), (u64)SMCCC_RET_NOT_REQUIRED);
	next_step(5);

	wait_step(6);
	finish();
}

void test_secondary(unsigned cpu)
{
	if (cpu != 1) {
		kprintf("FAIL unexpected_cpu got=0x%x want=0x1\n", cpu);
		finish();
	}
	gic_setup(1);
	u64 a = block_at(0), adjacent = block_at(1), b = block_at(2);
	wait_step(1);
	check("overlap", (u64)apf_enable(a | FLAGS), (u64)SMCCC_RET_INVALID_PARAMETER);
	check("overlap_send_always", (u64)apf_enable(a | FLAGS | APF_CONTROL_SEND_ALWAYS),
	      (u64)SMCCC_RET_INVALID_PARAMETER);
	check("overlap_abi_1_0", (u64)apf_enable(a | APF_CONTROL_ENABLED),
	      (u64)SMCCC_RET_INVALID_PARAMETER);
	check("overlap_block_untouched", not_present_channel(a) | ready_channel(a), 0);

	check("adjacent_block", (u64)apf_enable(adjacent | FLAGS), SMCCC_RET_SUCCESS);
	take_wake_all("adjacent_wake_all", adjacent);
	check("adjacent_disable", (u64)apf_enable(0), SMCCC_RET_SUCCESS);

	check("unaligned_plus_8", (u64)apf_enable((b + 8) | FLAGS),
	      (u64)SMCCC_RET_INVALID_PARAMETER);
	check("unaligned_plus_16", (u64)apf_enable((b + 16) | FLAGS),
	      (u64)SMCCC_RET_INVALID_PARAMETER);
	check("unaligned_plus_32", (u64)apf_enable((b + 32) | FLAGS),
	      (u64)SMCCC_RET_INVALID_PARAMETER);
	check("unaligned_plus_2_is_send_always", (u64)apf_enable((b + 2) | FLAGS),
	      SMCCC_RET_SUCCESS);
	take_wake_all("unaligned_plus_2_wake_all_at_block", b);
	check("unaligned_plus_2_disable", (u64)apf_enable(0), SMCCC_RET_SUCCESS);
	next_step(2);

	wait_step(3);
	check("freed_block_taken", (u64)apf_enable(a | FLAGS), SMCCC_RET_SUCCESS);
	take_wake_all("freed_block_wake_all", a);
	next_step(4);

	wait_step(5);
	check("taker_disable", (u64)apf_enable(0), SMCCC_RET_SUCCESS);
	next_step(6);
	park();
}
