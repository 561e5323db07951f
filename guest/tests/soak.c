/*
 * soak (8 vCPUs; run by crates/vm/examples/soak.rs, not by the test suite):
 * every vCPU runs the well-behaved driver over 64 EL0 tasks that stamp and
 * read back their own pages round after round, until the host ends the run.
 * The data is far larger than the host budget the soak gives it, so a task
 * parks on most of its page accesses and up to 64 faults per vCPU are
 * outstanding at once (the per-vCPU limit).
 *
 * Each round a task checks every page's two stamps from the round before (zero
 * before the first) and writes this round's. The results live in a fixed place
 * the host reads while the guest runs (struct soak_stats at TEST_DATA_BASE):
 * per task, rounds done and stamps found wrong (with the first wrong address).
 * The driver's own checks print `FAIL ...` on the console if a notification is
 * ever wrong.
 */
#include "rt.h"

#define SOAK_CPUS 8
#define STATS_BYTES (64 * 1024)
#define DATA_BASE (TEST_DATA_BASE + STATS_BYTES)
#define TASK_PAGES ((TEST_RAM_SIZE - 4 * MiB - STATS_BYTES) / (SOAK_CPUS * MAX_TASKS * APF_PAGE_SIZE))
#define LAST_WORD (APF_PAGE_SIZE / 8 - 1)

_Static_assert(TASK_CPUS >= SOAK_CPUS, "tasks.c runs tasks on every soak vCPU");
_Static_assert(TASK_PAGES >= 8, "each task has pages to fault on");

/* What the host reads (crates/vm/examples/soak.rs has the same layout). */
struct soak_task {
	u64 rounds;
	u64 bad;
	u64 bad_addr;
	u64 base;		/* the task's first page */
};
struct soak_stats {
	u64 magic;
	u64 task_pages;
	struct soak_task tasks[SOAK_CPUS][MAX_TASKS];
};
#define SOAK_MAGIC 0x4b414f5346504100ul	/* "\0APFSOAK" */
_Static_assert(sizeof(struct soak_stats) <= STATS_BYTES, "stats fit their pages");

#define stats ((volatile struct soak_stats *)TEST_DATA_BASE)

static struct apf_block_slot blocks[SOAK_CPUS];
static struct apf_driver drivers[SOAK_CPUS] = {
	APF_DRIVER("cpu0_", 0, &blocks[0].data), APF_DRIVER("cpu1_", 1, &blocks[1].data),
	APF_DRIVER("cpu2_", 2, &blocks[2].data), APF_DRIVER("cpu3_", 3, &blocks[3].data),
	APF_DRIVER("cpu4_", 4, &blocks[4].data), APF_DRIVER("cpu5_", 5, &blocks[5].data),
	APF_DRIVER("cpu6_", 6, &blocks[6].data), APF_DRIVER("cpu7_", 7, &blocks[7].data),
};

static ALWAYS_INLINE u64 stamp(u64 addr, u64 round)
{
	return (addr * 0x9e3779b97f4a7c15ul) ^ (round + 1) ^ 0x50a450a450a450a4ul;
}

SECTION_USER static void soak_task(u64 arg)
{
	volatile struct soak_task *t = (volatile struct soak_task *)arg;
	u64 base = t->base;
	for (u64 round = 0;; round++) {
		for (u64 p = 0; p < TASK_PAGES; p++) {
			volatile u64 *w = (volatile u64 *)(base + p * APF_PAGE_SIZE);
			u64 first = (u64)&w[0], last = (u64)&w[LAST_WORD];
			u64 want_first = round ? stamp(first, round - 1) : 0;
			u64 want_last = round ? stamp(last, round - 1) : 0;
			u64 got_first = w[0], got_last = w[LAST_WORD];
			if (got_first != want_first || got_last != want_last) {
				if (!t->bad)
					t->bad_addr = got_first != want_first ? first : last;
				t->bad = t->bad + 1;
			}
			w[0] = stamp(first, round);
			w[LAST_WORD] = stamp(last, round);
		}
		t->rounds = round + 1;
		user_syscall(SYS_YIELD);
	}
}

struct sdei_finish on_sdei(u64 event, u64 arg, u64 pc, u64 pstate)
{
	return driver_not_present(&drivers[cpu_id()], event, arg, pc, pstate);
}

void on_interrupt(unsigned cpu, u32 intid)
{
	driver_interrupt(&drivers[cpu], intid);
}

static noreturn void never_done(unsigned cpu)
{
	kprintf("FAIL soak_tasks_ended got=0x%x want=0x0\n", cpu);
	finish();
}

static const struct sched_ops ops = { .on_done = never_done };

static noreturn void soak_cpu(unsigned cpu)
{
	gic_setup(cpu);
	driver_bring_up(&drivers[cpu], drivers[cpu].prefix);
	for (unsigned i = 0; i < MAX_TASKS; i++) {
		volatile struct soak_task *t = &stats->tasks[cpu][i];
		t->base = DATA_BASE + (u64)(cpu * MAX_TASKS + i) * TASK_PAGES * APF_PAGE_SIZE;
		task_create(cpu, soak_task, (u64)t);
	}
	tasks_run(cpu, &ops);
}

void test_main(void)
{
	check_layout(DATA_BASE + SOAK_CPUS * MAX_TASKS * TASK_PAGES * APF_PAGE_SIZE);
	stats->task_pages = TASK_PAGES;
	barrier_st();
	stats->magic = SOAK_MAGIC;
	for (unsigned cpu = 1; cpu < SOAK_CPUS; cpu++)
		check_cat("cpu_on_", drivers[cpu].prefix,
			  (u64)hvc(PSCI_CPU_ON, cpu, (u64)secondary_entry, 0), PSCI_RET_SUCCESS);
	soak_cpu(0);
}

void test_secondary(unsigned cpu)
{
	if (cpu >= SOAK_CPUS) {
		kprintf("FAIL unexpected_cpu got=0x%x want=0x%x\n", cpu, SOAK_CPUS - 1);
		finish();
	}
	soak_cpu(cpu);
}
