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
#define SPINS_PER_YIELD 256

static struct apf_shared_data block __attribute__((aligned(APF_SHARED_BLOCK_ALIGN)));
static struct apf_driver drv = APF_DRIVER("", 0, &block);
static struct stamp_job job = {
	.base = TEST_DATA_BASE,
	.pages = ARRAY_BYTES / APF_PAGE_SIZE,
	.salt = 0xf10e5a17f10e5a17ul,
};
static volatile u64 spins;

/* What COMPLETE_AND_RESUME must deliver to the IRQ vector. */
static struct {
	int pending, with_context;
	u64 pc, pstate;
	u64 x[SDEI_SAVED_REGS];
} resume;

static struct tally t_status = TALLY("sdei_status_running");
static struct tally t_context_range = TALLY("sdei_context_index_out_of_range");
static struct tally t_resume_pc = TALLY("resume_elr_is_x2");
static struct tally t_resume_pstate = TALLY("resume_spsr_is_x3");
static struct tally t_resume_regs = TALLY("resume_x0_x17_are_context");

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
	u64 context[SDEI_SAVED_REGS];
	int with_context = drv.not_present < CONTEXT_CHECKS;
	if (with_context)
		check_running_event(event, context);
	struct sdei_finish how = driver_not_present(&drv, event, arg, pc, pstate);
	if (how.fn != SDEI_EVENT_COMPLETE_AND_RESUME)
		return how;
	resume.pending = 1;
	resume.with_context = with_context;
	resume.pc = pc;
	resume.pstate = pstate;
	if (with_context)
		memcpy(resume.x, context, sizeof(context));
	return how;
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

void on_interrupt(unsigned cpu, u32 intid)
{
	(void)cpu;
	driver_interrupt(&drv, intid);
}

static noreturn void on_done(unsigned cpu)
{
	(void)cpu;
	stamp_report("data_stamps", &job, 1);
	driver_report(&drv);
	driver_check_all_woken(&drv);
	report(&t_status);
	report(&t_context_range);
	report(&t_resume_pc);
	report(&t_resume_pstate);
	report(&t_resume_regs);
	if (drv.not_present && !drv.nr_outstanding)
		kprintf("OK flow_counts not_present=%lu page_ready=%lu wake_all=%lu spins=%lu\n",
			drv.not_present, drv.page_ready, drv.wake_all, spins);
	else
		kprintf("FAIL flow_counts got=0x%x want=0x0 not_present=%lu page_ready=%lu\n",
			drv.nr_outstanding, drv.not_present, drv.page_ready);
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
	driver_bring_up(&drv, "flow_");
	task_create(0, stamp_worker, (u64)&job);
	task_create(0, spinner, (u64)&job);
	tasks_run(0, &ops);
}

void test_secondary(unsigned cpu)
{
	kprintf("FAIL unexpected_cpu got=0x%x want=0x0\n", cpu);
	finish();
}
