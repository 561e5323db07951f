/*
 * The test runtime's EL1 side: checks, the entry points entry.S calls (cpu_main,
 * trap, apf_sdei_handler), GIC polling and APF bring-up. See rt.h.
 */
#include "rt.h"

#define ESR_EC(esr) ((u32)((esr) >> ESR_EC_SHIFT) & 0x3f)
#define HVC_MASK 0xFFE0001Fu	/* HVC #imm16 with the immediate masked out */
#define HVC_INSN 0xD4000002u
/* SCTLR_EL1: RES1 bits and stack alignment checks; MMU and caches off. */
#define SCTLR_EL1_RES1 0x30D00800ul
#define SCTLR_EL1_SA (1ul << 3)
#define SCTLR_EL1_SA0 (1ul << 4)

u64 kernel_stack_top[MAX_CPUS];
extern char __image_end[];

/* --- Checks --- */

void check(const char *name, u64 got, u64 want)
{
	if (got == want)
		kprintf("OK %s\n", name);
	else
		kprintf("FAIL %s got=0x%lx want=0x%lx\n", name, got, want);
}

void check_at_most(const char *name, u64 got, u64 max)
{
	if (got <= max)
		kprintf("OK %s got=0x%lx\n", name, got);
	else
		kprintf("FAIL %s got=0x%lx want=0x%lx\n", name, got, max);
}

void check_at_least(const char *name, u64 got, u64 min)
{
	if (got >= min)
		kprintf("OK %s got=0x%lx\n", name, got);
	else
		kprintf("FAIL %s got=0x%lx want=0x%lx\n", name, got, min);
}

void check_cat(const char *prefix, const char *rest, u64 got, u64 want)
{
	char name[64];
	unsigned n = 0;
	for (const char *s = prefix; *s && n < sizeof(name) - 1; s++)
		name[n++] = *s;
	for (const char *s = rest; *s && n < sizeof(name) - 1; s++)
		name[n++] = *s;
	name[n] = 0;
	check(name, got, want);
}

void tally(struct tally *t, int ok, u64 got, u64 want)
{
	t->runs++;
	if (ok)
		return;
	if (!t->fails++) {
		t->got = got;
		t->want = want;
	}
}

void report(const struct tally *t)
{
	if (!t->runs)
		kprintf("FAIL %s never observed\n", t->name);
	else if (t->fails)
		kprintf("FAIL %s got=0x%lx want=0x%lx failures=%lu of %lu\n", t->name, t->got,
			t->want, t->fails, t->runs);
	else
		kprintf("OK %s n=%lu\n", t->name, t->runs);
}

static noreturn void power_off(void)
{
	barrier();
	hvc(PSCI_SYSTEM_OFF, 0, 0, 0);
	park();
}

noreturn void finish(void)
{
	kprintf("DONE\n");
	power_off();
}

/* --- Firmware calls --- */

struct smccc_res call(u64 fn, u64 a1, u64 a2, u64 a3, u64 a4, u64 a5)
{
	struct smccc_res r;
	smccc_hvc(&r, fn, a1, a2, a3, a4, a5);
	return r;
}

s64 apf_call(u64 subfn, u64 a2, u64 a3, u64 *value)
{
	struct smccc_res r = call(SMCCC_VENDOR_HYP_ASYNC_PF, subfn, a2, a3, 0, 0);
	if (value)
		*value = r.a[1];
	return (s64)r.a[0];
}

s64 apf_enable(u64 word)
{
	return apf_call(ASYNC_PF_FUNC_ENABLE, word & 0xffffffff, word >> 32, NULL);
}

/* --- Entry points called by entry.S --- */

noreturn void cpu_main(u64 id, u64 stack_top)
{
	kernel_stack_top[id] = stack_top;
	write_sysreg(sctlr_el1, SCTLR_EL1_RES1 | SCTLR_EL1_SA | SCTLR_EL1_SA0);
	isb();
	if (id == 0)
		test_main();
	else
		test_secondary((unsigned)id);
	kprintf("FAIL test_returned got=0x%lx want=0x0\n", id);
	power_off();
}

static noreturn void unexpected(const struct frame *f, unsigned vec)
{
	kprintf("FAIL unexpected_exception cpu=%u vector=0x%x esr=0x%lx elr=0x%lx far=0x%lx "
		"spsr=0x%lx\n", cpu_id(), vec * 0x80, read_sysreg(esr_el1), f->elr,
		read_sysreg(far_el1), f->spsr);
	power_off();
}

/*
 * An HVC the platform does not implement is UNDEFINED at EL1 (QEMU without EL2):
 * it answers NOT_SUPPORTED, so the images also run, and fail visibly, on QEMU.
 */
static int undef_hvc(struct frame *f)
{
	if (ESR_EC(read_sysreg(esr_el1)) != ESR_EC_UNKNOWN)
		return 0;
	if ((*(const u32 *)f->elr & HVC_MASK) != HVC_INSN)
		return 0;
	f->x[0] = (u64)SMCCC_RET_NOT_SUPPORTED;
	f->elr += 4;
	return 1;
}

void trap(struct frame *f, unsigned vec)
{
	switch (vec) {
	case VEC_EL1H_SYNC:
		if (!undef_hvc(f))
			unexpected(f, vec);
		return;
	case VEC_EL0_SYNC:
		tasks_el0_sync(f);
		return;
	case VEC_EL0_IRQ:
		tasks_el0_irq(f);
		return;
	default:
		unexpected(f, vec);
	}
}

struct sdei_finish apf_sdei_handler(u64 event, u64 arg, u64 pc, u64 pstate)
{
	return on_sdei(event, arg, pc, pstate);
}

__attribute__((weak)) struct sdei_finish on_sdei(u64 event, u64 arg, u64 pc, u64 pstate)
{
	(void)arg;
	kprintf("FAIL unexpected_sdei got=0x%lx want=0x0 pc=0x%lx pstate=0x%lx\n", event, pc,
		pstate);
	struct sdei_finish plain = { SDEI_EVENT_COMPLETE, 0 };
	return plain;
}

__attribute__((weak)) void on_interrupt(unsigned cpu, u32 intid)
{
	kprintf("FAIL unexpected_interrupt got=0x%x want=0x0 cpu=%u\n", intid, cpu);
}

/* --- GIC --- */

void gic_setup(unsigned cpu)
{
	if (cpu == 0)
		gic_dist_init();
	check(cpu == 0 ? "gic_setup" : "gic_setup_secondary", (u64)gic_cpu_init(cpu), 0);
}

u32 gic_pending(void)
{
	return (u32)read_sysreg(S3_0_C12_C12_2) & 0xffffff;	/* ICC_HPPIR1_EL1 */
}

void irq_poll(unsigned cpu)
{
	for (;;) {
		u32 intid = gic_ack();
		if (intid >= GIC_SPURIOUS)
			return;
		on_interrupt(cpu, intid);
		gic_eoi(intid);
	}
}

void wait_pending(u32 intid)
{
	while (gic_pending() != intid)
		wfi();		/* wakes on a pending interrupt with DAIF masked */
}

/* --- APF --- */

int apf_bring_up(unsigned cpu, const char *prefix, struct apf_shared_data *block,
		 u64 flags, struct apf_host *host)
{
	u64 event = 0, ppi = 0, slots = 0;
	s64 ret = apf_call(ASYNC_PF_FUNC_SDEI, 0, 0, &event);
	ret |= apf_call(ASYNC_PF_FUNC_IRQ, 0, 0, &ppi);
	ret |= apf_call(ASYNC_PF_FUNC_SLOTS, 0, 0, &slots);
	check_cat(prefix, "discover", (u64)ret, SMCCC_RET_SUCCESS);
	if (ret != SMCCC_RET_SUCCESS)
		return -1;
	host->event = (u32)event;
	host->ppi = (u32)ppi;
	host->slots = slots;

	struct smccc_res r = call(SDEI_EVENT_REGISTER, event, (u64)sdei_entry,
				  SDEI_TEST_ARG(cpu), SDEI_RM_ANY, 0);
	check_cat(prefix, "sdei_register", r.a[0], SDEI_SUCCESS);
	ret = hvc(SDEI_EVENT_ENABLE, event, 0, 0);
	check_cat(prefix, "sdei_enable", (u64)ret, SDEI_SUCCESS);
	ret = hvc(SDEI_PE_UNMASK, 0, 0, 0);
	check_cat(prefix, "pe_unmask", (u64)ret, SDEI_SUCCESS);
	gic_ppi_enable(cpu, host->ppi, 1);
	ret = apf_enable((u64)block | flags);
	check_cat(prefix, "apf_enable", (u64)ret, SMCCC_RET_SUCCESS);
	return ret == SMCCC_RET_SUCCESS ? 0 : -1;
}

void apf_take_wake_all(const char *prefix, struct apf_shared_data *block,
		       const struct apf_host *host, int ack)
{
	wait_pending(host->ppi);
	u32 intid = gic_ack();
	u32 reason = block->ready_reason;
	barrier_ld();
	u32 token = block->ready_token;
	check_cat(prefix, "wake_all_reason", reason, APF_REASON_PAGE_READY);
	check_cat(prefix, "wake_all_token", token, APF_TOKEN_WAKE_ALL);
	block->ready_token = 0;
	barrier_st();
	block->ready_reason = 0;
	if (ack)
		check_cat(prefix, "wake_all_ack", (u64)apf_call(ASYNC_PF_FUNC_IRQ_ACK, 0, 0, NULL),
			   SMCCC_RET_SUCCESS);
	gic_eoi(intid);
}

void check_layout(u64 end)
{
	u64 image_end = (u64)__image_end;
	int ok = image_end <= TEST_DATA_BASE && end <= APF_RAM_BASE + TEST_RAM_SIZE;
	check("layout", ok ? 0 : image_end, 0);
}
