/*
 * The apf module's hostile cases, run by init for `apf.case=<name>` on the kernel
 * command line (README.md beside this file lists them, what the module and the
 * host do, and the counters that prove it).
 *
 * Each case starts "verifiers": children that write a pattern into every page of
 * their own anonymous memory and check it on the next pass, so a page lost or
 * mixed up anywhere between the guest and the host's store fails the case (the
 * kill case's "readers" check memory init wrote, see there). Then it
 * does the hostile thing while tasks sleep on pages, and prints one line:
 *   apf-case <name> ok <what happened>
 *   apf-case <name> failed <why>
 * Waits are bounded in guest time (CLOCK_MONOTONIC), so a case that cannot
 * happen fails rather than hangs.
 */
#include "cases.h"
#include "line.h"

#define PAGE 4096ull
#define MIB (1ull << 20)
#define SECOND 1000000000ull
#define MAX_WORKERS 256

/* Exit statuses of a verifier. */
#define VERIFY_OK 0
#define VERIFY_MISMATCH 2
#define VERIFY_NO_MEMORY 3

static u64 mix(u64 seed, u64 page, u64 pass)
{
	u64 x = seed ^ (page * 0x9e3779b97f4a7c15ull) ^ (pass << 56);
	x ^= x >> 31;
	x *= 0xbf58476d1ce4e5b9ull;
	return x ^ (x >> 29);
}

/*
 * A verifier: `passes` passes over `bytes` of fresh memory. Each pass checks the
 * first and last word of every page against the previous pass's and writes its
 * own. cpu < 0: no pinning. The gate page holds: [0] 1 = go; [1] verifiers done
 * with their first pass; [2] verifiers started.
 */
static noreturn void verifier(u64 seed, u64 bytes, u64 passes, s64 cpu, volatile u64 *gate)
{
	/* Every verifier starts at once: their memory must be in use together. */
	/* Acquire: what the parent wrote before the go (gate[2]) is seen after it. */
	while (!__atomic_load_n(&gate[0], __ATOMIC_ACQUIRE))
		sys_sched_yield();
	if (cpu >= 0) {
		u64 mask[CPU_MASK_WORDS] = { 0 };
		mask[(u64)cpu / 64] = 1ull << ((u64)cpu % 64);
		sys_sched_setaffinity(mask);
	}
	s64 addr = sys_mmap_anonymous(bytes, 0);
	if (addr < 0 && addr > -4096) {
		__atomic_fetch_add(&gate[1], 1, __ATOMIC_SEQ_CST);	/* nobody waits for us */
		sys_exit_group(VERIFY_NO_MEMORY);
	}
	u64 *mem = (u64 *)addr;
	u64 words = PAGE / 8;
	for (u64 pass = 0; pass < passes; pass++) {
		for (u64 page = 0; page < bytes / PAGE; page++) {
			volatile u64 *w = mem + page * words;
			if (pass > 0) {
				u64 want = mix(seed, page, pass - 1);
				if (w[0] != want || w[words - 1] != ~want)
					sys_exit_group(VERIFY_MISMATCH);
			}
			u64 next = mix(seed, page, pass);
			w[0] = next;
			w[words - 1] = ~next;
		}
		/*
		 * Whatever the scheduler does, no second pass starts before every
		 * verifier has written its memory once: with more memory in all than
		 * the host's budget, the second passes read pages the host evicted.
		 */
		if (pass == 0) {
			__atomic_fetch_add(&gate[1], 1, __ATOMIC_SEQ_CST);
			while (gate[1] < gate[2])
				sys_sched_yield();
		}
	}
	sys_exit_group(VERIFY_OK);
}

struct workers {
	volatile u64 *gate;	/* shared: 1 = go */
	s64 pid[MAX_WORKERS];
	u64 n;
	u64 ok, mismatched, no_memory, signalled, other;
};

/*
 * Starts n verifiers, which begin together once all exist and start their second
 * pass only once all have done the first; -1 if one cannot.
 */
static int spawn(struct workers *w, u64 n, u64 bytes, u64 passes, s64 cpu)
{
	s64 gate = sys_mmap_anonymous(PAGE, 1);
	if (gate < 0 && gate > -4096)
		return -1;
	w->gate = (volatile u64 *)gate;
	int err = 0;
	for (u64 i = 0; i < n && w->n < MAX_WORKERS; i++) {
		s64 pid = sys_fork();
		if (pid == 0)
			verifier(0xa9f0000000000000ull + w->n, bytes, passes, cpu, w->gate);
		if (pid < 0) {
			err = -1;
			break;
		}
		w->pid[w->n++] = pid;
	}
	w->gate[2] = w->n;	/* the ones that exist: a failed fork must not strand them */
	/* Release: gate[2] is visible before the go. On error too: the ones that exist must end. */
	__atomic_store_n(&w->gate[0], 1, __ATOMIC_RELEASE);
	return err;
}


static void record(struct workers *w, int status)
{
	int signal = status & 0x7f;
	int code = (status >> 8) & 0xff;
	if (signal)
		w->signalled++;
	else if (code == VERIFY_OK)
		w->ok++;
	else if (code == VERIFY_MISMATCH)
		w->mismatched++;
	else if (code == VERIFY_NO_MEMORY)
		w->no_memory++;
	else
		w->other++;
}

/* Waits for every worker still running. */
static void reap(struct workers *w)
{
	for (u64 i = 0; i < w->n; i++) {
		if (!w->pid[i])
			continue;
		int status = 0;
		s64 r;
		do
			r = sys_wait4_pid(w->pid[i], &status);
		while (r == -EINTR);
		if (r == w->pid[i])
			record(w, status);
		else
			w->other++;
		w->pid[i] = 0;
	}
}

/* /sys/kernel/apf/<name> as a number; -1 when it cannot be read. */
static s64 counter(const char *name)
{
	char path[64] = "/sys/kernel/apf/";
	u64 n = 16;
	while (*name && n < sizeof(path) - 1)
		path[n++] = *name++;
	path[n] = 0;
	s64 fd = sys_open(path, O_RDONLY);
	if (fd < 0)
		return -1;
	char buf[32];
	s64 len = sys_read((int)fd, buf, sizeof(buf));
	sys_close((int)fd);
	if (len <= 0)
		return -1;
	s64 v = 0;
	for (s64 i = 0; i < len && buf[i] >= '0' && buf[i] <= '9'; i++)
		v = v * 10 + (buf[i] - '0');
	return v;
}

/* Polls counter `name` until it reaches `at_least`; its value, or -1 at the deadline. */
static s64 wait_counter(const char *name, s64 at_least, u64 timeout_ns)
{
	u64 deadline = monotonic_ns() + timeout_ns;
	for (;;) {
		s64 v = counter(name);
		if (v >= at_least)
			return v;
		if (monotonic_ns() >= deadline)
			return -1;
		sys_sched_yield();
	}
}

static s64 write_text(const char *path, const char *text)
{
	s64 fd = sys_open(path, O_WRONLY);
	if (fd < 0)
		return fd;
	u64 len = 0;
	while (text[len])
		len++;
	s64 r = sys_write((int)fd, text, len);
	sys_close((int)fd);
	return r < 0 ? r : 0;
}

/* --- Reporting --- */

static void begin(struct line *l, const char *name, const char *verdict)
{
	l->len = 0;
	put_str(l, "apf-case ");
	put_str(l, name);
	put_str(l, " ");
	put_str(l, verdict);
	put_str(l, " ");
}

static int failed(const char *name, const char *why, s64 value)
{
	struct line l;
	begin(&l, name, "failed");
	put_str(&l, why);
	put_str(&l, " ");
	put_signed(&l, value);
	emit(&l);
	return 1;
}

/* Every worker ended with its data intact; else a failure line. */
static int workers_fine(const char *name, const struct workers *w)
{
	if (w->mismatched)
		return failed(name, "verifiers that found another page's or a lost page's data:",
			      (s64)w->mismatched);
	if (w->no_memory || w->signalled || w->other)
		return failed(name, "verifiers that did not finish:",
			      (s64)(w->no_memory + w->signalled + w->other));
	return 0;
}

/* Ends a case's verifiers early, on a failure: SIGKILL, then reaped. */
static void abandon(struct workers *w)
{
	for (u64 i = 0; i < w->n; i++)
		if (w->pid[i])
			sys_kill(w->pid[i], SIGKILL);
	reap(w);
}

/*
 * Starts n verifiers (see spawn; the second passes wait for every first
 * one, so they all read evicted pages at the same time) and waits until at least
 * `sleepers` tasks sleep on pages at once; returns how many then, or -1 after the
 * failure line (the verifiers abandoned).
 */
static s64 start_sleeping(const char *name, struct workers *w, u64 n, u64 bytes, u64 passes,
			  s64 cpu, s64 sleepers)
{
	if (spawn(w, n, bytes, passes, cpu)) {
		abandon(w);
		failed(name, "fork failed after workers:", (s64)w->n);
		return -1;
	}
	s64 seen = wait_counter("sleepers", sleepers, 60 * SECOND);
	if (seen < 0) {
		abandon(w);
		failed(name, "too few tasks slept on pages at once; sleepers_max", counter("sleepers_max"));
	}
	return seen;
}

/* --- The cases --- */

/*
 * cpu1 goes offline while tasks sleep on pages it was told about, and comes back.
 * The module turns APF off on cpu1 and wakes its sleepers; the verifiers finish
 * elsewhere. No page-ready for a token from before may reach the module after.
 */
static int case_hotplug(const char *name)
{
	struct workers w = { 0 };
	s64 unknown = counter("ready_unknown");
	/* 128 MiB over eight verifiers, twice the budget: the second pass faults on
	 * most pages, so once four sleep at once, cpu1 nearly always has sleepers. */
	if (start_sleeping(name, &w, 8, 16 * MIB, 2, 1, 4) < 0)
		return 1;
	s64 r = write_text("/sys/devices/system/cpu/cpu1/online", "0");
	s64 woken = counter("offline_wakes");
	if (r == 0)
		r = write_text("/sys/devices/system/cpu/cpu1/online", "1");
	if (r) {
		abandon(&w);
		return failed(name, "offlining or onlining cpu1 failed:", r);
	}
	reap(&w);
	if (workers_fine(name, &w))
		return 1;
	s64 stale = counter("ready_unknown") - unknown;
	if (stale)
		return failed(name, "page-readies for tokens the module did not know:", stale);
	struct line l;
	begin(&l, name, "ok");
	put_str(&l, "offline woke ");
	put_signed(&l, woken);
	put_str(&l, " sleepers; ");
	put_dec(&l, w.ok);
	put_str(&l, " verifiers intact; no stale page-ready");
	emit(&l);
	return 0;
}

/*
 * A reader: checks, round and round, the pattern case_kill wrote into every page
 * of the shared `mem`, writing nothing, so no page it leaves behind needs the
 * host's store to evict it. Exits only on a mismatch: the kill case ends it.
 */
static noreturn void reader(u64 seed, const volatile u64 *mem, u64 bytes)
{
	u64 words = PAGE / 8;
	for (;;)
		for (u64 page = 0; page < bytes / PAGE; page++) {
			const volatile u64 *w = mem + page * words;
			u64 want = mix(seed, page, 0);
			if (w[0] != want || w[words - 1] != ~want)
				sys_exit_group(VERIFY_MISMATCH);
		}
}

/*
 * SIGKILL to a task asleep on a page. It dies at once; the page-ready for its
 * token, when it comes, finds the orphaned entry and consumes it.
 *
 * The signal must land while the task sleeps, but this init's own path to
 * kill() can fault on pages as slow as the sleeper's, so its page may come
 * first: then the task dies awake and nothing is orphaned. Try again, with a
 * fresh reader, until one is killed asleep.
 *
 * The readers read memory init wrote once and shares with them, more than the
 * host's budget, so each attempt's reader faults on evicted pages from its first
 * page on. (A fresh private region per attempt would first have to be written,
 * in pages Linux freed from the last attempt and the host had evicted: each a
 * synchronous, kernel-mode read before Linux zeroes it, for minutes of guest
 * time before the first sleep.)
 */
static int case_kill(const char *name)
{
	const u64 bytes = 64 * MIB, seed = 0xa9f0000000000000ull, words = PAGE / 8;
	s64 addr = sys_mmap_anonymous(bytes, 1);
	if (addr < 0 && addr > -4096)
		return failed(name, "mmap of the shared memory failed:", addr);
	volatile u64 *mem = (volatile u64 *)addr;
	for (u64 page = 0; page < bytes / PAGE; page++) {
		u64 want = mix(seed, page, 0);
		mem[page * words] = want;
		mem[page * words + words - 1] = ~want;
	}
	s64 killed = 0, attempts = 0;
	while (attempts < 16 && killed == 0) {
		attempts++;
		struct workers w = { 0 };
		s64 pid = sys_fork();
		if (pid == 0)
			reader(seed, mem, bytes);
		if (pid < 0)
			return failed(name, "fork failed:", pid);
		w.pid[w.n++] = pid;
		if (wait_counter("sleepers", 1, 60 * SECOND) < 0) {
			abandon(&w);
			return failed(name, "no task slept on a page; sleepers_max",
				      counter("sleepers_max"));
		}
		abandon(&w);	/* the SIGKILL this case is about */
		if (w.signalled != 1)
			return failed(name, "the reader did not die of its signal; mismatched",
				      (s64)w.mismatched);
		killed = counter("killed");
	}
	if (killed == 0)
		return failed(name, "no reader was killed while asleep; attempts", 16);
	s64 orphans = wait_counter("ready_orphan", killed, 30 * SECOND);
	if (orphans < 0)
		return failed(name, "page-readies for killed sleepers never came; killed", killed);
	struct line l;
	begin(&l, name, "ok");
	put_str(&l, "killed while asleep ");
	put_signed(&l, killed);
	put_str(&l, "; their page-readies consumed ");
	put_signed(&l, orphans);
	put_str(&l, "; attempts ");
	put_signed(&l, attempts);
	emit(&l);
	return 0;
}

/* rmmod while tasks sleep on pages: they are woken and finish. */
static int case_unload(const char *name)
{
	struct workers w = { 0 };
	s64 sleepers = start_sleeping(name, &w, 8, 16 * MIB, 2, -1, 4);
	if (sleepers < 0)
		return 1;
	s64 r = sys_delete_module("apf", O_NONBLOCK);
	if (r) {
		abandon(&w);
		return failed(name, "delete_module failed:", r);
	}
	reap(&w);
	if (workers_fine(name, &w))
		return 1;
	struct line l;
	begin(&l, name, "ok");
	put_str(&l, "unloaded with ");
	put_signed(&l, sleepers);
	put_str(&l, " sleepers; ");
	put_dec(&l, w.ok);
	put_str(&l, " verifiers intact");
	emit(&l);
	return 0;
}

/* 200 tasks faulting at once: the table fills, the rest fault synchronously. */
static int case_crowd(const char *name)
{
	struct workers w = { 0 };
	if (spawn(&w, 200, MIB, 3, -1)) {
		abandon(&w);
		return failed(name, "fork failed after workers:", (s64)w.n);
	}
	reap(&w);
	if (workers_fine(name, &w))
		return 1;
	struct line l;
	begin(&l, name, "ok");
	put_dec(&l, w.ok);
	put_str(&l, " verifiers intact; sleepers_max ");
	put_signed(&l, counter("sleepers_max"));
	put_str(&l, ", fallbacks ");
	put_signed(&l, counter("fallbacks"));
	emit(&l);
	return 0;
}

/*
 * write(2) from a buffer the host evicted: the kernel's copy faults in kernel
 * mode, which the host resolves synchronously (no not-present), and the file
 * holds what the buffer held.
 */
static int case_kwrite(const char *name)
{
	const u64 size = 8 * MIB, push = 128 * MIB;
	s64 a = sys_mmap_anonymous(size, 0), b = sys_mmap_anonymous(push, 0);
	if ((a < 0 && a > -4096) || (b < 0 && b > -4096))
		return failed(name, "mmap failed:", a < 0 ? a : b);
	u64 *buf = (u64 *)a;
	for (u64 i = 0; i < size / 8; i++)
		buf[i] = mix(7, i, 0);
	/* Touching twice the host budget pushes the buffer out to the store. */
	volatile u64 *other = (u64 *)b;
	for (u64 i = 0; i < push / 8; i += PAGE / 8)
		other[i] = i;

	s64 before = counter("not_present");
	s64 fd = sys_open_mode("/kwrite", O_WRONLY | O_CREAT | O_TRUNC, 0600);
	if (fd < 0)
		return failed(name, "open /kwrite failed:", fd);
	s64 n = sys_write((int)fd, buf, size);
	sys_close((int)fd);
	s64 during = counter("not_present") - before;
	if (n != (s64)size)
		return failed(name, "write returned", n);
	if (during)
		return failed(name, "not-presents during a kernel-mode copy:", during);

	fd = sys_open("/kwrite", O_RDONLY);
	if (fd < 0)
		return failed(name, "reopen /kwrite failed:", fd);
	static u64 chunk[PAGE / 8];
	for (u64 off = 0; off < size; off += PAGE) {
		if (sys_read((int)fd, chunk, PAGE) != (s64)PAGE)
			return failed(name, "short read at", (s64)off);
		for (u64 j = 0; j < PAGE / 8; j++)
			if (chunk[j] != mix(7, off / 8 + j, 0))
				return failed(name, "file differs from the buffer at", (s64)(off + j * 8));
	}
	sys_close((int)fd);
	struct line l;
	begin(&l, name, "ok");
	put_dec(&l, size / MIB);
	put_str(&l, " MiB written from an evicted buffer, 0 not-presents during the copy");
	emit(&l);
	return 0;
}

static int same(const char *s, u64 n, const char *word)
{
	u64 i = 0;
	for (; i < n; i++)
		if (word[i] != s[i])
			return 0;
	return word[i] == 0;
}

int run_case(const char *name, u64 len)
{
	static const struct {
		const char *name;
		int (*run)(const char *name);
	} cases[] = {
		{ "hotplug", case_hotplug }, { "kill", case_kill }, { "unload", case_unload },
		{ "crowd", case_crowd },     { "kwrite", case_kwrite },
	};
	for (u64 i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
		if (same(name, len, cases[i].name))
			return cases[i].run(cases[i].name);
	struct line l;
	l.len = 0;
	put_str(&l, "apf-case ");
	put_bytes(&l, name, len);
	put_str(&l, " failed no such case (hotplug, kill, unload, crowd, kwrite)");
	emit(&l);
	return 1;
}
