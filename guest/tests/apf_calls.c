/*
 * apf_calls (1 vCPU): the hypercall surface of APF without a single fault.
 * Discovery (SMCCC, vendor-hyp UID and FEATURES), the ASYNC_PF sub-functions,
 * ENABLE's validation (DESIGN §4), the wake-all every ENABLE queues (§5.6)
 * arriving as the level page-ready PPI that only IRQ_ACK lowers (§4, §5.5), and
 * NOT_REQUIRED for an ENABLE or disable that changes nothing.
 *
 * ENABLE's control word is GPA[63:6] | flags[2:0] with bits 5:3 reserved, so a
 * block address that is not 64-byte aligned is refused only when its low bits
 * land on a reserved bit: block + 8 sets bit 3 and must be INVALID_PARAMETER;
 * (block + 1 would read as the ENABLED flag on an aligned block.)
 * The calls are SMC32: bits 63:32 of x1..x3 are not part of the arguments.
 */
#include "rt.h"

#define FLAGS (APF_CONTROL_ENABLED | APF_CONTROL_SEPARATE_READY)
#define GPA_FAR_OUTSIDE_RAM (1ul << 47)
#define UPPER_JUNK 0xdead5a5a00000000ul
#define ARCH_UNASSIGNED 0x800000FFul		/* Arm architecture range, no function */
#define VENDOR_HYP_UNASSIGNED 0x86000031ul
#define ASYNC_PF_FUNC_UNKNOWN 6
#define ENABLE_STORM 1000

static struct apf_shared_data block __attribute__((aligned(APF_SHARED_BLOCK_ALIGN)));

static void discovery(void)
{
	/* The UID's four words are 32-bit results (W0..W3). */
	struct smccc_res r = call(SMCCC_VENDOR_HYP_UID, 0, 0, 0, 0, 0);
	check("vendor_uid_0", (u32)r.a[0], APF_UID_0);
	check("vendor_uid_1", (u32)r.a[1], APF_UID_1);
	check("vendor_uid_2", (u32)r.a[2], APF_UID_2);
	check("vendor_uid_3", (u32)r.a[3], APF_UID_3);
	/* FEATURES: function n is bit n % 32 of x[n / 32]; 0x30 is bit 16 of x1. */
	r = call(SMCCC_VENDOR_HYP_FEATURES, 0, 0, 0, 0, 0);
	check("vendor_features_async_pf", (r.a[SMCCC_VENDOR_HYP_FUNC_ASYNC_PF / 32] >>
					   (SMCCC_VENDOR_HYP_FUNC_ASYNC_PF % 32)) & 1, 1);
	check("vendor_features_self", r.a[0] & 1, 1);
	check("smccc_version", (u64)hvc(SMCCC_VERSION, 0, 0, 0), SMCCC_VERSION_1_1);
	check("psci_features_smccc_version", (u64)hvc(PSCI_FEATURES, SMCCC_VERSION, 0, 0),
	      SMCCC_RET_SUCCESS);
	/*
	 * ARCH_FEATURES describes Arm Architecture Service calls only (SMCCC,
	 * DEN 0028): a vendor-hyp function is not one, whatever the vendor-hyp
	 * FEATURES bitmap says about it.
	 */
	check("arch_features_async_pf_not_arch",
	      (u64)hvc(SMCCC_ARCH_FEATURES, SMCCC_VENDOR_HYP_ASYNC_PF, 0, 0),
	      (u64)SMCCC_RET_NOT_SUPPORTED);
	check("arch_features_arch_features",
	      (u64)hvc(SMCCC_ARCH_FEATURES, SMCCC_ARCH_FEATURES, 0, 0), SMCCC_RET_SUCCESS);
	check("arch_features_unassigned", (u64)hvc(SMCCC_ARCH_FEATURES, ARCH_UNASSIGNED, 0, 0),
	      (u64)SMCCC_RET_NOT_SUPPORTED);
	check("vendor_hyp_unassigned", (u64)hvc(VENDOR_HYP_UNASSIGNED, 0, 0, 0),
	      (u64)SMCCC_RET_NOT_SUPPORTED);
}

static void sub_functions(void)
{
	u64 value = 0;
	check("apf_version_ret", (u64)apf_call(ASYNC_PF_FUNC_VERSION, 0, 0, &value),
	      SMCCC_RET_SUCCESS);
	check("apf_version", value, APF_VERSION);
	check("apf_slots_ret", (u64)apf_call(ASYNC_PF_FUNC_SLOTS, 0, 0, &value), SMCCC_RET_SUCCESS);
	check("apf_slots", value, APF_ASYNC_PF_PER_VCPU);
	check("apf_sdei_ret", (u64)apf_call(ASYNC_PF_FUNC_SDEI, 0, 0, &value), SMCCC_RET_SUCCESS);
	check("apf_sdei", value, SDEI_EVENT_ASYNC_PF);
	check("apf_irq_ret", (u64)apf_call(ASYNC_PF_FUNC_IRQ, 0, 0, &value), SMCCC_RET_SUCCESS);
	check("apf_irq", value, APF_DEFAULT_PPI);
	value = 0;
	check("apf_subfn_upper_bits_ignored_ret",
	      (u64)apf_call(UPPER_JUNK | ASYNC_PF_FUNC_VERSION, 0, 0, &value), SMCCC_RET_SUCCESS);
	check("apf_subfn_upper_bits_ignored", value, APF_VERSION);
	check("apf_unknown_subfn", (u64)apf_call(ASYNC_PF_FUNC_UNKNOWN, 0, 0, NULL),
	      (u64)SMCCC_RET_NOT_SUPPORTED);
	check("irq_ack_before_enable", (u64)apf_call(ASYNC_PF_FUNC_IRQ_ACK, 0, 0, NULL),
	      SMCCC_RET_SUCCESS);
}

static void refused_enables(void)
{
	static const char *const reserved[] = {
		"enable_reserved_bit3", "enable_reserved_bit4", "enable_reserved_bit5",
	};
	for (unsigned bit = 3; bit <= 5; bit++)
		check(reserved[bit - 3], (u64)apf_enable((u64)&block | FLAGS | (1ul << bit)),
		      (u64)SMCCC_RET_INVALID_PARAMETER);
	check("enable_unaligned_gpa", (u64)apf_enable(((u64)&block + 8) | FLAGS),
	      (u64)SMCCC_RET_INVALID_PARAMETER);
	check("enable_gpa_below_ram", (u64)apf_enable(0x1000 | FLAGS),
	      (u64)SMCCC_RET_INVALID_PARAMETER);
	check("enable_gpa_at_ram_end", (u64)apf_enable((APF_RAM_BASE + TEST_RAM_SIZE) | FLAGS),
	      (u64)SMCCC_RET_INVALID_PARAMETER);
	check("enable_gpa_far_outside_ram", (u64)apf_enable(GPA_FAR_OUTSIDE_RAM | FLAGS),
	      (u64)SMCCC_RET_INVALID_PARAMETER);
	check("enable_gpa_mmio_uart", (u64)apf_enable(APF_UART_BASE | FLAGS),
	      (u64)SMCCC_RET_INVALID_PARAMETER);
	check("disable_while_disabled", (u64)apf_enable(0), (u64)SMCCC_RET_NOT_REQUIRED);
}

/*
 * The wake-all the ENABLE queued: PPI pending, ready channel = (PAGE_READY,
 * WAKE_ALL), not-present channel untouched; the line stays up across an EOI
 * until IRQ_ACK lowers it.
 */
static void wake_all_ppi(u32 ppi)
{
	wait_pending(ppi);
	check("wake_all_ready_reason", block.ready_reason, APF_REASON_PAGE_READY);
	check("wake_all_ready_token", block.ready_token, APF_TOKEN_WAKE_ALL);
	check("wake_all_not_present_channel_clear", ((u64)block.reason << 32) | block.token, 0);
	check("ppi_iar", gic_ack(), ppi);
	gic_eoi(ppi);
	check("ppi_held_until_ack", gic_pending(), ppi);
	check("ppi_iar_again", gic_ack(), ppi);
	block.ready_token = 0;
	barrier_st();
	block.ready_reason = 0;
	check("irq_ack", (u64)apf_call(ASYNC_PF_FUNC_IRQ_ACK, 0, 0, NULL), SMCCC_RET_SUCCESS);
	gic_eoi(ppi);
	check("irq_ack_lowers_ppi", gic_pending(), INTID_NONE);
}

void test_main(void)
{
	gic_setup(0);
	discovery();
	sub_functions();
	refused_enables();

	gic_ppi_enable(0, APF_DEFAULT_PPI, 1);
	u64 word = (u64)&block | FLAGS;
	s64 ret = apf_call(ASYNC_PF_FUNC_ENABLE, UPPER_JUNK | (word & 0xffffffff),
			   UPPER_JUNK | (word >> 32), NULL);
	check("enable_upper_bits_ignored", (u64)ret, SMCCC_RET_SUCCESS);
	if (ret == SMCCC_RET_SUCCESS)
		wake_all_ppi(APF_DEFAULT_PPI);
	else
		kprintf("FAIL wake_all_ppi got=0x%lx want=0x0 (APF not enabled)\n", (u64)ret);

	check("enable_again", (u64)apf_enable(word), (u64)SMCCC_RET_NOT_REQUIRED);
	unsigned not_required = 0;
	for (unsigned i = 0; i < ENABLE_STORM; i++)
		not_required += apf_enable(word) == SMCCC_RET_NOT_REQUIRED;
	check("enable_storm_not_required", not_required, ENABLE_STORM);
	check("enable_storm_no_wake_all", gic_pending(), INTID_NONE);
	check("irq_ack_nothing_pending", (u64)apf_call(ASYNC_PF_FUNC_IRQ_ACK, 0, 0, NULL),
	      SMCCC_RET_SUCCESS);
	check("disable", (u64)apf_enable(0), SMCCC_RET_SUCCESS);
	check("disable_again", (u64)apf_enable(0), (u64)SMCCC_RET_NOT_REQUIRED);
	check("apf_version_after_disable", (u64)apf_call(ASYNC_PF_FUNC_VERSION, 0, 0, NULL),
	      SMCCC_RET_SUCCESS);
	finish();
}

void test_secondary(unsigned cpu)
{
	kprintf("FAIL unexpected_cpu got=0x%x want=0x0\n", cpu);
	finish();
}
