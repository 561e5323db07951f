/*
 * PID 1 of the Linux guest: runs apf's workloads as Linux processes and reports
 * them on the console (README.md beside this file has the protocol).
 *
 * The host passes one `apf.proc=<kind>,<vcpu>,<mem_bytes>,<work>,<seed>` token
 * per process on the kernel command line. Init forks one child per token, pinned
 * to its vCPU; the child maps its working set and runs the workload of
 * ../workloads.h, publishing (progress, checksum) in a page shared with init.
 * Init alone writes to the console: after wait4 it prints
 *   apf-proc <index> done <progress> <checksum>
 *   apf-proc <index> killed <signal> <progress> <checksum>
 *   apf-proc <index> stopped <progress> <checksum>
 * the last for a process without work (work 0), which init stops with SIGKILL once
 * every process with work has ended. Then one `apf-module <name> <value>` per
 * counter file of the apf module (/sys/kernel/apf/), then `apf-init done`, and
 * powers off. A bad token: `apf-init error: ...`, power off.
 *
 * Freestanding: no FP/SIMD anywhere (build.sh checks the binary).
 */
#include "cases.h"
#include "line.h"
#include "sys.h"
#include "workloads.h"

#define MAX_PROCS APF_BOOT_MAX_PROCS
#define CMDLINE_MAX 4096
#define MODULE_PARAMS_MAX 512

/* _start: the kernel leaves argc/argv/envp on the stack; init needs none of them. */
__asm__(".text\n"
	".global _start\n"
	"_start:\n"
	"	mov x29, #0\n"
	"	mov x30, #0\n"
	"	bl init_main\n"
	"	b .\n");

/*
 * GCC may call these even in freestanding code (to zero or copy a struct); no libc
 * provides them here. Byte loops: -fno-tree-loop-distribute-patterns keeps GCC from
 * turning them back into calls to themselves.
 */
void *memset(void *dst, int c, u64 n);
void *memset(void *dst, int c, u64 n)
{
	unsigned char *d = dst;
	for (u64 i = 0; i < n; i++)
		d[i] = (unsigned char)c;
	return dst;
}

void *memcpy(void *dst, const void *src, u64 n);
void *memcpy(void *dst, const void *src, u64 n)
{
	unsigned char *d = dst;
	const unsigned char *s = src;
	for (u64 i = 0; i < n; i++)
		d[i] = s[i];
	return dst;
}

struct proc_spec {
	u64 kind;
	u64 vcpu;
	u64 mem_bytes;
	u64 work;
	u64 seed;
	u64 write_pct;
};

/*
 * What a child publishes, in the page it shares with init. Two (progress,
 * checksum) slots and the index of the newer one: a child killed while writing a
 * slot leaves the other, complete, pair published.
 */
struct proc_report {
	u64 progress[2];
	u64 checksum[2];
	u64 current;
	/* Why the child killed itself before running (0: it did not), and the errno. */
	u64 failure;
	u64 failure_errno;
};

enum failure { FAIL_NONE, FAIL_AFFINITY, FAIL_MMAP };

static const char *const kind_names[] = { "?", "scan", "calc", "kv", "build" };

static noreturn void power_off(void)
{
	sys_power_off();
	/* Still here: init exiting panics the kernel, which ends the VM (panic=-1). */
	sys_exit_group(1);
}

static noreturn void fail(struct line *l)
{
	emit(l);
	power_off();
}

/* --- Console and file systems --- */

/*
 * An initramfs without device nodes leaves fds 0-2 closed (the kernel found no
 * /dev/console to open): open it from devtmpfs for each one missing.
 */
static void open_console(void)
{
	s64 console = -1;
	for (int fd = 0; fd <= 2; fd++) {
		if (sys_fcntl(fd, F_GETFD) >= 0)
			continue;
		if (console < 0) {
			console = sys_open("/dev/console", O_RDWR);
			if (console < 0)
				return;
		}
		if (console != fd)
			sys_dup3((int)console, fd);
	}
	if (console > 2)
		sys_close((int)console);
}

static void mount_or_fail(const char *source, const char *target, const char *type)
{
	s64 r = sys_mount(source, target, type);
	if (r == 0 || r == -EBUSY) /* -EBUSY: the kernel mounted it already */
		return;
	struct line l;
	l.len = 0;
	put_str(&l, "apf-init error: mount ");
	put_str(&l, type);
	put_str(&l, " on ");
	put_str(&l, target);
	put_str(&l, " failed: ");
	put_signed(&l, r);
	fail(&l);
}

/* Reads /proc/cmdline into buf (NUL-terminated); returns its length. */
static u64 read_cmdline(char *buf)
{
	s64 fd = sys_open("/proc/cmdline", O_RDONLY);
	struct line l;
	l.len = 0;
	if (fd < 0) {
		put_str(&l, "apf-init error: open /proc/cmdline failed: ");
		put_signed(&l, fd);
		fail(&l);
	}
	u64 len = 0;
	for (;;) {
		s64 n = sys_read((int)fd, buf + len, CMDLINE_MAX - 1 - len);
		if (n == -EINTR)
			continue;
		if (n < 0) {
			put_str(&l, "apf-init error: read /proc/cmdline failed: ");
			put_signed(&l, n);
			fail(&l);
		}
		if (n == 0 || len + (u64)n == CMDLINE_MAX - 1) {
			len += (u64)n;
			break;
		}
		len += (u64)n;
	}
	sys_close((int)fd);
	buf[len] = 0;
	return len;
}

/* --- The apf.proc= tokens --- */

static int is_space(char c) { return c == ' ' || c == '\n' || c == '\t'; }

static int starts_with(const char *s, u64 n, const char *prefix)
{
	u64 i = 0;
	for (; prefix[i]; i++)
		if (i >= n || s[i] != prefix[i])
			return 0;
	return 1;
}

static int equals(const char *s, u64 n, const char *word)
{
	return starts_with(s, n, word) && word[n] == 0;
}

/* A decimal u64 without sign, spaces or overflow. */
static int parse_dec(const char *s, u64 n, u64 *out)
{
	if (n == 0)
		return 0;
	u64 v = 0;
	for (u64 i = 0; i < n; i++) {
		if (s[i] < '0' || s[i] > '9')
			return 0;
		u64 digit = (u64)(s[i] - '0');
		if (v > (UINT64_MAX - digit) / 10)
			return 0;
		v = v * 10 + digit;
	}
	*out = v;
	return 1;
}

static noreturn void bad_token(const char *token, u64 n, const char *why)
{
	struct line l;
	l.len = 0;
	put_str(&l, "apf-init error: ");
	put_bytes(&l, token, n);
	put_str(&l, ": ");
	put_str(&l, why);
	fail(&l);
}

static int cpu_online(const u64 *mask, u64 cpu)
{
	return cpu < CPU_MASK_WORDS * 64 && (mask[cpu / 64] >> (cpu % 64)) & 1;
}

/*
 * Parses one token's value: <kind>,<vcpu>,<mem_bytes>,<work>,<seed>[,<write_pct>]
 * (write_pct, scan's share of writing accesses, is 100 when absent, as before it
 * existed).
 */
static void parse_spec(const char *token, u64 n, const char *value, u64 value_len,
		       const u64 *online, struct proc_spec *spec)
{
	const char *field[6];
	u64 field_len[6];
	u64 nfields = 0, start = 0;
	for (u64 i = 0; i <= value_len; i++) {
		if (i < value_len && value[i] != ',')
			continue;
		if (nfields == 6)
			bad_token(token, n, "more than 6 fields");
		field[nfields] = value + start;
		field_len[nfields] = i - start;
		nfields++;
		start = i + 1;
	}
	if (nfields < 5)
		bad_token(token, n, "expected <kind>,<vcpu>,<mem_bytes>,<work>,<seed>[,<write_pct>]");

	spec->kind = 0;
	for (u64 k = APF_WORKLOAD_SCAN; k <= APF_WORKLOAD_BUILD; k++)
		if (equals(field[0], field_len[0], kind_names[k]))
			spec->kind = k;
	if (!spec->kind)
		bad_token(token, n, "unknown kind (scan, calc, kv or build)");
	if (!parse_dec(field[1], field_len[1], &spec->vcpu))
		bad_token(token, n, "vcpu is not a decimal u64");
	if (!parse_dec(field[2], field_len[2], &spec->mem_bytes))
		bad_token(token, n, "mem_bytes is not a decimal u64");
	if (!parse_dec(field[3], field_len[3], &spec->work))
		bad_token(token, n, "work is not a decimal u64");
	if (!parse_dec(field[4], field_len[4], &spec->seed))
		bad_token(token, n, "seed is not a decimal u64");
	spec->write_pct = APF_WRITE_PCT_ALL;
	if (nfields == 6 && (!parse_dec(field[5], field_len[5], &spec->write_pct) ||
			     spec->write_pct > APF_WRITE_PCT_ALL))
		bad_token(token, n, "write_pct is not a decimal from 0 to 100");

	/* The same minimums as the built-in guest and apf_vm::workload. */
	if ((spec->kind == APF_WORKLOAD_SCAN || spec->kind == APF_WORKLOAD_BUILD) &&
	    spec->mem_bytes < APF_PAGE_SIZE)
		bad_token(token, n, "scan and build need mem_bytes >= 4096");
	if (spec->kind == APF_WORKLOAD_KV && spec->mem_bytes < 64)
		bad_token(token, n, "kv needs mem_bytes >= 64");
	if (!cpu_online(online, spec->vcpu))
		bad_token(token, n, "no such vcpu online");
}

/*
 * The command line's next space-separated token from *at: its start, its length
 * in *n, and *at moved past it; NULL at the end.
 */
static const char *next_token(const char *cmdline, u64 len, u64 *at, u64 *n)
{
	u64 i = *at;
	while (i < len && is_space(cmdline[i]))
		i++;
	u64 start = i;
	while (i < len && !is_space(cmdline[i]))
		i++;
	*at = i;
	*n = i - start;
	return *n ? cmdline + start : 0;
}

/* Finds every apf.proc= token in the command line; returns how many. */
static u64 parse_cmdline(const char *cmdline, u64 len, const u64 *online, struct proc_spec *specs)
{
	static const char prefix[] = "apf.proc=";
	u64 nprocs = 0;
	u64 at = 0, n;
	for (const char *token; (token = next_token(cmdline, len, &at, &n));) {
		if (!starts_with(token, n, prefix))
			continue;
		if (nprocs == MAX_PROCS)
			bad_token(token, n, "more than 48 apf.proc= tokens");
		u64 skip = sizeof(prefix) - 1;
		parse_spec(token, n, token + skip, n - skip, online, &specs[nprocs]);
		nprocs++;
	}
	return nprocs;
}

/* --- A child: one workload --- */

static void publish(volatile struct proc_report *r, u64 progress, u64 checksum)
{
	u64 next = r->current ^ 1;
	r->progress[next] = progress;
	r->checksum[next] = checksum;
	compiler_barrier();
	r->current = next;
}

/* Ends a child that could not start: init reports it as killed by SIGKILL. */
static noreturn void give_up(volatile struct proc_report *r, enum failure why, s64 err)
{
	r->failure_errno = (u64)-err;
	compiler_barrier();
	r->failure = why;
	compiler_barrier();
	sys_kill(sys_getpid(), SIGKILL);
	sys_exit_group(1);
}

static noreturn void run_proc(const struct proc_spec *spec, volatile struct proc_report *r)
{
	u64 mask[CPU_MASK_WORDS] = { 0 };
	mask[spec->vcpu / 64] = 1ul << (spec->vcpu % 64);
	s64 err = sys_sched_setaffinity(mask);
	if (err < 0)
		give_up(r, FAIL_AFFINITY, err);

	/*
	 * Populated up front, as the built-in guest's working set exists from the
	 * start: the workload's touches then fault only on pages the host evicted (the
	 * series' scenario), not on Linux's first touch of each page. Fresh anonymous
	 * memory is zero, so the workload does not zero it again (which would read
	 * back every page the host evicted meanwhile).
	 */
	u64 *mem = 0;
	if (spec->mem_bytes) {
		s64 addr = sys_mmap_populated(spec->mem_bytes);
		if (addr < 0 && addr > -4096)
			give_up(r, FAIL_MMAP, addr);
		mem = (u64 *)addr;
	}

	struct workload w;
	workload_start_zeroed(&w, spec->kind, mem, spec->mem_bytes, spec->seed,
			      spec->write_pct);
	for (u64 done = 0; spec->work == 0 || done < spec->work;) {
		workload_step(&w);
		done++;
		if (done % WORKLOAD_REPORT_EVERY == 0 || done == spec->work)
			publish(r, done, w.checksum);
	}
	sys_exit_group(0);
}

/* --- Init --- */

/*
 * Prints how process `index` ended from its wait status. `stopping`: init has sent
 * SIGKILL to the processes still running (they have no work of their own), so a
 * death by SIGKILL is init's stop, not a kill.
 */
static void report_end(u64 index, const volatile struct proc_report *r, int status, int stopping)
{
	u64 current = r->current & 1;
	u64 progress = r->progress[current];
	u64 checksum = r->checksum[current];
	int signal = status & 0x7f;
	struct line l;
	l.len = 0;

	if (r->failure != FAIL_NONE) {
		/* Said before the killed line, which alone is the protocol. */
		put_str(&l, "apf-init: process ");
		put_dec(&l, index);
		put_str(&l, r->failure == FAIL_AFFINITY ? ": sched_setaffinity" : ": mmap");
		put_str(&l, " failed, errno ");
		put_dec(&l, r->failure_errno);
		emit(&l);
		l.len = 0;
	}
	put_str(&l, "apf-proc ");
	put_dec(&l, index);
	if (signal == 0 && (status >> 8 & 0xff) == 0) {
		put_str(&l, " done ");
	} else if (signal == SIGKILL && stopping && r->failure == FAIL_NONE) {
		put_str(&l, " stopped ");
	} else if (signal != 0 && signal != 0x7f) {
		put_str(&l, " killed ");
		put_dec(&l, (u64)signal);
		put_str(&l, " ");
	} else {
		/* A child exits 0 or dies of a signal; anything else is a bug here. */
		l.len = 0;
		put_str(&l, "apf-init error: process ");
		put_dec(&l, index);
		put_str(&l, " ended with wait status ");
		put_dec(&l, (u64)(unsigned)status);
		fail(&l);
	}
	put_dec(&l, progress);
	put_str(&l, " ");
	put_hex16(&l, checksum);
	emit(&l);
}

/* --- The apf guest module --- */

/*
 * The module's parameters, as modprobe would pass them: every `apf.<name>=<value>`
 * token of the command line but init's own (apf.proc=, apf.case=), space-separated.
 */
static void module_params(const char *cmdline, u64 len, char *out)
{
	u64 o = 0, at = 0, n;
	for (const char *token; (token = next_token(cmdline, len, &at, &n));) {
		if (!starts_with(token, n, "apf.") || starts_with(token, n, "apf.proc=") ||
		    starts_with(token, n, "apf.case=") || o + n + 1 >= MODULE_PARAMS_MAX)
			continue;
		if (o)
			out[o++] = ' ';
		for (u64 k = 4; k < n; k++)
			out[o++] = token[k];
	}
	out[o] = 0;
}

/*
 * build.sh puts the module at /apf.ko: load it before anything runs, so its
 * discovery line comes first. Without the file there is nothing to say; a failed
 * load is a note, and the workloads run all the same.
 */
static void load_apf_module(const char *params)
{
	struct line l;
	l.len = 0;
	s64 fd = sys_open("/apf.ko", O_RDONLY);
	if (fd == -ENOENT)
		return;
	s64 r = fd < 0 ? fd : sys_finit_module((int)fd, params);
	if (fd >= 0)
		sys_close((int)fd);
	if (r == 0) {
		put_str(&l, "apf-init: module apf loaded");
	} else {
		put_str(&l, "apf-init: module apf: error ");
		put_signed(&l, -r);
	}
	emit(&l);
}

/* `apf.case=<name>`: the hostile case (cases.c) runs in a child before the processes. */
static void run_case_token(const char *cmdline, u64 len)
{
	static const char prefix[] = "apf.case=";
	u64 at = 0, n;
	for (const char *token; (token = next_token(cmdline, len, &at, &n));) {
		if (!starts_with(token, n, prefix))
			continue;
		s64 pid = sys_fork();
		if (pid == 0)
			sys_exit_group(run_case(token + sizeof(prefix) - 1, n - (sizeof(prefix) - 1)));
		int status = 0;
		while (pid > 0 && sys_wait4_pid(pid, &status) == -EINTR)
			;
	}
}

/*
 * sysfs on /sys, for the module's counters; build.sh's initramfs has no /sys, and
 * the root (the initramfs) is writable. Without it the counters are not reported: a
 * note, and the workloads run all the same.
 */
static void mount_sysfs(void)
{
	s64 r = sys_mkdir("/sys", 0555);
	if (r == 0 || r == -EEXIST)
		r = sys_mount("sysfs", "/sys", "sysfs");
	if (r == 0 || r == -EBUSY)
		return;
	struct line l;
	l.len = 0;
	put_str(&l, "apf-init: mount sysfs on /sys failed: ");
	put_signed(&l, r);
	emit(&l);
}

/* The kernel's record for one directory entry (getdents64). */
struct linux_dirent64 {
	u64 d_ino;
	s64 d_off;
	unsigned short d_reclen;
	unsigned char d_type;
	char d_name[];
};

#define COUNTER_TEXT_MAX 32

/* Prints `apf-module <name> <value>` for the counter file `name` of `dir`, or a note
 * if it is not one decimal u64 and a newline. */
static void report_counter(int dir, const char *name)
{
	struct line l;
	l.len = 0;
	char text[COUNTER_TEXT_MAX];
	u64 len = 0;
	s64 fd = sys_openat(dir, name, O_RDONLY);
	s64 n = fd;
	while (fd >= 0 && len < sizeof(text)) {
		n = sys_read((int)fd, text + len, sizeof(text) - len);
		if (n == -EINTR)
			continue;
		if (n <= 0)
			break;
		len += (u64)n;
	}
	if (fd >= 0)
		sys_close((int)fd);
	u64 value = 0;
	if (n < 0) {
		put_str(&l, "apf-init: module counter ");
		put_str(&l, name);
		put_str(&l, ": error ");
		put_signed(&l, n);
	} else if (len == 0 || len == sizeof(text) || text[len - 1] != '\n' ||
		   !parse_dec(text, len - 1, &value)) {
		put_str(&l, "apf-init: module counter ");
		put_str(&l, name);
		put_str(&l, ": not a decimal u64 and a newline");
	} else {
		put_str(&l, "apf-module ");
		put_str(&l, name);
		put_str(&l, " ");
		put_dec(&l, value);
	}
	emit(&l);
}

/*
 * The apf module's counters: every regular file of /sys/kernel/apf, in the order
 * getdents gives them, so a counter the module adds needs no change here. Without
 * the directory (no module, no sysfs): nothing.
 */
static void report_module_counters(void)
{
	static char entries[4096] __attribute__((aligned(8)));
	s64 dir = sys_open("/sys/kernel/apf", O_RDONLY | O_DIRECTORY);
	if (dir < 0)
		return;
	for (;;) {
		s64 n = sys_getdents64((int)dir, entries, sizeof(entries));
		if (n == -EINTR)
			continue;
		if (n <= 0)
			break;
		for (s64 off = 0; off < n;) {
			const struct linux_dirent64 *d = (const void *)(entries + off);
			if (d->d_type == DT_REG)
				report_counter((int)dir, d->d_name);
			off += d->d_reclen;
		}
	}
	sys_close((int)dir);
}

noreturn void init_main(void);
noreturn void init_main(void)
{
	static char cmdline[CMDLINE_MAX];
	static struct proc_spec specs[MAX_PROCS];
	static s64 pids[MAX_PROCS];
	struct line l;
	l.len = 0;

	/* devtmpfs first: the console may be only there. Without it init goes on if it
	 * has a console all the same (the kernel's built-in /dev/console). */
	s64 r = sys_mount("devtmpfs", "/dev", "devtmpfs");
	open_console();
	if (r != 0 && r != -EBUSY) {
		put_str(&l, "apf-init: mount devtmpfs on /dev failed: ");
		put_signed(&l, r);
		emit(&l);
		l.len = 0;
	}
	mount_or_fail("proc", "/proc", "proc");
	mount_sysfs();

	u64 online[CPU_MASK_WORDS] = { 0 };
	r = sys_sched_getaffinity(online);
	if (r < 0) {
		put_str(&l, "apf-init error: sched_getaffinity failed: ");
		put_signed(&l, r);
		fail(&l);
	}
	u64 len = read_cmdline(cmdline);
	static char params[MODULE_PARAMS_MAX];
	module_params(cmdline, len, params);
	load_apf_module(params);
	u64 nprocs = parse_cmdline(cmdline, len, online, specs);
	run_case_token(cmdline, len);

	volatile struct proc_report *reports = 0;
	if (nprocs) {
		r = sys_mmap_anonymous(sizeof(struct proc_report) * MAX_PROCS, 1);
		if (r < 0 && r > -4096) {
			put_str(&l, "apf-init error: mmap of the report page failed: ");
			put_signed(&l, r);
			fail(&l);
		}
		reports = (volatile struct proc_report *)r;
	}
	for (u64 i = 0; i < nprocs; i++) {
		/* Before any unit, a process has reported (0, seed). */
		reports[i].progress[0] = 0;
		reports[i].checksum[0] = specs[i].seed;
		reports[i].current = 0;
		reports[i].failure = FAIL_NONE;
	}

	if (nprocs) {
		/* The host times the processes from here, not across the boot. */
		put_str(&l, "apf-init start");
		emit(&l);
		l.len = 0;
	}
	for (u64 i = 0; i < nprocs; i++) {
		s64 pid = sys_fork();
		if (pid == 0)
			run_proc(&specs[i], &reports[i]);
		if (pid < 0) {
			put_str(&l, "apf-init error: fork of process ");
			put_dec(&l, i);
			put_str(&l, " failed: ");
			put_signed(&l, pid);
			fail(&l);
		}
		pids[i] = pid;
	}

	/* Processes without work run until those with work have ended; then init stops
	 * them. A run with none with work waits for ever, until the host stops it. */
	u64 with_work = 0;
	for (u64 i = 0; i < nprocs; i++)
		if (specs[i].work)
			with_work++;
	u64 work_left = with_work;
	int stopping = 0;
	for (u64 running = nprocs; running;) {
		if (with_work && !work_left && !stopping) {
			for (u64 i = 0; i < nprocs; i++)
				if (pids[i])
					sys_kill(pids[i], SIGKILL);
			stopping = 1;
		}
		int status = 0;
		s64 pid = sys_wait4(&status);
		if (pid == -EINTR)
			continue;
		if (pid < 0) {
			put_str(&l, "apf-init error: wait4 failed: ");
			put_signed(&l, pid);
			fail(&l);
		}
		for (u64 i = 0; i < nprocs; i++) {
			if (pids[i] == pid) {
				report_end(i, &reports[i], status, stopping);
				pids[i] = 0;
				running--;
				if (specs[i].work)
					work_left--;
			}
		}
	}

	report_module_counters();
	put_str(&l, "apf-init done");
	emit(&l);
	power_off();
}
