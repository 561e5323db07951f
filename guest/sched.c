/*
 * Processes, the per-vCPU round-robin scheduler, exceptions and system calls.
 *
 * Each vCPU schedules only the processes pinned to it, so its run queue, its
 * sleeper table and its processes' frames are touched by that vCPU alone, with
 * interrupts masked: no locks.
 */
#include "kernel.h"

#define ESR_EC(esr) ((u32)((esr) >> ESR_EC_SHIFT) & 0x3f)
#define HVC_MASK 0xFFE0001Fu	/* HVC #imm16 with the immediate masked out */
#define HVC_INSN 0xD4000002u
#define SYS_WRITE_MAX 256

static u8 user_stacks[MAX_PROCS][USTACK_SIZE] __attribute__((aligned(APF_PAGE_SIZE)));

/*
 * The first EL0 context: user_main(kind, base, bytes, work, seed, write_pct) at EL0t, IRQs
 * on; and the result as of 0 units done.
 */
void proc_init(struct proc *p)
{
	memset(&p->ctx, 0, sizeof(p->ctx));
	p->ctx.x[0] = p->spec.kind;
	p->ctx.x[1] = p->mem_base;
	p->ctx.x[2] = p->spec.mem_bytes;
	p->ctx.x[3] = p->spec.work;
	p->ctx.x[4] = p->spec.seed;
	p->ctx.x[5] = p->spec.write_pct;
	p->ctx.elr = (u64)user_main;
	p->ctx.spsr = 0;
	p->ctx.sp_el0 = (u64)user_stacks[p->idx] + USTACK_SIZE;
	p->state = P_RUNNABLE;
	p->res->kill_esr = 0;
	p->res->progress = 0;
	p->res->checksum = p->spec.seed;	/* every workload's checksum after 0 units */
	p->res->state = APF_PROC_RUNNING;
}

static void end_proc(struct cpu *c, struct proc *p, u32 state, u32 esr)
{
	p->state = P_ENDED;
	p->res->kill_esr = esr;
	barrier_st();
	p->res->state = state;
	c->alive--;
}

void irq_dispatch(struct cpu *c)
{
	for (;;) {
		u32 intid = gic_ack();
		if (intid >= GIC_SPURIOUS)
			return;
		if (intid == PPI_TIMER_VIRT) {
			timer_rearm();
			c->need_resched = 1;
		} else if (intid == c->apf.ppi) {
			if (c->apf.on)
				apf_handle_irq(c);
		} else {
			kprintf("cpu%u: unexpected interrupt %u\n", c->id, intid);
		}
		gic_eoi(intid);
	}
}

/*
 * Saves the current process (if any) from the frame and loads the next runnable
 * one into it, idling in WFI until there is one. Ends the vCPU when none is left.
 */
static void schedule(struct cpu *c, struct frame *f)
{
	struct proc *prev = c->cur;
	if (prev && prev->state != P_ENDED)
		prev->ctx = *f;
	c->cur = NULL;
	c->need_resched = 0;
	for (;;) {
		if (stop_requested())
			for (unsigned i = 0; i < c->nr_procs; i++)
				if (c->procs[i]->state != P_ENDED)
					end_proc(c, c->procs[i], APF_PROC_DONE, 0);
		if (!c->alive)
			cpu_finish(c);
		for (unsigned k = 1; k <= c->nr_procs; k++) {
			unsigned i = (c->rr + k) % c->nr_procs;
			struct proc *p = c->procs[i];
			if (p->state == P_RUNNABLE) {
				c->rr = i;
				c->cur = p;
				*f = p->ctx;
				return;
			}
		}
		wfi();		/* wakes on a pending interrupt even with IRQs masked */
		irq_dispatch(c);
	}
}

void sched_first(struct frame *f)
{
	struct cpu *c = this_cpu();
	c->cur = NULL;
	schedule(c, f);
}

static u64 sys_write(u64 text, u64 len)
{
	u64 ram_end = config.ram_base + config.ram_size;
	if (len > SYS_WRITE_MAX || text < config.ram_base || text > ram_end - len)
		return (u64)-1;
	console_write((const char *)text, len);
	return len;
}

static void syscall(struct cpu *c, struct frame *f)
{
	struct proc *p = c->cur;
	switch (f->x[8]) {
	case SYS_YIELD:
		c->need_resched = 1;
		f->x[0] = 0;
		break;
	case SYS_EXIT:
		kprintf("APF-EXIT proc=%u\n", p->idx);
		end_proc(c, p, APF_PROC_DONE, 0);
		break;
	case SYS_PROGRESS:
		p->res->checksum = f->x[1];
		barrier_st();
		p->res->progress = f->x[0];
		f->x[0] = 0;
		break;
	case SYS_WRITE:
		f->x[0] = sys_write(f->x[0], f->x[1]);
		break;
	default:
		f->x[0] = (u64)-1;
	}
}

/*
 * Any EL0 exception but SVC ends the process: a synchronous external abort
 * (DFSC 0x10: the host could not read the page) and every other fault alike.
 */
static void el0_sync(struct cpu *c, struct frame *f)
{
	u64 esr = read_sysreg(esr_el1);
	if (ESR_EC(esr) == ESR_EC_SVC64) {
		syscall(c, f);
		return;
	}
	kprintf("APF-KILL proc=%u esr=0x%lx far=0x%lx elr=0x%lx\n", c->cur->idx, esr,
		read_sysreg(far_el1), f->elr);
	end_proc(c, c->cur, APF_PROC_KILLED, (u32)esr);
}

/*
 * An HVC the platform does not implement is UNDEFINED at EL1 (QEMU without EL2):
 * answer it with SMCCC NOT_SUPPORTED, so the same image runs without apf.
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

static noreturn void unexpected(struct cpu *c, struct frame *f, unsigned vec)
{
	kprintf("APF-UNEXPECTED cpu=%u vector=0x%x esr=0x%lx elr=0x%lx far=0x%lx "
		"spsr=0x%lx\n", c->id, vec * 0x80, read_sysreg(esr_el1), f->elr,
		read_sysreg(far_el1), f->spsr);
	park();
}

void trap(struct frame *f, unsigned vec)
{
	struct cpu *c = this_cpu();
	switch (vec) {
	case VEC_EL1H_SYNC:
		if (undef_hvc(f))
			return;
		unexpected(c, f, vec);
	case VEC_EL0_SYNC:
		el0_sync(c, f);
		break;
	case VEC_EL0_IRQ:	/* also where SDEI COMPLETE_AND_RESUME lands */
		irq_dispatch(c);
		break;
	default:
		unexpected(c, f, vec);
	}
	if (c->need_resched || c->cur->state != P_RUNNABLE)
		schedule(c, f);
}
