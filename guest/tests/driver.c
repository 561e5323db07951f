/*
 * The guest's side of the two notifications, checked on every occurrence:
 * not-present (SDEI dispatch, shared block channel 0) and page-ready (PPI, the
 * ABI 1.1 ready channel); and a driver that handles both as a guest should.
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

/*
 * Reads the ready channel: tallies the reason, clears the channel, and returns
 * the token; 0 when the reason was not PAGE_READY.
 */
static u32 take_page_ready(struct tally *reason_tally, struct apf_shared_data *block)
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

int driver_bring_up(struct apf_driver *d, const char *name)
{
	return apf_bring_up(d->cpu, name, d->block,
			    APF_CONTROL_ENABLED | APF_CONTROL_SEPARATE_READY, &d->host);
}

struct sdei_finish driver_not_present(struct apf_driver *d, u64 event, u64 arg, u64 pc,
				      u64 pstate)
{
	struct sdei_finish plain = { SDEI_EVENT_COMPLETE, 0 };
	d->not_present++;
	u32 token = take_not_present(&d->np, d->cpu, d->block, &d->host, event, arg, pc, pstate);
	unsigned room = sizeof(d->outstanding) / sizeof(d->outstanding[0]);
	if (!token || !task_current(d->cpu) || d->nr_outstanding == room)
		return plain;	/* the access is retried and resolved synchronously */
	d->outstanding[d->nr_outstanding++] = token;
	return park_current(d->cpu, token);
}

static int forget(struct apf_driver *d, u32 token)
{
	for (unsigned i = 0; i < d->nr_outstanding; i++)
		if (d->outstanding[i] == token) {
			d->outstanding[i] = d->outstanding[--d->nr_outstanding];
			return 1;
		}
	return 0;
}

void driver_interrupt(struct apf_driver *d, u32 intid)
{
	tally_eq(&d->intid, intid, d->host.ppi);
	if (intid != d->host.ppi)
		return;
	u32 token = take_page_ready(&d->ready_reason, d->block);
	if (token == APF_TOKEN_WAKE_ALL) {
		d->wake_all++;
		d->nr_outstanding = 0;
		tally(&d->ready_token, 1, token, 0);
	} else if (token) {
		d->page_ready++;
		tally(&d->ready_token, forget(d, token), token, 0);
	}
	if (token)
		task_wake(d->cpu, token);
	/* Acknowledged whatever the channel held: only IRQ_ACK lowers the line. */
	tally_eq(&d->ack, (u64)apf_call(ASYNC_PF_FUNC_IRQ_ACK, 0, 0, NULL), SMCCC_RET_SUCCESS);
}

void driver_report(const struct apf_driver *d)
{
	report_not_present(&d->np);
	report(&d->intid);
	report(&d->ready_reason);
	report(&d->ready_token);
	report(&d->ack);
	check_cat(d->prefix, "not_present_seen", d->not_present ? 1 : 0, 1);
}

void driver_check_all_woken(const struct apf_driver *d)
{
	check_cat(d->prefix, "tokens_all_woken", d->nr_outstanding, 0);
}
