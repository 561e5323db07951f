/*
 * Console output on the PL011 UART. One lock serialises whole lines, so lines
 * from different vCPUs never interleave (the result lines are parsed).
 */
#include <stdarg.h>
#include "kernel.h"

#define UART_DR 0x000
#define UART_FR 0x018
#define UART_FR_TXFF (1u << 5)	/* transmit FIFO full */

static u32 console_lock;

static void lock(void)
{
	while (__atomic_exchange_n(&console_lock, 1, __ATOMIC_ACQUIRE))
		while (__atomic_load_n(&console_lock, __ATOMIC_RELAXED))
			;
}

static void unlock(void)
{
	__atomic_store_n(&console_lock, 0, __ATOMIC_RELEASE);
}

static void putc_raw(char ch)
{
	while (mmio_read32(APF_UART_BASE + UART_FR) & UART_FR_TXFF)
		;
	mmio_write32(APF_UART_BASE + UART_DR, (u8)ch);
}

void console_write(const char *s, u64 len)
{
	lock();
	for (u64 i = 0; i < len; i++)
		putc_raw(s[i]);
	unlock();
}

static void put_num(u64 v, unsigned base)
{
	char buf[20];
	int n = 0;
	do {
		buf[n++] = "0123456789abcdef"[v % base];
		v /= base;
	} while (v);
	while (n)
		putc_raw(buf[--n]);
}

/* printf subset: %s %c %u %x, and %lu %lx for 64-bit values. */
void kprintf(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	lock();
	for (; *fmt; fmt++) {
		if (*fmt != '%') {
			putc_raw(*fmt);
			continue;
		}
		int wide = 0;
		if (*++fmt == 'l') {
			wide = 1;
			fmt++;
		}
		if (!*fmt)
			break;
		switch (*fmt) {
		case 's':
			for (const char *s = va_arg(ap, const char *); *s; s++)
				putc_raw(*s);
			break;
		case 'c':
			putc_raw((char)va_arg(ap, int));
			break;
		case 'u':
		case 'x':
			put_num(wide ? va_arg(ap, u64) : va_arg(ap, unsigned),
				*fmt == 'u' ? 10 : 16);
			break;
		default:
			putc_raw('%');
			putc_raw(*fmt);
		}
	}
	unlock();
	va_end(ap);
}
