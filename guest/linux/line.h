/*
 * Console output for the Linux guest's init: a line is built in a buffer and
 * written with one write(2), so lines from init and its children never interleave.
 */
#ifndef APF_LINUX_LINE_H
#define APF_LINUX_LINE_H

#include "sys.h"

#define LINE_MAX 256

struct line {
	char buf[LINE_MAX];
	u64 len;
};

static inline void put_str(struct line *l, const char *s)
{
	while (*s && l->len < LINE_MAX - 1)
		l->buf[l->len++] = *s++;
}

static inline void put_dec(struct line *l, u64 v)
{
	char digits[20];
	int n = 0;
	do {
		digits[n++] = (char)('0' + v % 10);
		v /= 10;
	} while (v);
	while (n && l->len < LINE_MAX - 1)
		l->buf[l->len++] = digits[--n];
}

static inline void put_signed(struct line *l, s64 v)
{
	if (v < 0) {
		put_str(l, "-");
		put_dec(l, (u64)-v);
	} else {
		put_dec(l, (u64)v);
	}
}

static inline void put_hex16(struct line *l, u64 v)
{
	for (int shift = 60; shift >= 0 && l->len < LINE_MAX - 1; shift -= 4)
		l->buf[l->len++] = "0123456789abcdef"[(v >> shift) & 0xf];
}

static inline void put_bytes(struct line *l, const char *s, u64 n)
{
	for (u64 i = 0; i < n && l->len < LINE_MAX - 1; i++)
		l->buf[l->len++] = s[i];
}

static inline void emit(struct line *l)
{
	l->buf[l->len++] = '\n';
	u64 off = 0;
	while (off < l->len) {
		s64 n = sys_write(1, l->buf + off, l->len - off);
		if (n == -EINTR)
			continue;
		if (n <= 0)
			return; /* no console: nothing else to tell it to */
		off += (u64)n;
	}
}

#endif
