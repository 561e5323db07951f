/*
 * sdei_calls: every SDEI 1.0 call on one vCPU, outside any handler, against the
 * values Arm DEN 0054 (SDEI 1.0) defines for a private, signaled, critical event
 * (DESIGN §4, apf-protocol.md §0.6). No event is ever dispatched here.
 *
 * Sources of the expectations beyond the brief:
 * - PE_MASK returns whether it changed the mask: 0 when the PE was already
 *   masked, 1 when it was unmasked (DEN 0054 §5.1.12; TF-A implements it so).
 *   PE_UNMASK returns SUCCESS either way. A PE starts masked, so the first
 *   PE_MASK returns 0.
 * - ENABLE, DISABLE and UNREGISTER of a valid but unregistered event are DENIED
 *   (the spec's handler state machine); unknown events are INVALID_PARAMETERS.
 * - REGISTER flags other than bit 0 (the routing mode) are reserved.
 */
#include "rt.h"

#define EVENT SDEI_EVENT_ASYNC_PF
#define UNKNOWN_EVENT 0x40400002ul		/* in KVM's virtual range, unassigned */
#define SDEI_UNASSIGNED_1_0_A 0xC400002Ful	/* EVENT_SIGNAL in SDEI 1.1 */
#define SDEI_UNASSIGNED_1_0_B 0xC4000030ul	/* FEATURES in SDEI 1.1 */
#define SDEI_UNASSIGNED_1_0_C 0xC4000033ul
#define SDEI_INFO_UNKNOWN 5
#define SDEI_REGISTER_FLAGS_RESERVED 0x2

static s64 reg(u64 event, u64 flags)
{
	return (s64)call(SDEI_EVENT_REGISTER, event, (u64)sdei_entry, SDEI_TEST_ARG(0), flags, 0)
		.a[0];
}

static u64 status(void)
{
	return (u64)hvc(SDEI_EVENT_STATUS, EVENT, 0, 0);
}

/* Event numbers no call may accept: 0 (no such event in 1.0), all ones, high bits. */
static void bad_event_numbers(void)
{
	static const struct { const char *name; u64 event; } bad[] = {
		{ "event_0", 0 },
		{ "event_ffffffff", 0xfffffffful },
		{ "event_high_bits", (1ul << 32) | EVENT },
	};
	static const char *const calls[] = {
		"register_", "enable_", "disable_", "unregister_", "status_", "get_info_",
	};
	static const u64 fns[] = {
		SDEI_EVENT_REGISTER, SDEI_EVENT_ENABLE, SDEI_EVENT_DISABLE,
		SDEI_EVENT_UNREGISTER, SDEI_EVENT_STATUS, SDEI_EVENT_GET_INFO,
	};
	for (unsigned c = 0; c < sizeof(fns) / sizeof(fns[0]); c++)
		for (unsigned b = 0; b < sizeof(bad) / sizeof(bad[0]); b++) {
			s64 ret = fns[c] == SDEI_EVENT_REGISTER ? reg(bad[b].event, SDEI_RM_ANY)
				: hvc(fns[c], bad[b].event, SDEI_INFO_TYPE, 0);
			check_cat(calls[c], bad[b].name, (u64)ret, (u64)SDEI_INVALID_PARAMETERS);
		}
}

static void info(void)
{
	check("info_type", (u64)hvc(SDEI_EVENT_GET_INFO, EVENT, SDEI_INFO_TYPE, 0),
	      SDEI_TYPE_PRIVATE);
	check("info_signaled", (u64)hvc(SDEI_EVENT_GET_INFO, EVENT, SDEI_INFO_SIGNALED, 0), 1);
	check("info_priority", (u64)hvc(SDEI_EVENT_GET_INFO, EVENT, SDEI_INFO_PRIORITY, 0),
	      SDEI_PRIORITY_CRITICAL);
	check("info_routing_mode_private",
	      (u64)hvc(SDEI_EVENT_GET_INFO, EVENT, SDEI_INFO_ROUTING_MODE, 0),
	      (u64)SDEI_INVALID_PARAMETERS);
	check("info_routing_aff_private",
	      (u64)hvc(SDEI_EVENT_GET_INFO, EVENT, SDEI_INFO_ROUTING_AFF, 0),
	      (u64)SDEI_INVALID_PARAMETERS);
	check("info_unknown_info", (u64)hvc(SDEI_EVENT_GET_INFO, EVENT, SDEI_INFO_UNKNOWN, 0),
	      (u64)SDEI_INVALID_PARAMETERS);
	check("info_unknown_event",
	      (u64)hvc(SDEI_EVENT_GET_INFO, UNKNOWN_EVENT, SDEI_INFO_TYPE, 0),
	      (u64)SDEI_INVALID_PARAMETERS);
}

static void outside_a_handler(void)
{
	check("context_outside_handler", (u64)hvc(SDEI_EVENT_CONTEXT, 0, 0, 0),
	      (u64)SDEI_DENIED);
	check("complete_outside_handler", (u64)hvc(SDEI_EVENT_COMPLETE, 0, 0, 0),
	      (u64)SDEI_DENIED);
	check("complete_and_resume_outside_handler",
	      (u64)hvc(SDEI_EVENT_COMPLETE_AND_RESUME, (u64)vectors + 0x480, 0, 0),
	      (u64)SDEI_DENIED);
}

static void pe_mask(void)
{
	check("pe_mask_starts_masked", (u64)hvc(SDEI_PE_MASK, 0, 0, 0), 0);
	check("pe_unmask", (u64)hvc(SDEI_PE_UNMASK, 0, 0, 0), SDEI_SUCCESS);
	check("pe_unmask_again", (u64)hvc(SDEI_PE_UNMASK, 0, 0, 0), SDEI_SUCCESS);
	check("pe_mask_changes", (u64)hvc(SDEI_PE_MASK, 0, 0, 0), 1);
	check("pe_mask_again", (u64)hvc(SDEI_PE_MASK, 0, 0, 0), 0);
}

void test_main(void)
{
	check("sdei_version", (u64)hvc(SDEI_VERSION, 0, 0, 0), SDEI_VERSION_1_0);
	check("status_before_register", status(), 0);
	check("register_unknown_event", (u64)reg(UNKNOWN_EVENT, SDEI_RM_ANY),
	      (u64)SDEI_INVALID_PARAMETERS);
	bad_event_numbers();
	check("register_reserved_flags", (u64)reg(EVENT, SDEI_REGISTER_FLAGS_RESERVED),
	      (u64)SDEI_INVALID_PARAMETERS);
	check("status_after_refused_registers", status(), 0);
	check("enable_unregistered", (u64)hvc(SDEI_EVENT_ENABLE, EVENT, 0, 0), (u64)SDEI_DENIED);
	check("disable_unregistered", (u64)hvc(SDEI_EVENT_DISABLE, EVENT, 0, 0),
	      (u64)SDEI_DENIED);
	check("unregister_unregistered", (u64)hvc(SDEI_EVENT_UNREGISTER, EVENT, 0, 0),
	      (u64)SDEI_DENIED);

	check("register", (u64)reg(EVENT, SDEI_RM_ANY), SDEI_SUCCESS);
	check("status_registered", status(), SDEI_STATUS_REGISTERED);
	check("register_twice", (u64)reg(EVENT, SDEI_RM_ANY), (u64)SDEI_DENIED);
	check("status_after_register_twice", status(), SDEI_STATUS_REGISTERED);
	info();
	check("routing_set_private", (u64)hvc(SDEI_EVENT_ROUTING_SET, EVENT, SDEI_RM_PE, 0),
	      (u64)SDEI_INVALID_PARAMETERS);

	check("enable", (u64)hvc(SDEI_EVENT_ENABLE, EVENT, 0, 0), SDEI_SUCCESS);
	check("status_enabled", status(), SDEI_STATUS_REGISTERED | SDEI_STATUS_ENABLED);
	outside_a_handler();
	check("status_after_outside_calls", status(),
	      SDEI_STATUS_REGISTERED | SDEI_STATUS_ENABLED);
	check("disable", (u64)hvc(SDEI_EVENT_DISABLE, EVENT, 0, 0), SDEI_SUCCESS);
	check("status_disabled", status(), SDEI_STATUS_REGISTERED);

	pe_mask();
	check("interrupt_bind", (u64)hvc(SDEI_INTERRUPT_BIND, APF_DEFAULT_PPI, 0, 0),
	      (u64)SDEI_NOT_SUPPORTED);
	check("interrupt_release", (u64)hvc(SDEI_INTERRUPT_RELEASE, EVENT, 0, 0),
	      (u64)SDEI_NOT_SUPPORTED);

	check("unregister", (u64)hvc(SDEI_EVENT_UNREGISTER, EVENT, 0, 0), SDEI_SUCCESS);
	check("status_unregistered", status(), 0);
	check("unregister_again", (u64)hvc(SDEI_EVENT_UNREGISTER, EVENT, 0, 0),
	      (u64)SDEI_DENIED);

	/* PRIVATE_RESET unregisters this PE's registered and enabled event. */
	check("register_for_reset", (u64)reg(EVENT, SDEI_RM_ANY), SDEI_SUCCESS);
	check("enable_for_reset", (u64)hvc(SDEI_EVENT_ENABLE, EVENT, 0, 0), SDEI_SUCCESS);
	check("private_reset", (u64)hvc(SDEI_PRIVATE_RESET, 0, 0, 0), SDEI_SUCCESS);
	check("status_after_private_reset", status(), 0);
	check("register_after_private_reset", (u64)reg(EVENT, SDEI_RM_ANY), SDEI_SUCCESS);
	check("shared_reset", (u64)hvc(SDEI_SHARED_RESET, 0, 0, 0), SDEI_SUCCESS);
	check("status_after_shared_reset", status(), SDEI_STATUS_REGISTERED);
	check("unregister_after_resets", (u64)hvc(SDEI_EVENT_UNREGISTER, EVENT, 0, 0),
	      SDEI_SUCCESS);

	check("unassigned_0xc400002f", (u64)hvc(SDEI_UNASSIGNED_1_0_A, 0, 0, 0),
	      (u64)SDEI_NOT_SUPPORTED);
	check("unassigned_0xc4000030", (u64)hvc(SDEI_UNASSIGNED_1_0_B, 0, 0, 0),
	      (u64)SDEI_NOT_SUPPORTED);
	check("unassigned_0xc4000033", (u64)hvc(SDEI_UNASSIGNED_1_0_C, 0, 0, 0),
	      (u64)SDEI_NOT_SUPPORTED);
	check("sdei_version_still", (u64)hvc(SDEI_VERSION, 0, 0, 0), SDEI_VERSION_1_0);
	finish();
}

void test_secondary(unsigned cpu)
{
	kprintf("FAIL unexpected_cpu got=0x%x want=0x0\n", cpu);
	finish();
}
