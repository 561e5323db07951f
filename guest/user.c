/*
 * The workloads as EL0 processes. Each keeps a running checksum over the values it
 * reads and computes, so a host can recompute the checksum after any number of
 * units by replaying the same steps (apf_vm::workload mirrors workloads.h, the
 * algorithms this file shares with the Linux init).
 *
 * All report progress every WORKLOAD_REPORT_EVERY units and at the end. A process
 * with work == 0 runs until the kernel stops it.
 */
#include "kernel.h"
#include "workloads.h"

/* --- System calls --- */
static u64 syscall2(u64 nr, u64 a0, u64 a1)
{
	register u64 x8 __asm__("x8") = nr;
	register u64 x0 __asm__("x0") = a0;
	register u64 x1 __asm__("x1") = a1;
	__asm__ volatile("svc #0" : "+r"(x0) : "r"(x8), "r"(x1) : "memory");
	return x0;
}

static void sys_progress(u64 units, u64 checksum) { syscall2(SYS_PROGRESS, units, checksum); }
static void sys_print(const char *s)
{
	u64 n = 0;
	while (s[n])
		n++;
	syscall2(SYS_WRITE, (u64)s, n);
}
static noreturn void sys_exit(void)
{
	syscall2(SYS_EXIT, 0, 0);
	for (;;)
		;
}

noreturn void user_main(u64 kind, u64 base, u64 bytes, u64 work, u64 seed, u64 write_pct)
{
	static const char *const ready[] = { "", "scan: ready\n", "calc: ready\n",
					     "kv: ready\n", "build: ready\n" };
	struct workload w;
	workload_start(&w, kind, (u64 *)base, bytes, seed, write_pct);
	sys_print(ready[kind]);

	for (u64 done = 0; work == 0 || done < work;) {
		workload_step(&w);
		done++;
		if (done % WORKLOAD_REPORT_EVERY == 0 || done == work)
			sys_progress(done, w.checksum);
	}
	sys_exit();
}
