/*
 * The runtime of the scripted test guests: checks printed on the UART, the
 * exception and SDEI entry points the kernel's entry.S calls, GIC polling, APF
 * bring-up, and EL0 tasks that park on page-not-present and wake on page-ready.
 *
 * The guest kernel's entry.S, console.c, gic.c and lib.c are linked in as they
 * are, so the images boot exactly like the real guest: entered at 0x40080000 in
 * EL1h with the MMU off, vCPU 0 first, the others through PSCI CPU_ON.
 *
 * Output: one line per check, `OK <name>` or `FAIL <name> got=0x.. want=0x..`,
 * then `DONE` and PSCI SYSTEM_OFF. An exception nobody expected prints
 * `FAIL unexpected_exception ...` and powers off without `DONE`.
 */
#ifndef APF_TESTS_RT_H
#define APF_TESTS_RT_H

#include "kernel.h"

#define MiB (1024ul * 1024)

/*
 * One vCPU's APF block in an array: struct apf_shared_data is 68 bytes, so the
 * array element must be padded to keep every block 64-byte aligned (the low 6
 * bits of the ENABLE control word are flags).
 */
struct apf_block_slot {
	struct apf_shared_data data;
} __attribute__((aligned(APF_SHARED_BLOCK_ALIGN)));

/* Guest RAM every image's VM has (crates/vm/tests/scripted_guests.rs sets it). */
#define TEST_RAM_SIZE (64 * MiB)
/* Where the images' data lives: above the image and its BSS, checked at boot. */
#define TEST_DATA_BASE (APF_RAM_BASE + 4 * MiB)

#define SECTION_USER __attribute__((section(".text.user")))
#define ALWAYS_INLINE inline __attribute__((always_inline))

/* PSTATE fields as SPSR and the SDEI x3 argument hold them. */
#define PSTATE_M_MASK	0x1f		/* M[4] = AArch32, M[3:0] = EL and SP */
#define PSTATE_EL0T	0x0
#define CURRENTEL_EL1	(1u << 2)	/* CurrentEL.EL in bits 3:2 */
#define DAIF_MASKED	0x3c0		/* the DAIF register with D, A, I, F set */
#define INTID_NONE	1023		/* ICC_HPPIR1/IAR1: nothing pending */

/* --- Checks (rt.c) --- */

/* `OK name` when got == want, else `FAIL name got=0x.. want=0x..`. */
void check(const char *name, u64 got, u64 want);
/* check() of the name prefix + rest. */
void check_cat(const char *prefix, const char *rest, u64 got, u64 want);
/* `OK name got=0x..` when got <= max, else `FAIL name got=0x.. want=0x<max>`. */
void check_at_most(const char *name, u64 got, u64 max);
/* `OK name got=0x..` when got >= min, else `FAIL name got=0x.. want=0x<min>`. */
void check_at_least(const char *name, u64 got, u64 min);

/*
 * A check made once per event: the first failure is kept and report() prints
 * one line for them all. A tally that never ran fails (`never observed`).
 */
struct tally {
	const char *name;
	u64 runs, fails;
	u64 got, want;		/* of the first failure */
};
#define TALLY(n) { .name = (n) }
void tally(struct tally *t, int ok, u64 got, u64 want);
static inline void tally_eq(struct tally *t, u64 got, u64 want) { tally(t, got == want, got, want); }
void report(const struct tally *t);

noreturn void finish(void);			/* DONE, then PSCI SYSTEM_OFF */

/* --- Firmware calls --- */

/* x0..x3 of an SMCCC call over HVC. */
struct smccc_res call(u64 fn, u64 a1, u64 a2, u64 a3, u64 a4, u64 a5);
/* An ASYNC_PF sub-function: x0, and x1 in *value when value is not NULL. */
s64 apf_call(u64 subfn, u64 a2, u64 a3, u64 *value);
/* ENABLE with a whole control word, split into its SMC32 halves. */
s64 apf_enable(u64 word);

/* --- What every image defines --- */

void test_main(void);				/* vCPU 0, EL1h, DAIF masked */
void test_secondary(unsigned cpu);		/* a vCPU started at entry.S's secondary_entry */

/* --- Events an image may handle; rt.c's defaults fail the run --- */

/* The SDEI handler (EL1h, DAIF masked, x0..x3 as dispatched): how to finish. */
struct sdei_finish on_sdei(u64 event, u64 arg, u64 pc, u64 pstate);
/* One interrupt taken with IAR1; the caller writes EOIR1 after. */
void on_interrupt(unsigned cpu, u32 intid);

/* --- GIC (rt.c, over the kernel's gic.c) --- */

void gic_setup(unsigned cpu);			/* the distributor (vCPU 0) and this vCPU's */
u32 gic_pending(void);				/* ICC_HPPIR1_EL1 */
void irq_poll(unsigned cpu);			/* IAR1 until spurious: on_interrupt, EOI */
void wait_pending(u32 intid);			/* WFI (masked) until intid is pending */

static inline unsigned cpu_id(void) { return (unsigned)(read_sysreg(mpidr_el1) & 0xff); }

/* --- APF (rt.c) --- */

/* The SDEI argument vCPU n registers: upper bits catch a 32-bit truncation. */
#define SDEI_TEST_ARG(cpu) (0xa9f05de100000000ul | (cpu))

/* What discovery found. */
struct apf_host {
	u32 event;
	u32 ppi;
	u64 slots;
};

/*
 * The driver's bring-up on this vCPU, each step a check named `<prefix><step>`:
 * the event and PPI from ASYNC_PF, SDEI register (entry.S's sdei_entry,
 * SDEI_TEST_ARG(cpu)) and enable, PE unmask, the PPI at the GIC, and ENABLE
 * with the block's GPA | flags. Returns 0 when APF is on.
 */
int apf_bring_up(unsigned cpu, const char *prefix, struct apf_shared_data *block,
		 u64 flags, struct apf_host *host);
/*
 * Waits for the wake-all every ENABLE queues and takes it: checks
 * `<prefix>wake_all_reason` and `<prefix>wake_all_token` in the ready channel,
 * clears it, IRQ_ACKs it when `ack`, then EOI.
 */
void apf_take_wake_all(const char *prefix, struct apf_shared_data *block,
		       const struct apf_host *host, int ack);

/* `layout`: [TEST_DATA_BASE, end) lies above the image and inside RAM. */
void check_layout(u64 end);

/* --- The guest's side of the notifications (driver.c) --- */

#define SDEI_SAVED_REGS 18	/* x0..x17 of the interrupted context (DESIGN §4) */

/* Every not-present dispatch is checked against DESIGN §4 and the token format. */
struct not_present_tallies {
	struct tally entry, event, arg, pc, pstate, reason, token;
};
/* The tallies, their names prefixed with the string literal p. */
#define NOT_PRESENT_TALLIES(p) { \
	TALLY(p "sdei_entry_el1h_masked"), TALLY(p "sdei_x0_event"), TALLY(p "sdei_x1_arg"), \
	TALLY(p "sdei_x2_el0_code"), TALLY(p "sdei_x3_el0t"), TALLY(p "not_present_reason"), \
	TALLY(p "not_present_token"), }

/*
 * Checks a not-present dispatch on vCPU `cpu` (x0..x3 as dispatched, the state
 * it runs in, the block's reason and token), then clears the channel, token
 * first. Returns the token when a task interrupted at EL0 can park on it, else 0.
 */
u32 take_not_present(struct not_present_tallies *t, unsigned cpu,
		     struct apf_shared_data *block, const struct apf_host *host,
		     u64 event, u64 arg, u64 pc, u64 pstate);
void report_not_present(const struct not_present_tallies *t);

/*
 * A well-behaved driver on one vCPU, as DESIGN §7 describes the guest's: parks
 * the interrupted task on not-present, wakes it on page-ready (all of the
 * vCPU's on a wake-all) and acknowledges every page-ready. Every event is
 * checked; names carry the driver's prefix.
 */
struct apf_driver {
	const char *prefix;
	unsigned cpu;
	struct apf_shared_data *block;
	struct apf_host host;
	u32 outstanding[2 * APF_ASYNC_PF_PER_VCPU];	/* told not-present, not yet ready */
	unsigned nr_outstanding;
	u64 not_present, page_ready, wake_all;
	struct not_present_tallies np;
	struct tally intid, ready_reason, ready_token, ack;
};
#define APF_DRIVER(p, cpu_, block_) { \
	.prefix = p, .cpu = (cpu_), .block = (block_), .np = NOT_PRESENT_TALLIES(p), \
	.intid = TALLY(p "interrupt_is_page_ready"), \
	.ready_reason = TALLY(p "page_ready_reason"), \
	.ready_token = TALLY(p "page_ready_token_known"), .ack = TALLY(p "irq_ack"), }

/* apf_bring_up with ENABLED | SEPARATE_READY, its checks named `<name><step>`. */
int driver_bring_up(struct apf_driver *d, const char *name);
/* The SDEI handler's work: park on the token, or complete plainly. */
struct sdei_finish driver_not_present(struct apf_driver *d, u64 event, u64 arg, u64 pc,
				      u64 pstate);
/* One interrupt: the page-ready PPI, or a failure. */
void driver_interrupt(struct apf_driver *d, u32 intid);
/* The tallies, then `<prefix>not_present_seen`. */
void driver_report(const struct apf_driver *d);
/* `<prefix>tokens_all_woken`: every not-present got its page-ready or a wake-all. */
void driver_check_all_woken(const struct apf_driver *d);

/* --- EL0 tasks (tasks.c) --- */

#define TASK_CPUS MAX_CPUS		/* vCPUs that may run tasks */
#define MAX_TASKS 64			/* per vCPU */
#define TASK_STACK 2048

enum task_state { T_RUNNABLE, T_PARKED, T_BARRIER, T_ENDED };

struct task {
	struct frame ctx;		/* EL0 registers while not running */
	enum task_state state;
	u32 token;			/* what it is parked on */
};

/* System calls: svc #0, number in x8; the kernel's SYS_YIELD and SYS_EXIT, and: */
#define SYS_BARRIER 4		/* wait until every live task of the vCPU is here */

/*
 * An image's part in scheduling; any hook may be NULL but on_done.
 * on_irq_entry: every IRQ taken from EL0 (also where COMPLETE_AND_RESUME lands),
 *   before the interrupts are polled; f holds the interrupted EL0 registers.
 * on_barrier: every task of the vCPU has reached the barrier; before release.
 * on_idle: nothing is runnable; return 1 after making a task runnable, 0 to
 *   wait for an interrupt.
 * on_done: every task of the vCPU has ended; never returns.
 */
struct sched_ops {
	void (*on_irq_entry)(unsigned cpu, struct frame *f);
	void (*on_barrier)(unsigned cpu);
	int (*on_idle)(unsigned cpu);
	noreturn void (*on_done)(unsigned cpu);
};

/* fn(arg) at EL0t with interrupts unmasked, on vCPU `cpu`. */
void task_create(unsigned cpu, void (*fn)(u64), u64 arg);
noreturn void tasks_run(unsigned cpu, const struct sched_ops *ops);
struct task *task_current(unsigned cpu);	/* the interrupted EL0 task, or NULL */
/* Parks the current task and finishes the SDEI handler through the IRQ vector. */
struct sdei_finish park_current(unsigned cpu, u32 token);
/* Wakes the task parked on token, or all of the vCPU's on APF_TOKEN_WAKE_ALL. */
unsigned task_wake(unsigned cpu, u32 token);
unsigned tasks_parked(unsigned cpu);

/* rt.c to tasks.c */
void tasks_el0_sync(struct frame *f);
void tasks_el0_irq(struct frame *f);
extern u64 kernel_stack_top[MAX_CPUS];

/* --- EL0 code (stamp.c) --- */

extern char __user_text_start[], __user_text_end[];

static ALWAYS_INLINE void user_syscall(u64 nr)
{
	register u64 x8 __asm__("x8") = nr;
	__asm__ volatile("svc #0" : "+r"(x8) : : "x0", "memory");
}

/*
 * An EL0 job over `pages` pages from `base`: stamp the first and last word of
 * every page, meet the vCPU's other tasks at the barrier, then read every stamp
 * back. Wrong words are counted; the first is kept.
 */
struct stamp_job {
	u64 base, pages, salt;
	volatile u64 bad, bad_addr, bad_got, bad_want;
	volatile u64 done;
};
void stamp_worker(u64 job);			/* task body: arg = struct stamp_job * */
void stamp_verify(struct stamp_job *job);	/* the read-back, at EL1 */
void stamp_report(const char *name, struct stamp_job *jobs, unsigned n);
static inline int user_pc(u64 pc)
{
	return pc >= (u64)__user_text_start && pc < (u64)__user_text_end;
}

#endif
