/*
 * Batch instruction-semantics oracle for apf-cpu's differential test.
 *
 * Built with `aarch64-linux-gnu-gcc -static` and run under `qemu-aarch64`. It
 * reads a batch of cases on stdin: each gives a few instruction words and the
 * registers, SP, NZCV and TPIDR_EL0 to run them with. Every case runs inside
 * signal handling: a handler installs the case's state into the signal frame
 * and returns into it; the words sit in an executable page filled with BRK, so
 * whatever happens next (finishing the words, branching anywhere, faulting,
 * UNDEF) ends in a signal whose frame holds the resulting state. The handler
 * records it, together with the bytes of the data region that changed, and
 * installs the next case. A case still running after two CPU seconds is stopped
 * by SIGVTALRM and reported as such. Results go to stdout.
 *
 * Input:  header { u64 magic, n_cases, data_base, data_len, code_base }
 *         u8 pattern[data_len]  (the data region's contents before every case)
 *         n_cases x case { u32 n_words, u32 words[4], u32 pad,
 *                          u64 x[31], sp, nzcv, tpidr }
 * Output: n_cases x result { u32 signo, u32 n_diffs, u64 x[31], sp, pc, pstate,
 *                            tpidr, fault_addr } then n_diffs x { u32 offset, u32 byte }
 */
#define _GNU_SOURCE
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/time.h>
#include <ucontext.h>
#include <unistd.h>

#define MAGIC 0x41504644494646ULL /* "APFDIFF" */
#define MAX_WORDS 4
#define MAX_DIFFS 256
#define BRK0 0xd4200000u
#define SLOT_OFFSET 2048

struct header {
	uint64_t magic, n_cases, data_base, data_len, code_base;
};

struct test_case {
	uint32_t n_words;
	uint32_t words[MAX_WORDS];
	uint32_t pad;
	uint64_t x[31], sp, nzcv, tpidr;
};

struct result {
	uint32_t signo, n_diffs;
	uint64_t x[31], sp, pc, pstate, tpidr, fault_addr;
};

_Static_assert(sizeof(struct header) == 40, "header layout");
_Static_assert(sizeof(struct test_case) == 24 + 34 * 8, "case layout");
_Static_assert(sizeof(struct result) == 8 + 36 * 8, "result layout");

static struct header hdr;
static uint8_t *pattern;
static uint8_t *data;
static uint32_t *code;
static struct test_case *cases;
static uint8_t *out;
static size_t out_len;
static uint64_t next_case;
static int running;
static uint64_t host_tpidr;
static mcontext_t main_context;

static void die(const char *what)
{
	perror(what);
	exit(2);
}

static void read_all(void *buf, size_t len)
{
	uint8_t *p = buf;
	while (len) {
		ssize_t n = read(0, p, len);
		if (n <= 0)
			die("read");
		p += n;
		len -= (size_t)n;
	}
}

static void write_all(const void *buf, size_t len)
{
	const uint8_t *p = buf;
	while (len) {
		ssize_t n = write(1, p, len);
		if (n <= 0)
			die("write");
		p += n;
		len -= (size_t)n;
	}
}

static void emit(const void *p, size_t len)
{
	memcpy(out + out_len, p, len);
	out_len += len;
}

static void record(int sig, siginfo_t *si, const mcontext_t *mc, uint64_t tpidr)
{
	struct result r;
	memset(&r, 0, sizeof r);
	r.signo = (uint32_t)sig;
	memcpy(r.x, mc->regs, sizeof r.x);
	r.sp = mc->sp;
	r.pc = mc->pc;
	r.pstate = mc->pstate;
	r.tpidr = tpidr;
	r.fault_addr = (uint64_t)(uintptr_t)si->si_addr;
	uint32_t diffs[MAX_DIFFS][2];
	uint32_t n = 0;
	if (memcmp(data, pattern, hdr.data_len) != 0) {
		for (uint64_t i = 0; i < hdr.data_len; i++) {
			if (data[i] != pattern[i]) {
				if (n < MAX_DIFFS) {
					diffs[n][0] = (uint32_t)i;
					diffs[n][1] = data[i];
					n++;
				}
				data[i] = pattern[i];
			}
		}
	}
	r.n_diffs = n;
	emit(&r, sizeof r);
	emit(diffs, n * sizeof diffs[0]);
}

static void install(mcontext_t *mc, const struct test_case *c)
{
	uint32_t *slot = code + SLOT_OFFSET / 4;
	for (uint32_t i = 0; i < MAX_WORDS; i++)
		slot[i] = i < c->n_words ? c->words[i] : BRK0;
	__builtin___clear_cache((char *)slot, (char *)(slot + MAX_WORDS));
	memcpy(mc->regs, c->x, sizeof c->x);
	mc->sp = c->sp;
	mc->pc = (uint64_t)(uintptr_t)slot;
	mc->pstate = c->nzcv & 0xF0000000u; /* EL0t, nothing masked */
}

/* A case that never reaches a signal of its own (a loop) ends with SIGVTALRM
 * after two seconds of CPU time (not wall time: a busy machine is no loop). */
static void arm_watchdog(long seconds)
{
	struct itimerval it = { .it_interval = { 0, 0 }, .it_value = { seconds, 0 } };
	setitimer(ITIMER_VIRTUAL, &it, NULL);
}

static void handler(int sig, siginfo_t *si, void *ctx)
{
	ucontext_t *uc = ctx;
	uint64_t test_tpidr;
	__asm__ volatile("mrs %0, tpidr_el0" : "=r"(test_tpidr));
	__asm__ volatile("msr tpidr_el0, %0" ::"r"(host_tpidr));
	if (running) {
		record(sig, si, &uc->uc_mcontext, test_tpidr);
	} else {
		main_context = uc->uc_mcontext;
		main_context.pc += 4; /* past the BRK that started the batch */
		running = 1;
	}
	if (next_case < hdr.n_cases) {
		const struct test_case *c = &cases[next_case++];
		install(&uc->uc_mcontext, c);
		arm_watchdog(2);
		__asm__ volatile("msr tpidr_el0, %0" ::"r"(c->tpidr));
	} else {
		arm_watchdog(0);
		running = 0;
		uint64_t pc = main_context.pc, sp = main_context.sp, ps = main_context.pstate;
		memcpy(uc->uc_mcontext.regs, main_context.regs, sizeof main_context.regs);
		uc->uc_mcontext.pc = pc;
		uc->uc_mcontext.sp = sp;
		uc->uc_mcontext.pstate = ps;
	}
}

int main(void)
{
	read_all(&hdr, sizeof hdr);
	if (hdr.magic != MAGIC) {
		fprintf(stderr, "bad magic %#llx\n", (unsigned long long)hdr.magic);
		return 2;
	}
	pattern = malloc(hdr.data_len);
	cases = malloc(hdr.n_cases * sizeof *cases);
	out = malloc(hdr.n_cases * (sizeof(struct result) + MAX_DIFFS * 8));
	if (!pattern || !cases || !out)
		die("malloc");
	read_all(pattern, hdr.data_len);
	read_all(cases, hdr.n_cases * sizeof *cases);

	data = mmap((void *)(uintptr_t)hdr.data_base, hdr.data_len, PROT_READ | PROT_WRITE,
		    MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
	if (data != (void *)(uintptr_t)hdr.data_base)
		die("mmap data");
	memcpy(data, pattern, hdr.data_len);
	code = mmap((void *)(uintptr_t)hdr.code_base, 4096, PROT_READ | PROT_WRITE | PROT_EXEC,
		    MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
	if (code != (void *)(uintptr_t)hdr.code_base)
		die("mmap code");
	for (int i = 0; i < 1024; i++)
		code[i] = BRK0;

	stack_t ss = { .ss_sp = malloc(1 << 16), .ss_size = 1 << 16, .ss_flags = 0 };
	if (!ss.ss_sp || sigaltstack(&ss, NULL) != 0)
		die("sigaltstack");
	struct sigaction sa;
	memset(&sa, 0, sizeof sa);
	sa.sa_sigaction = handler;
	sa.sa_flags = SA_SIGINFO | SA_ONSTACK | SA_NODEFER;
	sigemptyset(&sa.sa_mask);
	int sigs[] = { SIGTRAP, SIGILL, SIGSEGV, SIGBUS, SIGFPE, SIGVTALRM };
	for (unsigned i = 0; i < sizeof sigs / sizeof sigs[0]; i++)
		if (sigaction(sigs[i], &sa, NULL) != 0)
			die("sigaction");

	__asm__ volatile("mrs %0, tpidr_el0" : "=r"(host_tpidr));
	__asm__ volatile("brk #0" ::: "memory");

	write_all(out, out_len);
	return 0;
}
