/*
 * The platform half of apf's CoreMark port (see core_portme.h): seeds, the
 * timer, console output and power-off. Runs on apf and on QEMU's virt machine,
 * which share the PL011 address and PSCI over HVC.
 */
#include <stdarg.h>
#include "coremark.h"

#define UART_BASE 0x09000000ul		/* PL011 on apf and on QEMU virt */
#define UART_DR 0x000
#define UART_FR 0x018
#define UART_FR_TXFF (1u << 5)		/* transmit FIFO full */
#define PSCI_SYSTEM_OFF 0x84000008ul

/*
 * CoreMark's "2K performance run": seeds 0, 0, 0x66 select the CRCs it checks
 * itself. Volatile so the compiler must read them at run time; seed4 is the
 * iteration count and seed5 the algorithm mask (0: all).
 */
volatile ee_s32 seed1_volatile = 0x0;
volatile ee_s32 seed2_volatile = 0x0;
volatile ee_s32 seed3_volatile = 0x66;
volatile ee_s32 seed4_volatile = ITERATIONS;
volatile ee_s32 seed5_volatile = 0;

ee_u32 default_num_contexts = 1;

static CORE_TICKS start_ticks, stop_ticks;

/* The virtual counter; the ISB keeps the read from moving across the timed code. */
static CORE_TICKS counter_now(void)
{
	CORE_TICKS t;
	__asm__ volatile("isb\n\tmrs %0, cntvct_el0" : "=r"(t) : : "memory");
	return t;
}

static unsigned long counter_hz(void)
{
	unsigned long hz;
	__asm__ volatile("mrs %0, cntfrq_el0" : "=r"(hz));
	return hz ? hz : 1;
}

void start_time(void)
{
	start_ticks = counter_now();
}

void stop_time(void)
{
	stop_ticks = counter_now();
}

CORE_TICKS get_time(void)
{
	return stop_ticks - start_ticks;
}

secs_ret time_in_secs(CORE_TICKS ticks)
{
	return (secs_ret)(ticks / counter_hz());
}

void portable_init(core_portable *p, int *argc, char *argv[])
{
	(void)argc;
	(void)argv;
	if (sizeof(ee_ptr_int) != sizeof(ee_u8 *))
		ee_printf("ERROR! ee_ptr_int cannot hold a pointer\n");
	if (sizeof(ee_u32) != 4)
		ee_printf("ERROR! ee_u32 is not 32 bits\n");
	ee_printf("apf-coremark: iterations=%u counter=%lu Hz\n", (unsigned)ITERATIONS,
		  counter_hz());
	p->portable_id = 1;
}

void portable_fini(core_portable *p)
{
	p->portable_id = 0;
}

/* --- Console --- */

static void mmio_write32(unsigned long addr, ee_u32 v)
{
	*(volatile ee_u32 *)addr = v;
}

static ee_u32 mmio_read32(unsigned long addr)
{
	return *(volatile ee_u32 *)addr;
}

static void uart_putc(char ch)
{
	while (mmio_read32(UART_BASE + UART_FR) & UART_FR_TXFF)
		;
	mmio_write32(UART_BASE + UART_DR, (ee_u8)ch);
}

static int put_padded(const char *digits, int n, int width, char pad)
{
	int out = 0;
	for (; width > n; width--, out++)
		uart_putc(pad);
	while (n)
		uart_putc(digits[--n]), out++;
	return out;
}

/* Digits of v in base, least significant first; returns how many. */
static int to_digits(char *buf, unsigned long v, unsigned base)
{
	int n = 0;
	do {
		buf[n++] = "0123456789abcdef"[v % base];
		v /= base;
	} while (v);
	return n;
}

/*
 * The printf subset CoreMark's reports use: %d %u %x %s %c %%, with an optional
 * '0' flag, a width and an 'l' length. Returns the characters written.
 */
int ee_printf(const char *fmt, ...)
{
	va_list ap;
	char buf[24];
	int out = 0;

	va_start(ap, fmt);
	for (; *fmt; fmt++) {
		if (*fmt != '%') {
			uart_putc(*fmt), out++;
			continue;
		}
		fmt++;
		char pad = ' ';
		int width = 0, wide = 0;
		if (*fmt == '0')
			pad = '0', fmt++;
		while (*fmt >= '0' && *fmt <= '9')
			width = width * 10 + (*fmt++ - '0');
		if (*fmt == 'l')
			wide = 1, fmt++;
		switch (*fmt) {
		case 'd': {
			long v = wide ? va_arg(ap, long) : va_arg(ap, int);
			unsigned long mag = v < 0 ? 0ul - (unsigned long)v : (unsigned long)v;
			int n = to_digits(buf, mag, 10);
			if (v < 0)
				buf[n++] = '-';
			out += put_padded(buf, n, width, pad);
			break;
		}
		case 'u':
		case 'x': {
			unsigned long v = wide ? va_arg(ap, unsigned long) : va_arg(ap, unsigned);
			out += put_padded(buf, to_digits(buf, v, *fmt == 'x' ? 16 : 10), width, pad);
			break;
		}
		case 's':
			for (const char *s = va_arg(ap, const char *); *s; s++)
				uart_putc(*s), out++;
			break;
		case 'c':
			uart_putc((char)va_arg(ap, int)), out++;
			break;
		case '%':
			uart_putc('%'), out++;
			break;
		default:	/* unsupported: show it rather than guess */
			uart_putc('%'), uart_putc(*fmt ? *fmt : '?'), out += 2;
			if (!*fmt)
				fmt--;
			break;
		}
	}
	va_end(ap);
	return out;
}

/* --- Start and end (start.S calls these) --- */

static void __attribute__((noreturn)) system_off(void)
{
	register unsigned long x0 __asm__("x0") = PSCI_SYSTEM_OFF;
	/* SMCCC 1.0: the callee may change x1..x17. */
	__asm__ volatile("hvc #0" : "+r"(x0) : : "x1", "x2", "x3", "x4", "x5", "x6", "x7", "x8",
			 "x9", "x10", "x11", "x12", "x13", "x14", "x15", "x16", "x17", "memory");
	for (;;)
		__asm__ volatile("wfi");
}

int main(void);

void __attribute__((noreturn)) coremark_boot(void)
{
	int ret = main();
	ee_printf("apf-coremark: end status=%d\n", ret);
	system_off();
}

/* Any exception is a bug in the port or the emulator: say where, then stop. */
void __attribute__((noreturn)) coremark_trap(unsigned long vector)
{
	unsigned long esr, elr, far;
	__asm__ volatile("mrs %0, esr_el1" : "=r"(esr));
	__asm__ volatile("mrs %0, elr_el1" : "=r"(elr));
	__asm__ volatile("mrs %0, far_el1" : "=r"(far));
	ee_printf("apf-coremark: ERROR! exception vector=0x%lx esr=0x%lx elr=0x%lx far=0x%lx\n",
		  vector, esr, elr, far);
	system_off();
}
