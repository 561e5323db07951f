/*
 * The guest's side of the two notifications, checked on every occurrence:
 * not-present (SDEI dispatch, shared block channel 0) and page-ready (PPI, the
 * ABI 1.1 ready channel). What a test does with the token is its own business.
 */
#include "rt.h"

u32 take_not_present(struct not_present_tallies *t, unsigned cpu,
		     struct apf_shared_data *block, const struct apf_host *host,
		     u64 event, u64 arg, u64 pc, u64 pstate)
{
	u64 state = read_sysreg(CurrentEL) | read_sysreg(SPSel) | read_sysreg(daif);
	tally_eq(&t->entry, state, CURRENTEL_EL1 | 1 | DAIF_MASKED);
	tally_eq(&t->event, event, host->event);
	tally_eq(&t->arg, arg, SDEI_TEST_ARG(cpu));
	tally(&t->pc, user_pc(pc), pc, (u64)__user_text_start);
	int from_el0 = (pstate & PSTATE_M_MASK) == PSTATE_EL0T;
	tally(&t->pstate, from_el0, pstate, PSTATE_EL0T);

	u32 reason = block->reason;
	barrier_ld();
	u32 token = block->token;
	tally_eq(&t->reason, reason, APF_REASON_PAGE_NOT_PRESENT);
	/* (id << 12) | vcpu, never 0 and never the wake-all value. */
	int token_ok = token != 0 && token != APF_TOKEN_WAKE_ALL &&
		(token & ((1u << APF_TOKEN_VCPU_BITS) - 1)) == cpu;
	tally(&t->token, token_ok, token, cpu);
	block->token = 0;
	barrier_st();
	block->reason = 0;
	int usable = from_el0 && reason == APF_REASON_PAGE_NOT_PRESENT && token_ok;
	return usable ? token : 0;
}

void report_not_present(const struct not_present_tallies *t)
{
	report(&t->entry);
	report(&t->event);
	report(&t->arg);
	report(&t->pc);
	report(&t->pstate);
	report(&t->reason);
	report(&t->token);
}

u32 take_page_ready(struct tally *reason_tally, struct apf_shared_data *block)
{
	u32 reason = block->ready_reason;
	barrier_ld();
	u32 token = block->ready_token;
	tally_eq(reason_tally, reason, APF_REASON_PAGE_READY);
	if (reason != APF_REASON_PAGE_READY)
		return 0;
	block->ready_token = 0;
	barrier_st();
	block->ready_reason = 0;
	return token;
}
