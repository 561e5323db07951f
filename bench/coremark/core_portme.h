/*
 * apf's port of EEMBC CoreMark: a bare-metal AArch64 image, one core, entered at
 * EL1h with the MMU off, as apf and qemu-system-aarch64 -M virt both start it.
 * CoreMark itself is not in this repository: run.sh fetches it (see README.md).
 *
 * What CoreMark asks of a port, and our choices:
 * - fixed-width types (LP64: long and pointers are 64-bit);
 * - seeds through volatile variables (core_portme.c), so the compiler cannot fold
 *   the benchmark away; the iteration count is ITERATIONS, set by the build;
 * - time from the generic timer's virtual counter (CNTVCT_EL0 / CNTFRQ_EL0);
 * - static memory, no float, our own ee_printf on the PL011.
 */
#ifndef APF_COREMARK_PORTME_H
#define APF_COREMARK_PORTME_H

#ifndef ITERATIONS
#error "build with -DITERATIONS=N (see Makefile)"
#endif

/* NULL and size_t: freestanding headers, no C library. */
#include <stddef.h>

#define HAS_FLOAT 0
#define HAS_TIME_H 0
#define USE_CLOCK 0
#define HAS_STDIO 0
#define HAS_PRINTF 0
#define MAIN_HAS_NOARGC 1
#define MAIN_HAS_NORETURN 0
#define MULTITHREAD 1
#define SEED_METHOD SEED_VOLATILE
#ifndef MEM_METHOD
#define MEM_METHOD MEM_STATIC
#endif
#define MEM_LOCATION "static (guest RAM, MMU off)"

#ifndef COMPILER_VERSION
#define COMPILER_VERSION "GCC " __VERSION__
#endif
#ifndef COMPILER_FLAGS
#define COMPILER_FLAGS "(see bench/coremark/Makefile)"
#endif

typedef signed short ee_s16;
typedef unsigned short ee_u16;
typedef signed int ee_s32;
typedef unsigned int ee_u32;
typedef unsigned char ee_u8;
typedef unsigned long ee_ptr_int;
typedef size_t ee_size_t;
typedef double ee_f32;

/* Counter ticks (CNTVCT_EL0): 64 bits, so a run never wraps. */
typedef unsigned long CORE_TICKS;

/* Rounds a pointer up to 4 bytes, the widest element the matrix stores. */
#define align_mem(x) (void *)(4 + (((ee_ptr_int)(x)-1) & ~(ee_ptr_int)3))

typedef struct CORE_PORTABLE_S {
	ee_u8 portable_id;
} core_portable;

extern ee_u32 default_num_contexts;

void portable_init(core_portable *p, int *argc, char *argv[]);
void portable_fini(core_portable *p);
int ee_printf(const char *fmt, ...);

#endif
