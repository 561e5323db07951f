/*
 * The apf guest kernel: declarations shared by its parts.
 *
 * One image, entered at 0x40080000 in EL1h with the MMU off (flat physical
 * addressing, every access Device memory). The kernel always runs with DAIF
 * masked; interrupts are taken only from EL0 or polled by the idle loop, so
 * nothing in the kernel is ever re-entered.
 */
#ifndef APF_KERNEL_H
#define APF_KERNEL_H

#include <stdint.h>
#include <stddef.h>
#include "abi.h"

typedef uint8_t u8;
typedef uint32_t u32;
typedef uint64_t u64;
typedef int64_t s64;

#define MAX_CPUS 8
#define MAX_PROCS APF_BOOT_MAX_PROCS
#define KSTACK_SIZE 16384	/* per-CPU kernel stack (entry.S knows it too) */
#define USTACK_SIZE 8192	/* per-process EL0 stack */
#define TIMER_HZ 100		/* scheduler tick */

#define noreturn __attribute__((noreturn))
#define barrier_st() __asm__ volatile("dmb ishst" ::: "memory")
#define barrier_ld() __asm__ volatile("dmb ishld" ::: "memory")
#define barrier() __asm__ volatile("dsb sy" ::: "memory")

#define read_sysreg(r) ({ u64 __v; __asm__ volatile("mrs %0, " #r : "=r"(__v)); __v; })
#define write_sysreg(r, v) __asm__ volatile("msr " #r ", %0" :: "r"((u64)(v)) : "memory")
#define isb() __asm__ volatile("isb" ::: "memory")
#define wfi() __asm__ volatile("wfi" ::: "memory")

static inline u32 mmio_read32(u64 addr) { return *(volatile u32 *)addr; }
static inline void mmio_write32(u64 addr, u32 v) { *(volatile u32 *)addr = v; }

/* --- Registers saved on every exception (entry.S lays it out) --- */
struct frame {
	u64 x[31];
	u64 sp_el0;
	u64 elr;
	u64 spsr;
};
_Static_assert(sizeof(struct frame) == 272, "entry.S FRAME_SIZE");

/* Exception vector numbers: vector offset / 0x80. */
enum vector {
	VEC_EL1H_SYNC = 4,
	VEC_EL0_SYNC = 8,
	VEC_EL0_IRQ = 9,
};

/* --- Processes --- */
enum proc_state { P_RUNNABLE, P_ASLEEP, P_ENDED };

struct proc {
	struct frame ctx;		/* EL0 registers while not running */
	unsigned idx;			/* index in the boot block */
	enum proc_state state;
	struct apf_proc_spec spec;
	struct apf_proc_result *res;	/* boot block results[idx], or a local copy */
	u64 mem_base;			/* the working set */
};

/* --- APF driver state of one vCPU --- */
struct apf_sleeper {
	u32 token;			/* 0 = free entry */
	struct proc *proc;
};

struct apf_cpu {
	int on;
	int separate_ready;
	u32 event;			/* SDEI event for page-not-present */
	u32 ppi;			/* INTID for page-ready */
	unsigned nr_sleepers;		/* 2 x SLOTS, capped at the table */
	struct apf_sleeper sleepers[2 * APF_ASYNC_PF_PER_VCPU];
};

/* --- Per-vCPU data, indexed by MPIDR Aff0, reached through TPIDR_EL1 --- */
struct cpu {
	struct apf_shared_data apf_block __attribute__((aligned(APF_SHARED_BLOCK_ALIGN)));
	unsigned id;
	u64 stack_top;
	struct proc *procs[MAX_PROCS];	/* pinned here */
	unsigned nr_procs;
	unsigned alive;			/* procs not ended */
	unsigned rr;			/* round-robin position */
	struct proc *cur;		/* running on this vCPU; NULL when idle */
	int need_resched;
	volatile int offline;		/* set last, read by vCPU 0 at shutdown */
	struct apf_cpu apf;
};

extern struct cpu cpus[MAX_CPUS];

static inline struct cpu *this_cpu(void)
{
	return (struct cpu *)read_sysreg(tpidr_el1);
}

/* --- Run configuration (main.c) --- */
struct config {
	int from_boot_block;
	u32 nr_vcpus;
	u32 nr_procs;
	u64 ram_base, ram_size;
};
extern struct config config;
extern struct proc procs[MAX_PROCS];
int stop_requested(void);
noreturn void cpu_finish(struct cpu *c);

/* --- Console (console.c) --- */
void kprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void console_write(const char *s, u64 len);

/* --- GICv3 and the virtual timer (gic.c) --- */
#define GIC_SPURIOUS 1020	/* INTIDs from here up are not interrupts */
void gic_dist_init(void);
int gic_cpu_init(unsigned cpu);
void gic_ppi_enable(unsigned cpu, u32 intid, int enable);
u32 gic_ack(void);
void gic_eoi(u32 intid);
void timer_start(void);
void timer_rearm(void);
void timer_stop(void);

/* --- Firmware calls over HVC (entry.S) --- */
struct smccc_res { u64 a[4]; };
void smccc_hvc(struct smccc_res *res, u64 fn, u64 a1, u64 a2, u64 a3, u64 a4, u64 a5);
static inline s64 hvc(u64 fn, u64 a1, u64 a2, u64 a3)
{
	struct smccc_res r;
	smccc_hvc(&r, fn, a1, a2, a3, 0, 0);
	return (s64)r.a[0];
}

/* --- Entry points in entry.S --- */
extern char vectors[], secondary_entry[], sdei_entry[];
noreturn void enter_scheduler(u64 stack_top);
noreturn void park(void);

/* --- System calls: svc #0, number in x8, arguments in x0.., result in x0 --- */
enum syscall {
	SYS_YIELD = 0,		/* () */
	SYS_EXIT = 1,		/* () */
	SYS_PROGRESS = 2,	/* (units done, checksum after them) */
	SYS_WRITE = 3,		/* (text, length) to the console */
};

/* --- Scheduler (sched.c) --- */
void trap(struct frame *f, unsigned vec);
void irq_dispatch(struct cpu *c);
void sched_first(struct frame *f);
void proc_init(struct proc *p);

/* --- APF driver (apf.c) --- */
void apf_cpu_init(struct cpu *c);
void apf_cpu_offline(struct cpu *c);
void apf_handle_irq(struct cpu *c);
/* How the SDEI handler finishes: returned in x0/x1 to entry.S, which makes the call. */
struct sdei_finish { u64 fn; u64 resume; };
struct sdei_finish apf_sdei_handler(u64 event, u64 arg, u64 pc, u64 pstate);

/* --- EL0 side (user.c) --- */
noreturn void user_main(u64 kind, u64 base, u64 bytes, u64 work, u64 seed, u64 write_pct);

/* --- Freestanding helpers (lib.c); gcc may call these for struct copies --- */
void *memcpy(void *dst, const void *src, size_t n);
void *memset(void *dst, int c, size_t n);

#endif
