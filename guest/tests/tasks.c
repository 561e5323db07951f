/*
 * EL0 tasks: a per-vCPU round-robin over frames, like the guest kernel's
 * scheduler but with no timer. A task runs until it parks (SDEI not-present),
 * waits at the barrier, yields or exits; an interrupt never preempts it.
 * Each vCPU touches only its own tasks, always with DAIF masked: no locks.
 */
#include "rt.h"

#define ESR_EC(esr) ((u32)((esr) >> ESR_EC_SHIFT) & 0x3f)
#define VEC_EL0_IRQ_OFFSET 0x480	/* IRQ from lower EL, AArch64 */

struct sched {
	struct task tasks[MAX_TASKS];
	unsigned nr, alive, at_barrier, rr;
	struct task *cur;		/* the task in EL0; NULL while the kernel idles */
	const struct sched_ops *ops;
};

static struct sched scheds[TASK_CPUS];
static u8 stacks[TASK_CPUS][MAX_TASKS][TASK_STACK] __attribute__((aligned(16)));

static struct sched *sched_of(unsigned cpu)
{
	if (cpu >= TASK_CPUS) {
		kprintf("FAIL tasks_cpu got=0x%x want=0x%x\n", cpu, TASK_CPUS - 1);
		finish();
	}
	return &scheds[cpu];
}

void task_create(unsigned cpu, void (*fn)(u64), u64 arg)
{
	struct sched *s = sched_of(cpu);
	if (s->nr == MAX_TASKS) {
		kprintf("FAIL task_create got=0x%x want=0x%x\n", s->nr + 1, MAX_TASKS);
		finish();
	}
	struct task *t = &s->tasks[s->nr];
	memset(t, 0, sizeof(*t));
	t->ctx.x[0] = arg;
	t->ctx.elr = (u64)fn;
	t->ctx.spsr = PSTATE_EL0T;	/* EL0t, DAIF clear */
	t->ctx.sp_el0 = (u64)stacks[cpu][s->nr] + TASK_STACK;
	t->state = T_RUNNABLE;
	s->nr++;
	s->alive++;
}

struct task *task_current(unsigned cpu)
{
	return sched_of(cpu)->cur;
}

unsigned tasks_parked(unsigned cpu)
{
	struct sched *s = sched_of(cpu);
	unsigned n = 0;
	for (unsigned i = 0; i < s->nr; i++)
		n += s->tasks[i].state == T_PARKED;
	return n;
}

struct sdei_finish park_current(unsigned cpu, u32 token)
{
	struct task *t = sched_of(cpu)->cur;
	t->state = T_PARKED;
	t->token = token;
	/* As Linux's SDEI client: resume as if an IRQ was taken from EL0. */
	struct sdei_finish resume = { SDEI_EVENT_COMPLETE_AND_RESUME,
				      read_sysreg(vbar_el1) + VEC_EL0_IRQ_OFFSET };
	return resume;
}

unsigned task_wake(unsigned cpu, u32 token)
{
	struct sched *s = sched_of(cpu);
	unsigned n = 0;
	for (unsigned i = 0; i < s->nr; i++) {
		struct task *t = &s->tasks[i];
		if (t->state == T_PARKED && (token == APF_TOKEN_WAKE_ALL || t->token == token)) {
			t->state = T_RUNNABLE;
			t->token = 0;
			n++;
		}
	}
	return n;
}

/* Everyone alive is at the barrier: let them all go. */
static void barrier_release(unsigned cpu, struct sched *s)
{
	if (!s->at_barrier || s->at_barrier != s->alive)
		return;
	if (s->ops->on_barrier)
		s->ops->on_barrier(cpu);
	for (unsigned i = 0; i < s->nr; i++)
		if (s->tasks[i].state == T_BARRIER)
			s->tasks[i].state = T_RUNNABLE;
	s->at_barrier = 0;
}

/*
 * Saves the current task from the frame and loads the next runnable one after
 * it into the frame, idling until there is one.
 */
static void schedule(unsigned cpu, struct frame *f)
{
	struct sched *s = sched_of(cpu);
	if (s->cur)
		s->cur->ctx = *f;
	s->cur = NULL;
	for (;;) {
		if (!s->alive)
			s->ops->on_done(cpu);
		for (unsigned k = 1; k <= s->nr; k++) {
			unsigned i = (s->rr + k) % s->nr;
			if (s->tasks[i].state == T_RUNNABLE) {
				s->rr = i;
				s->cur = &s->tasks[i];
				*f = s->cur->ctx;
				return;
			}
		}
		if (s->ops->on_idle && s->ops->on_idle(cpu))
			continue;
		wfi();
		irq_poll(cpu);
	}
}

/* entry.S's enter_scheduler: the first task into the frame on the stack top. */
void sched_first(struct frame *f)
{
	schedule(cpu_id(), f);
}

noreturn void tasks_run(unsigned cpu, const struct sched_ops *ops)
{
	struct sched *s = sched_of(cpu);
	s->ops = ops;
	s->rr = s->nr ? s->nr - 1 : 0;	/* task 0 runs first */
	enter_scheduler(kernel_stack_top[cpu]);
}

static void syscall(unsigned cpu, struct sched *s, struct frame *f)
{
	struct task *t = s->cur;
	f->x[0] = 0;
	switch (f->x[8]) {
	case SYS_EXIT:
		t->state = T_ENDED;
		s->alive--;
		barrier_release(cpu, s);
		break;
	case SYS_BARRIER:
		t->state = T_BARRIER;
		s->at_barrier++;
		barrier_release(cpu, s);
		break;
	case SYS_YIELD:
		break;
	default:
		kprintf("FAIL syscall got=0x%lx want=0x0\n", f->x[8]);
		finish();
	}
	schedule(cpu, f);
}

void tasks_el0_sync(struct frame *f)
{
	unsigned cpu = cpu_id();
	struct sched *s = sched_of(cpu);
	u64 esr = read_sysreg(esr_el1);
	if (ESR_EC(esr) == ESR_EC_SVC64 && s->cur) {
		syscall(cpu, s, f);
		return;
	}
	kprintf("FAIL el0_fault got=0x%lx want=0x%x far=0x%lx elr=0x%lx\n", esr,
		ESR_EC_SVC64 << ESR_EC_SHIFT, read_sysreg(far_el1), f->elr);
	finish();
}

/* A task keeps the vCPU through interrupts unless it parked meanwhile. */
void tasks_el0_irq(struct frame *f)
{
	unsigned cpu = cpu_id();
	struct sched *s = sched_of(cpu);
	if (s->ops->on_irq_entry)
		s->ops->on_irq_entry(cpu, f);
	irq_poll(cpu);
	if (!s->cur || s->cur->state != T_RUNNABLE)
		schedule(cpu, f);
}
