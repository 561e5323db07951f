// SPDX-License-Identifier: GPL-2.0
/*
 * apf: the guest side of apf's asynchronous page faults, as a loadable module for
 * Debian's stock arm64 kernel: no kernel rebuild, no patch.
 *
 * Page not present. The host signals its SDEI event when a user task touches a
 * page it must fetch; the token is in this CPU's shared block. Linux's SDEI driver
 * exports nothing, so this module is its own SDEI client (registration through
 * __arm_smccc_hvc, its own entry code, apf_sdei_entry below). The event interrupts
 * only user mode (the host sends not-present for EL0 faults only, as SEND_ALWAYS is
 * never set), where no kernel state can be half-updated, but the SDEI entry still
 * runs with no usable `current` (SP_EL0 holds the user's stack pointer). So the
 * entry does the least: takes the token, sets this CPU's page-ready PPI pending
 * (GICR_ISPENDR0) and COMPLETE_AND_RESUMEs into the IRQ-from-EL0 vector. The
 * kernel then enters as for any interrupt from user mode, with `current` right,
 * and takes that PPI: its handler records token -> current in the sleeper table and
 * queues task work that sleeps, on the way back to user mode, until the token's
 * page-ready.
 *
 * Page ready. The same PPI; the host raises it with the token in the block's
 * separate ready channel (ABI 1.1). The handler wakes the token's sleeper (or every
 * sleeper of this CPU for the wake-all token), clears the channel and IRQ_ACKs.
 *
 * The races (guest/linux/README.md lists each with the counters that show it):
 * - page-ready before the task has slept: the entry's ready flag, which the task
 *   work checks before sleeping;
 * - SIGKILL while asleep: the task leaves and its entry stays as an orphan until
 *   the page-ready for its token consumes it;
 * - a CPU going offline: APF off on it first, then its sleepers are woken (they
 *   fault again, elsewhere, on a page the host may still be fetching);
 * - unload: every CPU goes offline as above, then unload waits until no task is
 *   left in the module's task work;
 * - the table full: the task is not put to sleep; it faults again, and the host,
 *   seeing a fault on a page already in flight, halts the vCPU until it arrives.
 *
 * The ABI values are guest/include/abi.h's, under the same names: that header
 * needs <stdint.h>, which a kernel build does not have. crates/abi/tests/header.rs
 * checks each literal #define here against abi.h, except the module's own MOD_
 * values.
 */
#include <linux/arm-smccc.h>
#include <linux/atomic.h>
#include <linux/cpuhotplug.h>
#include <linux/init.h>
#include <linux/interrupt.h>
#include <linux/io.h>
#include <linux/irq.h>
#include <linux/irqdomain.h>
#include <linux/kernel.h>
#include <linux/kobject.h>
#include <linux/mm.h>
#include <linux/module.h>
#include <linux/moduleparam.h>
#include <linux/of.h>
#include <linux/of_address.h>
#include <linux/percpu.h>
#include <linux/rcupdate.h>
#include <linux/sched.h>
#include <linux/sched/signal.h>
#include <linux/sched/task.h>
#include <linux/slab.h>
#include <linux/spinlock.h>
#include <linux/stringify.h>
#include <linux/sysfs.h>
#include <linux/task_work.h>
#include <linux/wait_bit.h>
#include <asm/cputype.h>
#include <asm/mmu.h>

#define APF_VERSION 0x010100
#define APF_VERSION_MAJOR(v) (((v) >> 16) & 0xff)
#define APF_VERSION_MINOR(v) (((v) >> 8) & 0xff)

#define SMCCC_RET_SUCCESS 0
#define SMCCC_VENDOR_HYP_UID 0x8600FF01
#define SMCCC_VENDOR_HYP_FEATURES 0x86000000
#define SMCCC_VENDOR_HYP_FUNC_ASYNC_PF 0x30
#define SMCCC_VENDOR_HYP_ASYNC_PF 0x86000030
#define APF_UID_0 0xE6B1F0A9
#define APF_UID_1 0x21467061
#define APF_UID_2 0x415E8C21
#define APF_UID_3 0xF0A92146

#define ASYNC_PF_FUNC_VERSION 0
#define ASYNC_PF_FUNC_SLOTS 1
#define ASYNC_PF_FUNC_SDEI 2
#define ASYNC_PF_FUNC_IRQ 3
#define ASYNC_PF_FUNC_ENABLE 4
#define ASYNC_PF_FUNC_IRQ_ACK 5

#define APF_CONTROL_ENABLED 0x1
#define APF_CONTROL_SEPARATE_READY 0x4
#define APF_REASON_PAGE_NOT_PRESENT 1
#define APF_REASON_PAGE_READY 2
#define APF_SHARED_OFF_REASON 0
#define APF_SHARED_OFF_TOKEN 4
#define APF_SHARED_OFF_READY_REASON 8
#define APF_SHARED_OFF_READY_TOKEN 12
#define APF_TOKEN_WAKE_ALL 0xFFFFFFFF

#define SDEI_EVENT_REGISTER 0xC4000021
#define SDEI_EVENT_ENABLE 0xC4000022
#define SDEI_EVENT_DISABLE 0xC4000023
#define SDEI_EVENT_COMPLETE 0xC4000025
#define SDEI_EVENT_COMPLETE_AND_RESUME 0xC4000026
#define SDEI_EVENT_UNREGISTER 0xC4000027
#define SDEI_PE_UNMASK 0xC400002C
#define SDEI_SUCCESS 0
#define SDEI_RM_ANY 0

/* PPIs are INTIDs 16..31; 27 is the virtual timer's, which apf never offers. */
#define PPI_FIRST 16
#define PPI_LAST 31
#define PPI_TIMER_VIRT 27

/* GICv3 redistributor: RD frame then SGI frame, 64 KiB each. */
#define MOD_GICR_TYPER 0x8
#define MOD_GICR_TYPER_LAST 0x10
#define MOD_GICR_FRAME 0x10000
#define MOD_GICR_STRIDE 0x20000
#define MOD_GICR_ISPENDR0 0x200
/* The IRQ-from-lower-EL (AArch64) entry of the vector table. */
#define MOD_VECTOR_IRQ_EL0 0x480

/* Offsets in struct apf_cpu that apf_sdei_entry uses (asserted below). */
#define MOD_OFF_BLOCK 0
#define MOD_OFF_ISPENDR 8
#define MOD_OFF_PPI_BIT 16
#define MOD_OFF_PENDING 20
#define MOD_OFF_UNPARKABLE 24

static unsigned int max_sleepers = 64;
module_param(max_sleepers, uint, 0444);
MODULE_PARM_DESC(max_sleepers, "tasks that can sleep on a page at once (the rest fault synchronously)");

struct apf_params {
	unsigned long version;
	unsigned long slots;
	unsigned long event;
	unsigned long ppi;
};

/* This CPU's view of APF. The first fields are read by apf_sdei_entry. */
struct apf_cpu {
	u8 *block;			/* the shared block (a zeroed page) */
	void __iomem *ispendr;		/* this CPU's GICR_ISPENDR0 */
	u32 ppi_bit;			/* 1 << the page-ready PPI */
	u32 pending;			/* a token the SDEI entry took, 0 = none */
	u64 unparkable;			/* not-presents the entry could not hand on */
	struct page *page;
	bool on;
};

static_assert(offsetof(struct apf_cpu, block) == MOD_OFF_BLOCK);
static_assert(offsetof(struct apf_cpu, ispendr) == MOD_OFF_ISPENDR);
static_assert(offsetof(struct apf_cpu, ppi_bit) == MOD_OFF_PPI_BIT);
static_assert(offsetof(struct apf_cpu, pending) == MOD_OFF_PENDING);
static_assert(offsetof(struct apf_cpu, unparkable) == MOD_OFF_UNPARKABLE);

/*
 * A task asleep (or about to sleep) on a token. token 0 = free. An orphan's task
 * was killed before its page arrived: the entry waits for that page-ready.
 */
struct apf_sleeper {
	u32 token;
	int cpu;			/* whose ready channel will bring the page */
	bool ready;
	bool orphan;
	struct task_struct *task;	/* referenced while not an orphan */
	struct callback_head work;
};

static struct apf_params apf;
static struct apf_cpu __percpu *apf_cpus;
static struct apf_sleeper *apf_sleepers;
static DEFINE_RAW_SPINLOCK(apf_lock);	/* the table; taken in hard IRQ */
static void __iomem *apf_gicr;
static resource_size_t apf_gicr_size;
static unsigned int apf_irq;
static int apf_hp_state = -1;
static bool apf_separate_ready;
/* Tasks between queueing their task work and leaving it: unload waits for 0. */
static atomic_t apf_live = ATOMIC_INIT(0);

static struct apf_counters {
	atomic64_t not_present;		/* not-presents handed to the PPI handler */
	atomic64_t page_ready;		/* page-readies for one token */
	atomic64_t wake_all;		/* page-readies with the wake-all token */
	atomic64_t sleepers;		/* tasks asleep or about to sleep now */
	atomic64_t sleepers_max;
	atomic64_t fallbacks;		/* not-presents that did not sleep */
	atomic64_t killed;		/* sleepers that left on SIGKILL */
	atomic64_t ready_orphan;	/* page-readies consumed for a killed sleeper */
	atomic64_t ready_unknown;	/* page-readies no entry knew (e.g. after a fallback) */
	atomic64_t offline_wakes;	/* sleepers woken because APF went off on their CPU */
} apf_stats;

/* --- SMCCC --- */

/* One ASYNC_PF sub-function: the SMCCC status, and x1 into *value. */
static long apf_call(unsigned long subfn, unsigned long a2, unsigned long a3, unsigned long *value)
{
	struct arm_smccc_res res;

	arm_smccc_1_1_hvc(SMCCC_VENDOR_HYP_ASYNC_PF, subfn, a2, a3, &res);
	if (value)
		*value = res.a1;
	return (long)res.a0;
}

static long sdei_call(unsigned long fn, unsigned long a1, unsigned long a2, unsigned long a3,
		      unsigned long a4, unsigned long a5)
{
	struct arm_smccc_res res;

	arm_smccc_1_1_hvc(fn, a1, a2, a3, a4, a5, &res);
	return (long)res.a0;
}

/* Fills *p from the hypervisor; returns why APF is not offered, or NULL. */
static const char *apf_discover(struct apf_params *p)
{
	static const u32 uid[4] = { APF_UID_0, APF_UID_1, APF_UID_2, APF_UID_3 };
	struct arm_smccc_res res;
	unsigned long fn = SMCCC_VENDOR_HYP_FUNC_ASYNC_PF;
	unsigned long features[4];

	/*
	 * An HVC with no EL2 is UNDEFINED, and firmware reached by SMC is no
	 * hypervisor: ask which conduit Linux found for SMCCC 1.1 before any HVC.
	 * (QEMU's PSCI without SMCCC_VERSION is SMCCC 1.0: no conduit.)
	 */
	switch (arm_smccc_1_1_get_conduit()) {
	case SMCCC_CONDUIT_HVC:
		break;
	case SMCCC_CONDUIT_SMC:
		return "the SMCCC conduit is SMC, not a hypervisor's HVC";
	default:
		return "no SMCCC 1.1 firmware interface";
	}

	arm_smccc_1_1_hvc(SMCCC_VENDOR_HYP_UID, &res);
	if ((u32)res.a0 != uid[0] || (u32)res.a1 != uid[1] ||
	    (u32)res.a2 != uid[2] || (u32)res.a3 != uid[3])
		return "vendor-hyp UID is not apf's";

	/* A 128-bit bitmap, 32 bits per register: function n is bit n % 32 of x[n / 32]. */
	arm_smccc_1_1_hvc(SMCCC_VENDOR_HYP_FEATURES, &res);
	features[0] = res.a0;
	features[1] = res.a1;
	features[2] = res.a2;
	features[3] = res.a3;
	if (!((features[fn / 32] >> (fn % 32)) & 1))
		return "FEATURES does not list ASYNC_PF";

	if (apf_call(ASYNC_PF_FUNC_VERSION, 0, 0, &p->version) != SMCCC_RET_SUCCESS)
		return "VERSION failed";
	if ((p->version >> 24) != 0 || APF_VERSION_MAJOR(p->version) != APF_VERSION_MAJOR(APF_VERSION))
		return "unsupported VERSION";
	if (apf_call(ASYNC_PF_FUNC_SLOTS, 0, 0, &p->slots) != SMCCC_RET_SUCCESS || p->slots == 0)
		return "no SLOTS";
	if (apf_call(ASYNC_PF_FUNC_SDEI, 0, 0, &p->event) != SMCCC_RET_SUCCESS ||
	    p->event == 0 || p->event > U32_MAX)
		return "no SDEI event";
	if (apf_call(ASYNC_PF_FUNC_IRQ, 0, 0, &p->ppi) != SMCCC_RET_SUCCESS ||
	    p->ppi < PPI_FIRST || p->ppi > PPI_LAST || p->ppi == PPI_TIMER_VIRT)
		return "no page-ready PPI";
	return NULL;
}

/* --- The SDEI entry --- */

/*
 * Entered by the host in EL1h with DAIF masked: x0 = event, x1 = this CPU's
 * struct apf_cpu (the registered argument), x2/x3 = the interrupted PC and PSTATE.
 * x0..x17 are the host's to restore on COMPLETE, so only those are used, and no
 * stack, and nothing of the kernel's (SP_EL0 is the user's stack pointer here).
 *
 * A not-present from EL0 with a real token: the token goes to ->pending, the PPI is
 * set pending, and COMPLETE_AND_RESUME enters VBAR_EL1 + 0x480 as if that PPI had
 * interrupted the task. Anything else (no not-present in the block, a kernel-mode
 * fault under a host that sends them anyway, token 0 or wake-all) is counted and
 * COMPLETEd: the task retries the access and the host resolves it synchronously.
 * COMPLETE returns only if the host finds no event running, which would be a host
 * bug: the CPU then spins here rather than run on with the host's saved state.
 */
asm(
"	.pushsection .text, \"ax\"\n"
"	.p2align 2\n"
"	.globl	apf_sdei_entry\n"
"	.type	apf_sdei_entry, %function\n"
"apf_sdei_entry:\n"
"	ldr	x4, [x1, #" __stringify(MOD_OFF_BLOCK) "]\n"
"	ldr	w5, [x4, #" __stringify(APF_SHARED_OFF_REASON) "]\n"
"	cmp	w5, #" __stringify(APF_REASON_PAGE_NOT_PRESENT) "\n"
"	b.ne	2f\n"
"	dmb	ishld\n"
"	ldr	w6, [x4, #" __stringify(APF_SHARED_OFF_TOKEN) "]\n"
"	str	wzr, [x4, #" __stringify(APF_SHARED_OFF_TOKEN) "]\n"
	/* reason = 0 after token = 0: the host may signal the next one now */
"	stlr	wzr, [x4]\n"
"	tst	x3, #0xf\n"			/* PSTATE.M[3:0] = 0: EL0t */
"	b.ne	1f\n"
"	cbz	w6, 1f\n"
"	cmn	w6, #1\n"			/* the wake-all token */
"	b.eq	1f\n"
"	str	w6, [x1, #" __stringify(MOD_OFF_PENDING) "]\n"
"	ldr	x7, [x1, #" __stringify(MOD_OFF_ISPENDR) "]\n"
"	ldr	w8, [x1, #" __stringify(MOD_OFF_PPI_BIT) "]\n"
"	str	w8, [x7]\n"
"	dsb	st\n"
"	mrs	x1, vbar_el1\n"
"	add	x1, x1, #" __stringify(MOD_VECTOR_IRQ_EL0) "\n"
"	movz	x0, #(" __stringify(SDEI_EVENT_COMPLETE_AND_RESUME) " & 0xffff)\n"
"	movk	x0, #(" __stringify(SDEI_EVENT_COMPLETE_AND_RESUME) " >> 16), lsl #16\n"
"	hvc	#0\n"
"	b	.\n"
"1:	ldr	x9, [x1, #" __stringify(MOD_OFF_UNPARKABLE) "]\n"
"	add	x9, x9, #1\n"
"	str	x9, [x1, #" __stringify(MOD_OFF_UNPARKABLE) "]\n"
"2:	movz	x0, #(" __stringify(SDEI_EVENT_COMPLETE) " & 0xffff)\n"
"	movk	x0, #(" __stringify(SDEI_EVENT_COMPLETE) " >> 16), lsl #16\n"
"	hvc	#0\n"
"	b	.\n"
"	.size	apf_sdei_entry, . - apf_sdei_entry\n"
"	.popsection\n");

extern char apf_sdei_entry[];

/* --- The sleeper table --- */

static void apf_count_sleeper(void)
{
	s64 now = atomic64_inc_return(&apf_stats.sleepers);
	s64 max = atomic64_read(&apf_stats.sleepers_max);

	while (now > max && !atomic64_try_cmpxchg(&apf_stats.sleepers_max, &max, now))
		;
}

/*
 * Task work: runs as the task returns to user mode after its not-present, and
 * sleeps until the token's page is in (or the task is killed).
 */
static void apf_sleep(struct callback_head *work)
{
	struct apf_sleeper *s = container_of(work, struct apf_sleeper, work);
	struct task_struct *task;
	unsigned long flags;

	for (;;) {
		set_current_state(TASK_KILLABLE);
		if (READ_ONCE(s->ready) || fatal_signal_pending(current))
			break;
		schedule();
	}
	__set_current_state(TASK_RUNNING);

	raw_spin_lock_irqsave(&apf_lock, flags);
	if (s->ready) {
		s->token = 0;
	} else {
		/* Killed: the entry waits for its page-ready, which would find no one. */
		s->orphan = true;
		atomic64_inc(&apf_stats.killed);
	}
	task = s->task;
	s->task = NULL;
	/* Under the lock, with the entry: the count never exceeds the table. */
	atomic64_dec(&apf_stats.sleepers);
	raw_spin_unlock_irqrestore(&apf_lock, flags);
	put_task_struct(task);	/* not the last reference: task is current */

	/*
	 * The last thing this function does. The kernel has no preemption
	 * (PREEMPT_VOLUNTARY) and nothing here sleeps, so the task reaches its return
	 * to task_work_run before the CPU can pass an RCU quiescent state: unload's
	 * synchronize_rcu() after apf_live reaches 0 covers these last instructions.
	 */
	if (atomic_dec_and_test(&apf_live))
		wake_up_var(&apf_live);
}

/* From the PPI handler, for a not-present the SDEI entry took: current sleeps. */
static void apf_prepare_sleep(u32 token)
{
	struct task_struct *task = current;
	struct apf_sleeper *s = NULL;
	unsigned int i;

	atomic64_inc(&apf_stats.not_present);
	if (task->flags & (PF_KTHREAD | PF_EXITING))
		goto fallback;

	raw_spin_lock(&apf_lock);
	for (i = 0; i < max_sleepers; i++) {
		if (!apf_sleepers[i].token) {
			s = &apf_sleepers[i];
			s->token = token;
			s->cpu = smp_processor_id();
			s->ready = false;
			s->orphan = false;
			s->task = task;
			get_task_struct(task);
			apf_count_sleeper();
			break;
		}
	}
	raw_spin_unlock(&apf_lock);
	if (!s)
		goto fallback;

	init_task_work(&s->work, apf_sleep);
	atomic_inc(&apf_live);
	if (task_work_add(task, &s->work, TWA_RESUME) == 0)
		return;

	/* The task is exiting and runs no more task work. */
	raw_spin_lock(&apf_lock);
	s->token = 0;
	s->task = NULL;
	atomic64_dec(&apf_stats.sleepers);
	raw_spin_unlock(&apf_lock);
	put_task_struct(task);
	if (atomic_dec_and_test(&apf_live))
		wake_up_var(&apf_live);
fallback:
	atomic64_inc(&apf_stats.fallbacks);
}

/*
 * Page-ready for `token`, or with APF_TOKEN_WAKE_ALL every entry of `cpu`.
 * Returns how many entries it woke or consumed.
 */
static unsigned int apf_wake(u32 token, int cpu)
{
	unsigned int i, n = 0;
	unsigned long flags;

	raw_spin_lock_irqsave(&apf_lock, flags);
	for (i = 0; i < max_sleepers; i++) {
		struct apf_sleeper *s = &apf_sleepers[i];

		if (!s->token)
			continue;
		if (token == APF_TOKEN_WAKE_ALL ? s->cpu != cpu : s->token != token)
			continue;
		n++;
		if (s->orphan) {
			s->token = 0;
			s->orphan = false;
			atomic64_inc(&apf_stats.ready_orphan);
		} else if (!s->ready) {
			WRITE_ONCE(s->ready, true);
			wake_up_process(s->task);
		}
		if (token != APF_TOKEN_WAKE_ALL)
			break;
	}
	raw_spin_unlock_irqrestore(&apf_lock, flags);
	return n;
}

/* --- The page-ready PPI --- */

static irqreturn_t apf_ppi_handler(int irq, void *dev_id)
{
	struct apf_cpu *c = dev_id;	/* this CPU's: a per-CPU interrupt */
	u32 *reason = (u32 *)(c->block + (apf_separate_ready ? APF_SHARED_OFF_READY_REASON
							     : APF_SHARED_OFF_REASON));
	u32 *token = (u32 *)(c->block + (apf_separate_ready ? APF_SHARED_OFF_READY_TOKEN
							    : APF_SHARED_OFF_TOKEN));
	u32 pending = xchg(&c->pending, 0);
	bool consumed = false;

	/* First the not-present, which the host signalled before any page-ready. */
	if (pending)
		apf_prepare_sleep(pending);

	if (READ_ONCE(*reason) == APF_REASON_PAGE_READY) {
		u32 ready;

		smp_rmb();
		ready = READ_ONCE(*token);
		if (ready == APF_TOKEN_WAKE_ALL) {
			atomic64_inc(&apf_stats.wake_all);
			apf_wake(ready, smp_processor_id());
		} else {
			atomic64_inc(&apf_stats.page_ready);
			if (!apf_wake(ready, smp_processor_id()))
				atomic64_inc(&apf_stats.ready_unknown);
		}
		WRITE_ONCE(*token, 0);
		smp_store_release(reason, 0);
		consumed = true;
	}
	/*
	 * The line is level and only IRQ_ACK lowers it. The host raises it after
	 * writing the channel, so an interrupt that only the SDEI entry pended, with
	 * the channel empty, has no line to lower: no ACK (one hypercall less per
	 * not-present). Any other interrupt is ACKed, even with nothing read.
	 */
	if (consumed || !pending)
		apf_call(ASYNC_PF_FUNC_IRQ_ACK, 0, 0, NULL);
	return IRQ_HANDLED;
}

/* --- Per CPU: on when it comes online, off when it goes --- */

/* This CPU's redistributor: the frame whose GICR_TYPER affinity is our MPIDR's. */
static void __iomem *apf_find_ispendr(void)
{
	u64 mpidr = read_cpuid_mpidr();
	u64 aff = (MPIDR_AFFINITY_LEVEL(mpidr, 3) << 24) | (MPIDR_AFFINITY_LEVEL(mpidr, 2) << 16) |
		  (MPIDR_AFFINITY_LEVEL(mpidr, 1) << 8) | MPIDR_AFFINITY_LEVEL(mpidr, 0);
	resource_size_t off;

	for (off = 0; off + MOD_GICR_STRIDE <= apf_gicr_size; off += MOD_GICR_STRIDE) {
		u64 typer = readq_relaxed(apf_gicr + off + MOD_GICR_TYPER);

		if ((typer >> 32) == aff)
			return apf_gicr + off + MOD_GICR_FRAME + MOD_GICR_ISPENDR0;
		if (typer & MOD_GICR_TYPER_LAST)
			break;
	}
	return NULL;
}

static int apf_cpu_online(unsigned int cpu)
{
	struct apf_cpu *c = this_cpu_ptr(apf_cpus);
	unsigned long control;
	long ret;

	if (!c->ispendr)
		c->ispendr = apf_find_ispendr();
	if (!c->ispendr) {
		pr_warn("apf: cpu%u: no redistributor matches its MPIDR; APF stays off here\n", cpu);
		return 0;
	}
	memset(c->block, 0, PAGE_SIZE);
	c->pending = 0;

	ret = sdei_call(SDEI_EVENT_REGISTER, apf.event, (unsigned long)apf_sdei_entry,
			(unsigned long)c, SDEI_RM_ANY, 0);
	if (ret != SDEI_SUCCESS) {
		pr_warn("apf: cpu%u: SDEI_EVENT_REGISTER returned %ld; APF stays off here\n", cpu, ret);
		return 0;
	}
	ret = sdei_call(SDEI_EVENT_ENABLE, apf.event, 0, 0, 0, 0);
	if (ret == SDEI_SUCCESS)
		/* Linux's SDEI driver unmasks too when the firmware node is there: harmless. */
		ret = sdei_call(SDEI_PE_UNMASK, 0, 0, 0, 0, 0);
	if (ret != SDEI_SUCCESS) {
		pr_warn("apf: cpu%u: SDEI enable/unmask returned %ld; APF stays off here\n", cpu, ret);
		goto unregister;
	}
	enable_percpu_irq(apf_irq, IRQ_TYPE_NONE);

	control = page_to_phys(c->page) | APF_CONTROL_ENABLED;
	if (apf_separate_ready)
		control |= APF_CONTROL_SEPARATE_READY;
	ret = apf_call(ASYNC_PF_FUNC_ENABLE, lower_32_bits(control), upper_32_bits(control), NULL);
	if (ret != SMCCC_RET_SUCCESS) {
		pr_warn("apf: cpu%u: ENABLE returned %ld; APF stays off here\n", cpu, ret);
		disable_percpu_irq(apf_irq);
		goto unregister;
	}
	c->on = true;
	return 0;

unregister:
	sdei_call(SDEI_EVENT_DISABLE, apf.event, 0, 0, 0, 0);
	sdei_call(SDEI_EVENT_UNREGISTER, apf.event, 0, 0, 0, 0);
	return 0;
}

static int apf_cpu_offline(unsigned int cpu)
{
	struct apf_cpu *c = this_cpu_ptr(apf_cpus);
	unsigned int woken;

	if (!c->on)
		return 0;
	/* Off first: no not-present or page-ready for this CPU after it. */
	apf_call(ASYNC_PF_FUNC_ENABLE, 0, 0, NULL);
	disable_percpu_irq(apf_irq);
	sdei_call(SDEI_EVENT_DISABLE, apf.event, 0, 0, 0, 0);
	sdei_call(SDEI_EVENT_UNREGISTER, apf.event, 0, 0, 0, 0);
	c->on = false;
	c->pending = 0;
	woken = apf_wake(APF_TOKEN_WAKE_ALL, cpu);
	atomic64_add(woken, &apf_stats.offline_wakes);
	return 0;
}

/* --- /sys/kernel/apf --- */

static u64 apf_unparkable(void)
{
	u64 sum = 0;
	int cpu;

	for_each_possible_cpu(cpu)
		sum += READ_ONCE(per_cpu_ptr(apf_cpus, cpu)->unparkable);
	return sum;
}

#define APF_COUNTER(name, value)						\
	static ssize_t name##_show(struct kobject *k, struct kobj_attribute *a,	\
				   char *buf)					\
	{									\
		return sysfs_emit(buf, "%llu\n", (unsigned long long)(value));	\
	}									\
	static struct kobj_attribute apf_attr_##name = __ATTR_RO(name)

APF_COUNTER(not_present, atomic64_read(&apf_stats.not_present) + apf_unparkable());
APF_COUNTER(page_ready, atomic64_read(&apf_stats.page_ready));
APF_COUNTER(wake_all, atomic64_read(&apf_stats.wake_all));
APF_COUNTER(sleepers, atomic64_read(&apf_stats.sleepers));
APF_COUNTER(sleepers_max, atomic64_read(&apf_stats.sleepers_max));
APF_COUNTER(fallbacks, atomic64_read(&apf_stats.fallbacks) + apf_unparkable());
APF_COUNTER(killed, atomic64_read(&apf_stats.killed));
APF_COUNTER(ready_orphan, atomic64_read(&apf_stats.ready_orphan));
APF_COUNTER(ready_unknown, atomic64_read(&apf_stats.ready_unknown));
APF_COUNTER(offline_wakes, atomic64_read(&apf_stats.offline_wakes));

static struct attribute *apf_attrs[] = {
	&apf_attr_not_present.attr,
	&apf_attr_page_ready.attr,
	&apf_attr_wake_all.attr,
	&apf_attr_sleepers.attr,
	&apf_attr_sleepers_max.attr,
	&apf_attr_fallbacks.attr,
	&apf_attr_killed.attr,
	&apf_attr_ready_orphan.attr,
	&apf_attr_ready_unknown.attr,
	&apf_attr_offline_wakes.attr,
	NULL,
};

static const struct attribute_group apf_group = { .attrs = apf_attrs };
static struct kobject *apf_kobj;

/* --- Load and unload --- */

/* The page-ready PPI as a Linux per-CPU interrupt of the GIC's domain. */
static int apf_map_ppi(struct device_node *gic)
{
	struct irq_fwspec spec = {
		.fwnode = of_fwnode_handle(gic),
		.param_count = 3,
		/* GIC binding: type 1 = PPI, number from 16, level-triggered. */
		.param = { 1, apf.ppi - PPI_FIRST, IRQ_TYPE_LEVEL_HIGH },
	};
	int irq = irq_create_fwspec_mapping(&spec);

	if (irq <= 0)
		return -ENXIO;
	apf_irq = irq;
	return request_percpu_irq(apf_irq, apf_ppi_handler, "apf-page-ready", apf_cpus);
}

/* Everything but discovery; returns why APF stays off, or NULL. */
static const char *apf_start(void)
{
	struct device_node *gic;
	struct resource res;
	int cpu, err;

	if (max_sleepers == 0 || max_sleepers > 4096)
		return "max_sleepers must be 1 to 4096";
	/*
	 * With KPTI, user mode runs with the kernel unmapped: the host would enter
	 * apf_sdei_entry on page tables without it. Linux's own SDEI handler goes
	 * through a trampoline for that; this module has none.
	 */
	if (arm64_kernel_unmapped_at_el0())
		return "the kernel is unmapped at EL0 (KPTI) and the SDEI entry has no trampoline";
	apf_separate_ready = APF_VERSION_MINOR(apf.version) >= 1;
	apf_sleepers = kcalloc(max_sleepers, sizeof(*apf_sleepers), GFP_KERNEL);
	if (!apf_sleepers)
		return "no memory for the sleeper table";
	for_each_possible_cpu(cpu) {
		struct apf_cpu *c = per_cpu_ptr(apf_cpus, cpu);

		c->page = alloc_page(GFP_KERNEL | __GFP_ZERO);
		if (!c->page)
			return "no memory for the shared blocks";
		c->block = page_address(c->page);
		c->ppi_bit = 1U << apf.ppi;
	}

	gic = of_find_compatible_node(NULL, NULL, "arm,gic-v3");
	if (!gic)
		return "no arm,gic-v3 node in the device tree";
	err = of_address_to_resource(gic, 1, &res);
	if (!err) {
		apf_gicr_size = resource_size(&res);
		apf_gicr = ioremap(res.start, apf_gicr_size);
		err = apf_gicr ? apf_map_ppi(gic) : -ENOMEM;
	}
	of_node_put(gic);
	if (err) {
		apf_irq = 0;
		return "cannot map the redistributors or the page-ready PPI";
	}

	err = cpuhp_setup_state(CPUHP_AP_ONLINE_DYN, "apf:online", apf_cpu_online, apf_cpu_offline);
	if (err < 0)
		return "cpuhp_setup_state failed";
	apf_hp_state = err;
	return NULL;
}

/* Undoes apf_start; with no task left in the module's code when it returns. */
static void apf_stop(void)
{
	int cpu;

	if (apf_hp_state >= 0)
		cpuhp_remove_state(apf_hp_state);	/* apf_cpu_offline on each CPU */
	apf_hp_state = -1;
	wait_var_event(&apf_live, !atomic_read(&apf_live));
	synchronize_rcu();
	if (apf_irq)
		free_percpu_irq(apf_irq, apf_cpus);
	apf_irq = 0;
	if (apf_gicr)
		iounmap(apf_gicr);
	apf_gicr = NULL;
	for_each_possible_cpu(cpu) {
		struct apf_cpu *c = per_cpu_ptr(apf_cpus, cpu);

		if (c->page)
			__free_page(c->page);
		c->page = NULL;
	}
	kfree(apf_sleepers);
	apf_sleepers = NULL;
}

static int __init apf_init(void)
{
	const char *why;

	apf_cpus = alloc_percpu(struct apf_cpu);
	if (!apf_cpus)
		return -ENOMEM;
	apf_kobj = kobject_create_and_add("apf", kernel_kobj);
	if (!apf_kobj || sysfs_create_group(apf_kobj, &apf_group)) {
		kobject_put(apf_kobj);
		free_percpu(apf_cpus);
		return -ENOMEM;
	}

	/* Loading succeeds either way: "not offered" is an answer, not an error. */
	why = apf_discover(&apf);
	if (why) {
		pr_info("apf: APF not offered (%s)\n", why);
		return 0;
	}
	pr_info("apf: hypervisor offers APF %lu.%lu (%lu slots, SDEI event 0x%lx, PPI %lu)\n",
		APF_VERSION_MAJOR(apf.version), APF_VERSION_MINOR(apf.version),
		apf.slots, apf.event, apf.ppi);
	why = apf_start();
	if (why) {
		apf_stop();
		pr_warn("apf: APF off: %s\n", why);
		return 0;
	}
	pr_info("apf: on, %u CPUs online, %u sleepers at most\n", num_online_cpus(), max_sleepers);
	return 0;
}

static void __exit apf_exit(void)
{
	s64 woken = atomic64_read(&apf_stats.offline_wakes);

	apf_stop();
	woken = atomic64_read(&apf_stats.offline_wakes) - woken;
	sysfs_remove_group(apf_kobj, &apf_group);
	kobject_put(apf_kobj);
	free_percpu(apf_cpus);
	pr_info("apf: unloaded, %lld sleepers woken\n", woken);
}

module_init(apf_init);
module_exit(apf_exit);

MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("apf asynchronous page faults: guest side");
