/*
 * Raw Linux arm64 system calls for the init: no libc, because glibc and musl use
 * FP/SIMD and apf's interpreter has none (Linux keeps FP trapped and a user FP
 * instruction is a SIGILL). A call returns the result or -errno.
 *
 * Numbers are the arm64 (asm-generic) table's.
 */
#ifndef APF_LINUX_SYS_H
#define APF_LINUX_SYS_H

#include <stdint.h>

typedef uint64_t u64;
typedef int64_t s64;

#define SYS_DUP3 24
#define SYS_FCNTL 25
#define SYS_MKDIRAT 34
#define SYS_MOUNT 40
#define SYS_OPENAT 56
#define SYS_CLOSE 57
#define SYS_GETDENTS64 61
#define SYS_READ 63
#define SYS_WRITE 64
#define SYS_EXIT_GROUP 94
#define SYS_SCHED_SETAFFINITY 122
#define SYS_SCHED_GETAFFINITY 123
#define SYS_KILL 129
#define SYS_REBOOT 142
#define SYS_GETPID 172
#define SYS_CLONE 220
#define SYS_MMAP 222
#define SYS_WAIT4 260
#define SYS_FINIT_MODULE 273

#define SYS_DELETE_MODULE 106
#define SYS_CLOCK_GETTIME 113
#define SYS_SCHED_YIELD 124
#define O_WRONLY 1
#define O_CREAT 0x40
#define O_TRUNC 0x200
#define O_NONBLOCK 0x800
#define CLOCK_MONOTONIC 1
#define AT_FDCWD (-100)
#define O_RDONLY 0
#define O_RDWR 2
#define O_DIRECTORY 0x4000 /* arm64's value (asm-generic has 0200000) */
#define DT_REG 8
#define F_GETFD 1
#define PROT_READ 1
#define PROT_WRITE 2
#define MAP_SHARED 0x01
#define MAP_PRIVATE 0x02
#define MAP_ANONYMOUS 0x20
#define MAP_POPULATE 0x8000
#define SIGKILL 9
#define SIGCHLD 17
#define EBUSY 16
#define EINTR 4
#define ENOENT 2
#define EEXIST 17
#define LINUX_REBOOT_MAGIC1 0xfee1deadu
#define LINUX_REBOOT_MAGIC2 672274793u
#define LINUX_REBOOT_CMD_POWER_OFF 0x4321fedcu

/* CPUs a mask covers: the kernel's own cpumask is at most this wide here. */
#define CPU_MASK_WORDS 16

#define noreturn __attribute__((noreturn))
#define compiler_barrier() __asm__ volatile("" ::: "memory")

static inline s64 syscall6(u64 nr, u64 a0, u64 a1, u64 a2, u64 a3, u64 a4, u64 a5)
{
	register u64 x8 __asm__("x8") = nr;
	register u64 x0 __asm__("x0") = a0;
	register u64 x1 __asm__("x1") = a1;
	register u64 x2 __asm__("x2") = a2;
	register u64 x3 __asm__("x3") = a3;
	register u64 x4 __asm__("x4") = a4;
	register u64 x5 __asm__("x5") = a5;
	__asm__ volatile("svc #0"
			 : "+r"(x0)
			 : "r"(x8), "r"(x1), "r"(x2), "r"(x3), "r"(x4), "r"(x5)
			 : "memory");
	return (s64)x0;
}

static inline s64 syscall3(u64 nr, u64 a0, u64 a1, u64 a2)
{
	return syscall6(nr, a0, a1, a2, 0, 0, 0);
}

static inline s64 sys_write(int fd, const void *buf, u64 len)
{
	return syscall3(SYS_WRITE, (u64)fd, (u64)buf, len);
}

static inline s64 sys_read(int fd, void *buf, u64 len)
{
	return syscall3(SYS_READ, (u64)fd, (u64)buf, len);
}

static inline s64 sys_open(const char *path, int flags)
{
	return syscall6(SYS_OPENAT, (u64)(s64)AT_FDCWD, (u64)path, (u64)flags, 0, 0, 0);
}

/* openat(dirfd, path, flags): path relative to an open directory. */
static inline s64 sys_openat(int dirfd, const char *path, int flags)
{
	return syscall6(SYS_OPENAT, (u64)(s64)dirfd, (u64)path, (u64)flags, 0, 0, 0);
}

static inline s64 sys_mkdir(const char *path, u64 mode)
{
	return syscall3(SYS_MKDIRAT, (u64)(s64)AT_FDCWD, (u64)path, mode);
}

/* The directory's next entries as struct linux_dirent64 records; 0 at its end. */
static inline s64 sys_getdents64(int fd, void *buf, u64 len)
{
	return syscall3(SYS_GETDENTS64, (u64)fd, (u64)buf, len);
}

static inline s64 sys_close(int fd) { return syscall3(SYS_CLOSE, (u64)fd, 0, 0); }

static inline s64 sys_dup3(int from, int to) { return syscall3(SYS_DUP3, (u64)from, (u64)to, 0); }

static inline s64 sys_fcntl(int fd, int cmd) { return syscall3(SYS_FCNTL, (u64)fd, (u64)cmd, 0); }

static inline s64 sys_mount(const char *source, const char *target, const char *type)
{
	return syscall6(SYS_MOUNT, (u64)source, (u64)target, (u64)type, 0, 0, 0);
}

static inline s64 sys_mmap_anonymous(u64 len, int shared)
{
	return syscall6(SYS_MMAP, 0, len, PROT_READ | PROT_WRITE,
			(shared ? MAP_SHARED : MAP_PRIVATE) | MAP_ANONYMOUS, (u64)-1, 0);
}

/*
 * A private anonymous mapping whose pages the kernel allocates (zeroed) before
 * returning, as a working set that exists from the start.
 */
static inline s64 sys_mmap_populated(u64 len)
{
	return syscall6(SYS_MMAP, 0, len, PROT_READ | PROT_WRITE,
			MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, (u64)-1, 0);
}

/* fork(): clone with only the exit signal; the child runs on a copy of this stack. */
static inline s64 sys_fork(void) { return syscall6(SYS_CLONE, SIGCHLD, 0, 0, 0, 0, 0); }

static inline s64 sys_wait4(int *status)
{
	return syscall6(SYS_WAIT4, (u64)-1, (u64)status, 0, 0, 0, 0);
}

/* finit_module(fd, params, 0): loads the module in the open file. */
static inline s64 sys_finit_module(int fd, const char *params)
{
	return syscall3(SYS_FINIT_MODULE, (u64)fd, (u64)params, 0);
}

static inline s64 sys_getpid(void) { return syscall3(SYS_GETPID, 0, 0, 0); }

static inline s64 sys_kill(s64 pid, int sig) { return syscall3(SYS_KILL, (u64)pid, (u64)sig, 0); }

static inline s64 sys_sched_setaffinity(const u64 *mask)
{
	return syscall3(SYS_SCHED_SETAFFINITY, 0, CPU_MASK_WORDS * 8, (u64)mask);
}

static inline s64 sys_sched_getaffinity(u64 *mask)
{
	return syscall3(SYS_SCHED_GETAFFINITY, 0, CPU_MASK_WORDS * 8, (u64)mask);
}

static inline s64 sys_power_off(void)
{
	return syscall6(SYS_REBOOT, LINUX_REBOOT_MAGIC1, LINUX_REBOOT_MAGIC2,
			LINUX_REBOOT_CMD_POWER_OFF, 0, 0, 0);
}

static inline noreturn void sys_exit_group(int code)
{
	syscall3(SYS_EXIT_GROUP, (u64)code, 0, 0);
	__builtin_unreachable();
}

static inline s64 sys_open_mode(const char *path, int flags, u64 mode)
{
	return syscall6(SYS_OPENAT, (u64)(s64)AT_FDCWD, (u64)path, (u64)flags, mode, 0, 0);
}

static inline s64 sys_wait4_pid(s64 pid, int *status)
{
	return syscall6(SYS_WAIT4, (u64)pid, (u64)status, 0, 0, 0, 0);
}

static inline s64 sys_sched_yield(void) { return syscall3(SYS_SCHED_YIELD, 0, 0, 0); }

static inline s64 sys_delete_module(const char *name, int flags)
{
	return syscall3(SYS_DELETE_MODULE, (u64)name, (u64)flags, 0);
}

/* CLOCK_MONOTONIC in nanoseconds (0 if the call fails). */
static inline u64 monotonic_ns(void)
{
	s64 ts[2] = { 0, 0 };
	if (syscall3(SYS_CLOCK_GETTIME, CLOCK_MONOTONIC, (u64)ts, 0) != 0)
		return 0;
	return (u64)ts[0] * 1000000000ull + (u64)ts[1];
}

#endif
