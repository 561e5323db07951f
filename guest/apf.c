/*
 * The asynchronous page fault driver (DESIGN §7, the guest side of the arm64
 * series with its review applied).
 *
 * Page not present: an SDEI event interrupts the EL0 process that touched a page
 * the host must fetch. The handler parks the process on the token in this vCPU's
 * sleeper table and resumes through the IRQ-from-EL0 vector, whose return path
 * sees the process asleep and runs another.
 * Page ready: a level PPI; the handler wakes the sleeper and acknowledges with
 * IRQ_ACK, which lowers the line.
 *
 * When discovery fails (no apf hypervisor, as on QEMU) the driver stays off and
 * touches nothing.
 */
#include "kernel.h"

#define VERSION_MAJOR(v) (((v) >> 16) & 0xff)
#define PPI_FIRST 16
#define PPI_LAST 31
#define PSTATE_M_MASK 0xf	/* PSTATE.M[3:0]: 0 = EL0t */

static s64 apf_call(u64 subfn, u64 a2, u64 a3, u64 *value)
{
	struct smccc_res r;
	smccc_hvc(&r, SMCCC_VENDOR_HYP_ASYNC_PF, subfn, a2, a3, 0, 0);
	if (value)
		*value = r.a[1];
	return (s64)r.a[0];
}

/* The vendor-hyp UID is apf's, and FEATURES advertises the ASYNC_PF function. */
static int apf_hypervisor_present(void)
{
	static const u32 uid[4] = { APF_UID_0, APF_UID_1, APF_UID_2, APF_UID_3 };
	struct smccc_res r;
	smccc_hvc(&r, SMCCC_VENDOR_HYP_UID, 0, 0, 0, 0, 0);
	for (int i = 0; i < 4; i++)
		if ((u32)r.a[i] != uid[i])
			return 0;
	/* A 128-bit bitmap, 32 bits per register: function n is bit n % 32 of x[n / 32]. */
	smccc_hvc(&r, SMCCC_VENDOR_HYP_FEATURES, 0, 0, 0, 0, 0);
	u32 fn = SMCCC_VENDOR_HYP_FUNC_ASYNC_PF;
	return (r.a[fn / 32] >> (fn % 32)) & 1;
}

/* Reads the host's parameters into c->apf. Returns what is wrong, or NULL. */
static const char *apf_discover(struct cpu *c, u64 *version)
{
	u64 slots, event, ppi;
	if (!apf_hypervisor_present())
		return "no apf hypervisor";
	if (apf_call(ASYNC_PF_FUNC_VERSION, 0, 0, version) != SMCCC_RET_SUCCESS ||
	    (*version >> 24) != 0 || VERSION_MAJOR(*version) < 1)
		return "unsupported version";
	if (apf_call(ASYNC_PF_FUNC_SLOTS, 0, 0, &slots) != SMCCC_RET_SUCCESS || slots == 0)
		return "no slots";
	if (apf_call(ASYNC_PF_FUNC_SDEI, 0, 0, &event) != SMCCC_RET_SUCCESS ||
	    event == 0 || event > 0xffffffff)
		return "no SDEI event";
	if (apf_call(ASYNC_PF_FUNC_IRQ, 0, 0, &ppi) != SMCCC_RET_SUCCESS ||
	    ppi < PPI_FIRST || ppi > PPI_LAST || ppi == PPI_TIMER_VIRT)
		return "no page-ready PPI";
	c->apf.event = (u32)event;
	c->apf.ppi = (u32)ppi;
	c->apf.separate_ready = *version >= APF_VERSION;	/* 1.1 adds the ready channel */
	c->apf.nr_sleepers = 2 * slots;
	if (c->apf.nr_sleepers > sizeof(c->apf.sleepers) / sizeof(c->apf.sleepers[0]))
		c->apf.nr_sleepers = sizeof(c->apf.sleepers) / sizeof(c->apf.sleepers[0]);
	return NULL;
}

/* Registers and enables the (private) event on this vCPU and unmasks the PE. */
static s64 sdei_setup(struct cpu *c)
{
	struct smccc_res r;
	smccc_hvc(&r, SDEI_EVENT_REGISTER, c->apf.event, (u64)sdei_entry, (u64)c,
		  SDEI_RM_PE, 0);
	if ((s64)r.a[0] != SDEI_SUCCESS)
		return (s64)r.a[0];
	s64 ret = hvc(SDEI_EVENT_ENABLE, c->apf.event, 0, 0);
	if (ret == SDEI_SUCCESS)
		ret = hvc(SDEI_PE_UNMASK, 0, 0, 0);
	if (ret != SDEI_SUCCESS)
		hvc(SDEI_EVENT_UNREGISTER, c->apf.event, 0, 0);
	return ret;
}

/* Per-vCPU bring-up: discovery, SDEI, the PPI, then ENABLE with our block. */
void apf_cpu_init(struct cpu *c)
{
	u64 version = 0;
	const char *why = apf_discover(c, &version);
	if (why) {
		kprintf("apf: cpu%u off: %s\n", c->id, why);
		return;
	}
	if (sdei_setup(c) != SDEI_SUCCESS) {
		kprintf("apf: cpu%u off: SDEI setup failed\n", c->id);
		return;
	}
	gic_ppi_enable(c->id, c->apf.ppi, 1);

	u64 control = (u64)&c->apf_block | APF_CONTROL_ENABLED;
	if (c->apf.separate_ready)
		control |= APF_CONTROL_SEPARATE_READY;
	s64 ret = apf_call(ASYNC_PF_FUNC_ENABLE, control & 0xffffffff, control >> 32, NULL);
	if (ret != SMCCC_RET_SUCCESS) {
		gic_ppi_enable(c->id, c->apf.ppi, 0);
		kprintf("apf: cpu%u off: ENABLE returned %lx\n", c->id, (u64)ret);
		return;
	}
	c->apf_block.enabled = 1;
	c->apf.on = 1;
	kprintf("apf: cpu%u on: version=0x%lx sdei=0x%x ppi=%u sleepers=%u separate_ready=%u\n",
		c->id, version, c->apf.event, c->apf.ppi, c->apf.nr_sleepers,
		c->apf.separate_ready);
}

static void wake(struct apf_sleeper *s)
{
	if (s->proc->state == P_ASLEEP)
		s->proc->state = P_RUNNABLE;
	s->token = 0;
	s->proc = NULL;
}

/*
 * Wake-up preemption: a process whose page arrived runs at once rather than at the
 * next tick, as a sleeper that was waiting for I/O would under a Linux scheduler.
 */
static void wake_token(struct cpu *c, u32 token)
{
	for (unsigned i = 0; i < c->apf.nr_sleepers; i++) {
		struct apf_sleeper *s = &c->apf.sleepers[i];
		if (s->token && (token == APF_TOKEN_WAKE_ALL || s->token == token)) {
			wake(s);
			c->need_resched = 1;
		}
	}
}

static int add_sleeper(struct cpu *c, u32 token, struct proc *p)
{
	for (unsigned i = 0; i < c->apf.nr_sleepers; i++) {
		struct apf_sleeper *s = &c->apf.sleepers[i];
		if (!s->token) {
			s->token = token;
			s->proc = p;
			return 1;
		}
	}
	return 0;
}

/* CPU offline and shutdown: ENABLE with 0, then wake whoever still sleeps here. */
void apf_cpu_offline(struct cpu *c)
{
	if (!c->apf.on)
		return;
	apf_call(ASYNC_PF_FUNC_ENABLE, 0, 0, NULL);
	c->apf.on = 0;
	c->apf_block.enabled = 0;
	gic_ppi_enable(c->id, c->apf.ppi, 0);
	wake_token(c, APF_TOKEN_WAKE_ALL);
}

/*
 * SDEI handler for page-not-present. Runs with DAIF masked on the current kernel
 * stack; entry.S makes the returned call. An interrupted EL0 process goes to
 * sleep on the token, and we resume at VBAR_EL1 + 0x480 (IRQ from EL0), whose
 * return path schedules another process. Anything else completes plainly: the
 * interrupted code retries the access and the host resolves it synchronously.
 */
struct sdei_finish apf_sdei_handler(u64 event, u64 arg, u64 pc, u64 pstate)
{
	struct sdei_finish plain = { SDEI_EVENT_COMPLETE, 0 };
	struct cpu *c = this_cpu();	/* the argument we registered is only checked */
	struct apf_shared_data *blk = &c->apf_block;
	(void)pc;
	if (!c->apf.on || event != c->apf.event || arg != (u64)c)
		return plain;
	u32 reason = blk->reason;
	barrier_ld();
	u32 token = blk->token;
	if (reason != APF_REASON_PAGE_NOT_PRESENT)
		return plain;
	int from_el0 = (pstate & PSTATE_M_MASK) == 0;
	int real_token = token != 0 && token != APF_TOKEN_WAKE_ALL;	/* 0 marks a free entry */
	int parked = from_el0 && real_token && c->cur && add_sleeper(c, token, c->cur);
	blk->token = 0;
	barrier_st();
	blk->reason = 0;	/* the host may signal the next not-present now */
	if (!parked)
		return plain;
	c->cur->state = P_ASLEEP;
	struct sdei_finish resume = { SDEI_EVENT_COMPLETE_AND_RESUME,
				      read_sysreg(vbar_el1) + 0x480 };
	return resume;
}

/*
 * Page-ready PPI. The ready notification is in the separate channel with ABI 1.1,
 * else in the shared one. A reason other than PAGE_READY wakes nobody and leaves
 * the channel alone (it may hold a not-present), but we ACK anyway: the line is
 * level and only IRQ_ACK lowers it, so returning without one (as the series did)
 * would take the same interrupt forever; ACK with nothing pending is a no-op.
 */
void apf_handle_irq(struct cpu *c)
{
	struct apf_shared_data *blk = &c->apf_block;
	volatile u32 *reason = c->apf.separate_ready ? &blk->ready_reason : &blk->reason;
	volatile u32 *token = c->apf.separate_ready ? &blk->ready_token : &blk->token;
	if (*reason == APF_REASON_PAGE_READY) {
		barrier_ld();
		wake_token(c, *token);
		*token = 0;
		barrier_st();
		*reason = 0;
	}
	apf_call(ASYNC_PF_FUNC_IRQ_ACK, 0, 0, NULL);
}
