/*
 * apf_flow (1 vCPU; the VM has 64 MiB of RAM, a ~2 MiB host budget and a slow
 * store, so the 16 MiB array is evicted while it is written): the whole APF
 * flow as the real driver runs it, checked at every step.
 *
 * Two EL0 tasks: the stamp job (writes a stamp to every page of the array, then
 * reads them all back) and a spinner that runs while the job is parked.
 * - Not-present (SDEI): x0..x3 and the block checked (apf_events.c); on the
 *   first dispatches also STATUS = registered|enabled|running and CONTEXT(0..17),
 *   which must equal x0..x17 when COMPLETE_AND_RESUME lands in the IRQ vector
 *   with ELR = x2 and SPSR = x3. The job parks on the token.
 * - Page-ready (PPI): reason 2 and a token we were told about (or wake-all);
 *   wakes the job, IRQ_ACK.
 * The end: every stamp read back right, at least one not-present, and every
 * token got its page-ready or a wake-all.
 */
#include "rt.h"

#define ARRAY_BYTES (16 * MiB)
#define CONTEXT_CHECKS 8		/* dispatches whose CONTEXT is read back */
#define MAX_OUTSTANDING (2 * APF_ASYNC_PF_PER_VCPU)
#define SPINS_PER_YIELD 256

static struct apf_shared_data block __attribute__((aligned(APF_SHARED_BLOCK_ALIGN)));
static struct apf_host host;
static struct stamp_job job = {
	.base = TEST_DATA_BASE,
	.pages = ARRAY_BYTES / APF_PAGE_SIZE,
	.salt = 0xf10e5a17f10e5a17ul,
};
static volatile u64 spins;

static u32 outstanding[MAX_OUTSTANDING];	/* tokens told not-present, not yet ready */
static unsigned nr_outstanding;
static u64 nr_not_present, nr_page_ready, nr_wake_all;

/* What COMPLETE_AND_RESUME must deliver to the IRQ vector. */
static struct {
	int pending, with_context;
	u64 pc, pstate;
	u64 x[SDEI_SAVED_REGS];
} resume;

static struct not_present_tallies np = NOT_PRESENT_TALLIES;
static struct tally t_status = TALLY("sdei_status_running");
static struct tally t_context_range = TALLY("sdei_context_index_out_of_range");
static struct tally t_resume_pc = TALLY("resume_elr_is_x2");
static struct tally t_resume_pstate = TALLY("resume_spsr_is_x3");
static struct tally t_resume_regs = TALLY("resume_x0_x17_are_context");
static struct tally t_intid = TALLY("interrupt_is_page_ready");
static struct tally t_ready_reason = TALLY("page_ready_reason");
static struct tally t_ready_token = TALLY("page_ready_token_known");
static struct tally t_ack = TALLY("irq_ack");

SECTION_USER static void spinner(u64 arg)
{
	volatile struct stamp_job *j = (volatile struct stamp_job *)arg;
	user_syscall(SYS_BARRIER);
	while (!j->done)
		if (++spins % SPINS_PER_YIELD == 0)
			user_syscall(SYS_YIELD);
	user_syscall(SYS_EXIT);
	__builtin_unreachable();
}

/* Reads what the handler may read only while the event runs. */
static void check_running_event(u64 event, u64 *context)
{
	tally_eq(&t_status, (u64)hvc(SDEI_EVENT_STATUS, event, 0, 0),
		 SDEI_STATUS_REGISTERED | SDEI_STATUS_ENABLED | SDEI_STATUS_RUNNING);
	for (unsigned i = 0; i < SDEI_SAVED_REGS; i++)
		context[i] = (u64)hvc(SDEI_EVENT_CONTEXT, i, 0, 0);
	tally_eq(&t_context_range, (u64)hvc(SDEI_EVENT_CONTEXT, SDEI_SAVED_REGS, 0, 0),
		 (u64)SDEI_INVALID_PARAMETERS);
}

struct sdei_finish on_sdei(u64 event, u64 arg, u64 pc, u64 pstate)
{
	struct sdei_finish plain = { SDEI_EVENT_COMPLETE, 0 };
	u64 context[SDEI_SAVED_REGS];
	int with_context = nr_not_present < CONTEXT_CHECKS;
	if (with_context)
		check_running_event(event, context);
	nr_not_present++;
	u32 token = take_not_present(&np, 0, &block, &host, event, arg, pc, pstate);
	if (!token || !task_current(0) || nr_outstanding == MAX_OUTSTANDING)
		return plain;	/* the access is retried and resolved synchronously */
	outstanding[nr_outstanding++] = token;
	resume.pending = 1;
	resume.with_context = with_context;
	resume.pc = pc;
	resume.pstate = pstate;
	if (with_context)
		memcpy(resume.x, context, sizeof(context));
	return park_current(0, token);
}

static void on_irq_entry(unsigned cpu, struct frame *f)
{
	(void)cpu;
	if (!resume.pending)
		return;
	resume.pending = 0;
	tally_eq(&t_resume_pc, f->elr, resume.pc);
	tally_eq(&t_resume_pstate, f->spsr, resume.pstate);
	if (!resume.with_context)
		return;
	unsigned bad = SDEI_SAVED_REGS;
	for (unsigned i = SDEI_SAVED_REGS; i-- > 0;)
		if (f->x[i] != resume.x[i])
			bad = i;
	if (bad == SDEI_SAVED_REGS)
		tally(&t_resume_regs, 1, 0, 0);
	else
		tally(&t_resume_regs, 0, f->x[bad], resume.x[bad]);
}

static int forget(u32 token)
{
	for (unsigned i = 0; i < nr_outstanding; i++)
		if (outstanding[i] == token) {
			outstanding[i] = outstanding[--nr_outstanding];
			return 1;
		}
	return 0;
}

void on_interrupt(unsigned cpu, u32 intid)
{
	tally_eq(&t_intid, intid, host.ppi);
	if (intid != host.ppi)
		return;
	u32 token = take_page_ready(&t_ready_reason, &block);
	if (token == APF_TOKEN_WAKE_ALL) {
		nr_wake_all++;
		nr_outstanding = 0;
		tally(&t_ready_token, 1, token, 0);
	} else if (token) {
		nr_page_ready++;
		tally(&t_ready_token, forget(token), token, 0);
	}
	if (token)
		task_wake(cpu, token);
	/* Acknowledged whatever the channel held: only IRQ_ACK lowers the line. */
	tally_eq(&t_ack, (u64)apf_call(ASYNC_PF_FUNC_IRQ_ACK, 0, 0, NULL), SMCCC_RET_SUCCESS);
}

static noreturn void on_done(unsigned cpu)
{
	(void)cpu;
	stamp_report("data_stamps", &job, 1);
	report_not_present(&np);
	report(&t_status);
	report(&t_context_range);
	report(&t_resume_pc);
	report(&t_resume_pstate);
	report(&t_resume_regs);
	report(&t_intid);
	report(&t_ready_reason);
	report(&t_ready_token);
	report(&t_ack);
	check_at_least("not_present_seen", nr_not_present, 1);
	check("tokens_all_woken", nr_outstanding, 0);
	if (nr_not_present && !nr_outstanding)
		kprintf("OK flow_counts not_present=%lu page_ready=%lu wake_all=%lu spins=%lu\n",
			nr_not_present, nr_page_ready, nr_wake_all, spins);
	else
		kprintf("FAIL flow_counts got=0x%x want=0x0 not_present=%lu page_ready=%lu\n",
			nr_outstanding, nr_not_present, nr_page_ready);
	check("apf_disable", (u64)apf_enable(0), SMCCC_RET_SUCCESS);
	finish();
}

static const struct sched_ops ops = {
	.on_irq_entry = on_irq_entry,
	.on_done = on_done,
};

void test_main(void)
{
	check_layout(TEST_DATA_BASE + ARRAY_BYTES);
	gic_setup(0);
	apf_bring_up(0, "flow", &block, APF_CONTROL_ENABLED | APF_CONTROL_SEPARATE_READY, &host);
	task_create(0, stamp_worker, (u64)&job);
	task_create(0, spinner, (u64)&job);
	tasks_run(0, &ops);
}

void test_secondary(unsigned cpu)
{
	kprintf("FAIL unexpected_cpu got=0x%x want=0x0\n", cpu);
	finish();
}
