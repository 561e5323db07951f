/*
 * hostile_disable_in_flight (2 vCPUs, the apf_flow VM): APF work in flight when
 * a vCPU disables APF, and when a vCPU goes off with CPU_OFF.
 *
 * Each vCPU runs the well-behaved driver (ENABLED | SEPARATE_READY, no
 * SEND_ALWAYS) and stamp jobs, one EL0 task each: they write their pages and
 * meet at the barrier. There the kernel stops taking page-ready (the PPI off at
 * its GIC) and writes a scratch area four times the host budget to push the
 * stamps out. Then the jobs read back, and each task parks on its first
 * not-present and stays parked: its fault is in flight until the vCPU acts.
 *
 * vCPU 1 (16 tasks) goes first: once every task is parked it calls CPU_OFF with
 * APF enabled. vCPU 0 checks it went off, then runs 64 tasks; once all are
 * parked (up to 64 faults in flight) it disables APF (ENABLE 0 → SUCCESS) and
 * wakes its own sleepers, as DESIGN §7 says a guest does; their retried
 * accesses are synchronous. Nothing may be lost: vCPU 0's jobs read every stamp
 * back, and vCPU 0 then re-reads vCPU 1's pages, whose fetches were in flight
 * when it went off. After the disable nothing may reach vCPU 0's block (DESIGN
 * §5.6: disable drains the queues) and no not-present may come.
 *
 * Last, vCPU 0 brings vCPU 1 back with CPU_ON, a vCPU reset (§5.6: reset drains
 * the queues and queues a wake-all). vCPU 1 enables APF on the same block again
 * (SUCCESS if the reset disabled APF, as x86 does; NOT_REQUIRED if it kept it
 * on) and the first page-ready must be the wake-all, with no stale token from
 * before the reset behind it once acknowledged.
 */
#include "rt.h"

#define PAGES_PER_JOB 64
#define CPU0_JOBS 64
#define CPU1_JOBS 16
#define JOB_BYTES (PAGES_PER_JOB * APF_PAGE_SIZE)
#define REGION0 TEST_DATA_BASE
#define REGION1 (REGION0 + CPU0_JOBS * JOB_BYTES)
#define FLUSH_BYTES (8 * MiB)		/* 4 x the ~2 MiB host budget */
#define FLUSH0 (REGION1 + CPU1_JOBS * JOB_BYTES)
#define FLUSH1 (FLUSH0 + FLUSH_BYTES)
#define DATA_END (FLUSH1 + FLUSH_BYTES)

static struct apf_block_slot blocks[TASK_CPUS];
static struct apf_driver drivers[TASK_CPUS] = {
	APF_DRIVER("cpu0_", 0, &blocks[0].data),
	APF_DRIVER("cpu1_", 1, &blocks[1].data),
};
static struct stamp_job jobs0[CPU0_JOBS], jobs1[CPU1_JOBS];
static int reading[TASK_CPUS];		/* past the barrier: parked tasks stay parked */

static volatile u32 cpu1_going_off;
static volatile u32 cpu1_parked_at_off;
static volatile u32 cpu1_entries;
static volatile u32 cpu1_reset_checked;
static int disabled;			/* vCPU 0 has disabled APF */
static u64 not_present_after_disable;

static void init_jobs(struct stamp_job *jobs, unsigned n, u64 base, u64 salt)
{
	for (unsigned i = 0; i < n; i++) {
		jobs[i].base = base + i * JOB_BYTES;
		jobs[i].pages = PAGES_PER_JOB;
		jobs[i].salt = salt;
	}
}

/*
 * Every task has written its stamps: stop taking page-ready, then push the
 * resident pages out with first touches of a region bigger than the budget.
 */
static void start_reading(unsigned cpu, u64 flush_base)
{
	gic_ppi_enable(cpu, drivers[cpu].host.ppi, 0);
	reading[cpu] = 1;
	for (u64 a = flush_base; a < flush_base + FLUSH_BYTES; a += APF_PAGE_SIZE)
		*(volatile u64 *)a = a;
}

static void cpu0_barrier(unsigned cpu) { start_reading(cpu, FLUSH0); }
static void cpu1_barrier(unsigned cpu) { start_reading(cpu, FLUSH1); }

struct sdei_finish on_sdei(u64 event, u64 arg, u64 pc, u64 pstate)
{
	unsigned cpu = cpu_id();
	if (cpu == 0 && disabled)
		not_present_after_disable++;
	if (cpu >= TASK_CPUS) {
		struct sdei_finish plain = { SDEI_EVENT_COMPLETE, 0 };
		return plain;
	}
	return driver_not_present(&drivers[cpu], event, arg, pc, pstate);
}

void on_interrupt(unsigned cpu, u32 intid)
{
	driver_interrupt(&drivers[cpu], intid);
}

/* vCPU 1: off with every task parked (or, without APF, with all done). */
static noreturn void cpu1_off(void)
{
	cpu1_parked_at_off = tasks_parked(1);
	barrier();
	cpu1_going_off = 1;
	hvc(PSCI_CPU_OFF, 0, 0, 0);
	kprintf("FAIL cpu1_cpu_off_returned got=0x1 want=0x0\n");
	park();
}

static int cpu1_idle(unsigned cpu)
{
	if (reading[cpu])
		cpu1_off();
	return 0;	/* before the barrier, page-ready wakes the parked */
}

static noreturn void cpu1_done(unsigned cpu) { (void)cpu; cpu1_off(); }

static const struct sched_ops cpu1_ops = {
	.on_barrier = cpu1_barrier,
	.on_idle = cpu1_idle,
	.on_done = cpu1_done,
};

/* vCPU 0: every task parked past the barrier, up to 64 faults in flight. */
static int disable_in_flight(unsigned cpu)
{
	struct apf_driver *d = &drivers[cpu];
	if (!reading[cpu] || disabled)
		return 0;
	disabled = 1;
	check_at_least("faults_in_flight_at_disable", tasks_parked(cpu), 1);
	check("disable_with_faults_in_flight", (u64)apf_enable(0), SMCCC_RET_SUCCESS);
	/* A page-ready delivered before the disable (never taken) goes unread. */
	d->block->ready_token = 0;
	barrier_st();
	d->block->ready_reason = 0;
	task_wake(cpu, APF_TOKEN_WAKE_ALL);
	d->nr_outstanding = 0;
	return 1;
}

/* vCPU 1 after CPU_ON brought it back: the reset left no stale APF work. */
static noreturn void cpu1_after_reset(void)
{
	struct apf_driver *d = &drivers[1];
	u64 word = (u64)d->block | APF_CONTROL_ENABLED | APF_CONTROL_SEPARATE_READY;
	check("cpu1_reset_gic", (u64)gic_cpu_init(1), 0);	/* the CPU interface was reset */
	gic_ppi_enable(1, d->host.ppi, 1);
	s64 ret = apf_enable(word);
	if (ret == SMCCC_RET_SUCCESS || ret == SMCCC_RET_NOT_REQUIRED) {
		kprintf("OK cpu1_reset_enable got=0x%lx\n", (u64)ret);
		apf_take_wake_all("cpu1_reset_", d->block, &d->host, 1);
		check("cpu1_reset_no_stale_page_ready", gic_pending(), INTID_NONE);
	} else {
		kprintf("FAIL cpu1_reset_enable got=0x%lx want=0x0\n", (u64)ret);
	}
	check("cpu1_reset_disable", (u64)apf_enable(0), SMCCC_RET_SUCCESS);
	barrier();
	cpu1_reset_checked = 1;
	park();
}

static void reset_cpu1(void)
{
	s64 ret = hvc(PSCI_CPU_ON, 1, (u64)secondary_entry, 0);
	check("cpu1_on_after_off", (u64)ret, PSCI_RET_SUCCESS);
	if (ret != PSCI_RET_SUCCESS)
		return;
	while (!cpu1_reset_checked)
		;
}

static noreturn void cpu0_done(unsigned cpu)
{
	const struct apf_shared_data *b = drivers[0].block;
	if (!disabled) {	/* nothing ever parked: the checks say so */
		reading[cpu] = 1;
		disable_in_flight(cpu);
	}
	stamp_report("data_stamps", jobs0, CPU0_JOBS);
	for (unsigned i = 0; i < CPU1_JOBS; i++)
		stamp_verify(&jobs1[i]);
	stamp_report("data_stamps_cpu1_after_off", jobs1, CPU1_JOBS);
	driver_report(&drivers[0]);
	driver_report(&drivers[1]);
	check("no_not_present_after_disable", not_present_after_disable, 0);
	check("no_notification_after_disable",
	      (u64)(b->reason | b->token | b->ready_reason | b->ready_token), 0);
	check("disable_again", (u64)apf_enable(0), (u64)SMCCC_RET_NOT_REQUIRED);
	reset_cpu1();
	finish();
}

static const struct sched_ops cpu0_ops = {
	.on_barrier = cpu0_barrier,
	.on_idle = disable_in_flight,
	.on_done = cpu0_done,
};

static void wait_cpu1_off(void)
{
	while (!cpu1_going_off)
		;
	u64 state;
	do
		state = (u64)hvc(PSCI_AFFINITY_INFO, 1, 0, 0);
	while (state == PSCI_AFFINITY_ON);
	check("cpu1_off_with_faults_in_flight", state, PSCI_AFFINITY_OFF);
	check_at_least("cpu1_faults_in_flight_at_off", cpu1_parked_at_off, 1);
}

void test_main(void)
{
	check_layout(DATA_END);
	gic_setup(0);
	init_jobs(jobs0, CPU0_JOBS, REGION0, 0xd15ab1ed00000000ul);
	init_jobs(jobs1, CPU1_JOBS, REGION1, 0xd15ab1ed11111111ul);
	s64 ret = hvc(PSCI_CPU_ON, 1, (u64)secondary_entry, 0);
	check("cpu1_on", (u64)ret, PSCI_RET_SUCCESS);
	if (ret == PSCI_RET_SUCCESS)
		wait_cpu1_off();

	driver_bring_up(&drivers[0], "cpu0_");
	for (unsigned i = 0; i < CPU0_JOBS; i++)
		task_create(0, stamp_worker, (u64)&jobs0[i]);
	tasks_run(0, &cpu0_ops);
}

void test_secondary(unsigned cpu)
{
	if (cpu != 1) {
		kprintf("FAIL unexpected_cpu got=0x%x want=0x1\n", cpu);
		finish();
	}
	if (cpu1_entries++)
		cpu1_after_reset();
	gic_setup(1);
	driver_bring_up(&drivers[1], "cpu1_");
	for (unsigned i = 0; i < CPU1_JOBS; i++)
		task_create(1, stamp_worker, (u64)&jobs1[i]);
	tasks_run(1, &cpu1_ops);
}
