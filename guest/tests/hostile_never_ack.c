/*
 * hostile_never_ack (1 vCPU, the apf_flow VM): a guest that takes page-ready
 * but never calls IRQ_ACK.
 *
 * It takes the wake-all after ENABLE (ready channel read and cleared, EOI, no
 * IRQ_ACK) and disables the PPI at its GIC, since the level line would otherwise
 * fire forever. Then the stamp job runs over 16 MiB that get evicted. Not-present
 * dispatches are checked and completed plainly (COMPLETE: the access retries and
 * the host resolves it synchronously): nothing ever parks, because no page-ready
 * can come.
 *
 * What the host must do (DESIGN §5.5, §5.7): no page-ready while one awaits
 * IRQ_ACK, so the ready channel stays as the guest left it; the faults it can
 * no longer notify stay in its 64 slots, so at most SLOTS not-presents come after
 * the stuck page-ready and the rest are synchronous; the data is intact and the
 * VM reaches DONE.
 */
#include "rt.h"

#define ARRAY_BYTES (16 * MiB)

static struct apf_shared_data block __attribute__((aligned(APF_SHARED_BLOCK_ALIGN)));
static struct apf_host host;
static struct stamp_job job = {
	.base = TEST_DATA_BASE,
	.pages = ARRAY_BYTES / APF_PAGE_SIZE,
	.salt = 0x0ac40ac40ac40ac4ul,
};
static u64 nr_not_present;
static struct not_present_tallies np = NOT_PRESENT_TALLIES;

struct sdei_finish on_sdei(u64 event, u64 arg, u64 pc, u64 pstate)
{
	nr_not_present++;
	take_not_present(&np, 0, &block, &host, event, arg, pc, pstate);
	struct sdei_finish plain = { SDEI_EVENT_COMPLETE, 0 };
	return plain;
}

static noreturn void on_done(unsigned cpu)
{
	(void)cpu;
	stamp_report("data_stamps", &job, 1);
	if (nr_not_present)	/* a host may also go synchronous at once */
		report_not_present(&np);
	check_at_most("not_present_within_slots", nr_not_present, host.slots);
	check("no_page_ready_while_unacked",
	      ((u64)block.ready_reason << 32) | block.ready_token, 0);
	finish();	/* APF still enabled, a page-ready still unacknowledged */
}

static const struct sched_ops ops = { .on_done = on_done };

void test_main(void)
{
	check_layout(TEST_DATA_BASE + ARRAY_BYTES);
	gic_setup(0);
	if (apf_bring_up(0, "never_ack", &block,
			 APF_CONTROL_ENABLED | APF_CONTROL_SEPARATE_READY, &host) == 0) {
		apf_take_wake_all("never_ack", &block, &host, 0);
		gic_ppi_enable(0, host.ppi, 0);
	}
	task_create(0, stamp_worker, (u64)&job);
	tasks_run(0, &ops);
}

void test_secondary(unsigned cpu)
{
	kprintf("FAIL unexpected_cpu got=0x%x want=0x0\n", cpu);
	finish();
}
