/*
 * hostile_never_ack (2 vCPUs, the apf_flow VM): a guest vCPU that takes
 * page-ready but never calls IRQ_ACK, beside one that behaves.
 *
 * vCPU 0 takes the wake-all after ENABLE (ready channel read and cleared, EOI,
 * no IRQ_ACK) and disables the PPI at its GIC, since the level line would
 * otherwise fire forever. Then its stamp job runs over 16 MiB that get evicted.
 * Its not-present dispatches are checked and completed plainly (COMPLETE: the
 * access retries and the host resolves it synchronously): nothing parks, since
 * no page-ready can come.
 *
 * What the host must do (DESIGN §5.5, §5.7): no page-ready while one awaits
 * IRQ_ACK, so vCPU 0's ready channel stays as the guest left it; the faults it
 * can no longer notify stay in its 64 slots, so at most SLOTS not-presents come
 * after the stuck page-ready and the rest are synchronous; the data is intact.
 * Meanwhile vCPU 1 runs the well-behaved driver over its own 8 MiB: its
 * notifications flow as in apf_flow (DESIGN §5: everything is per vCPU).
 */
#include "rt.h"

#define CPU0_BYTES (16 * MiB)
#define CPU1_BYTES (8 * MiB)

static struct apf_block_slot blocks[2];
static struct apf_host host0;
static struct apf_driver drv1 = APF_DRIVER("cpu1_", 1, &blocks[1].data);
static struct stamp_job job0 = {
	.base = TEST_DATA_BASE,
	.pages = CPU0_BYTES / APF_PAGE_SIZE,
	.salt = 0x0ac40ac40ac40ac4ul,
};
static struct stamp_job job1 = {
	.base = TEST_DATA_BASE + CPU0_BYTES,
	.pages = CPU1_BYTES / APF_PAGE_SIZE,
	.salt = 0x0ac41ac41ac41ac4ul,
};
static u64 not_present0;
static struct not_present_tallies np0 = NOT_PRESENT_TALLIES("");
static volatile u32 cpu1_finished;

struct sdei_finish on_sdei(u64 event, u64 arg, u64 pc, u64 pstate)
{
	struct sdei_finish plain = { SDEI_EVENT_COMPLETE, 0 };
	if (cpu_id() == 1)
		return driver_not_present(&drv1, event, arg, pc, pstate);
	not_present0++;
	take_not_present(&np0, 0, &blocks[0].data, &host0, event, arg, pc, pstate);
	return plain;
}

void on_interrupt(unsigned cpu, u32 intid)
{
	if (cpu == 1) {
		driver_interrupt(&drv1, intid);
		return;
	}
	kprintf("FAIL unexpected_interrupt got=0x%x want=0x0 cpu=%u\n", intid, cpu);
}

static noreturn void cpu1_done(unsigned cpu)
{
	(void)cpu;
	barrier();
	cpu1_finished = 1;
	park();
}

static noreturn void cpu0_done(unsigned cpu)
{
	(void)cpu;
	const struct apf_shared_data *b = &blocks[0].data;
	stamp_report("data_stamps", &job0, 1);
	if (not_present0)	/* a host may also go synchronous at once */
		report_not_present(&np0);
	check_at_most("not_present_within_slots", not_present0, host0.slots);
	check("no_page_ready_while_unacked", ((u64)b->ready_reason << 32) | b->ready_token, 0);
	while (!cpu1_finished)
		;
	barrier();
	stamp_report("cpu1_data_stamps", &job1, 1);
	driver_report(&drv1);
	driver_check_all_woken(&drv1);
	finish();	/* APF still enabled, a page-ready still unacknowledged */
}

static const struct sched_ops cpu0_ops = { .on_done = cpu0_done };
static const struct sched_ops cpu1_ops = { .on_done = cpu1_done };

void test_main(void)
{
	check_layout(TEST_DATA_BASE + CPU0_BYTES + CPU1_BYTES);
	gic_setup(0);
	check("cpu1_on", (u64)hvc(PSCI_CPU_ON, 1, (u64)secondary_entry, 0), PSCI_RET_SUCCESS);
	if (apf_bring_up(0, "never_ack_", &blocks[0].data,
			 APF_CONTROL_ENABLED | APF_CONTROL_SEPARATE_READY, &host0) == 0) {
		apf_take_wake_all("never_ack_", &blocks[0].data, &host0, 0);
		gic_ppi_enable(0, host0.ppi, 0);
	}
	task_create(0, stamp_worker, (u64)&job0);
	tasks_run(0, &cpu0_ops);
}

void test_secondary(unsigned cpu)
{
	if (cpu != 1) {
		kprintf("FAIL unexpected_cpu got=0x%x want=0x1\n", cpu);
		finish();
	}
	gic_setup(1);
	driver_bring_up(&drv1, "cpu1_");
	task_create(1, stamp_worker, (u64)&job1);
	tasks_run(1, &cpu1_ops);
}
