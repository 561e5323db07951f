/* The two functions gcc may call on its own for struct copies and clears. */
#include "kernel.h"

void *memcpy(void *dst, const void *src, size_t n)
{
	u8 *d = dst;
	const u8 *s = src;
	if ((((u64)d | (u64)s | n) & 7) == 0) {
		for (size_t i = 0; i < n; i += 8)
			*(u64 *)(d + i) = *(const u64 *)(s + i);
		return dst;
	}
	for (size_t i = 0; i < n; i++)
		d[i] = s[i];
	return dst;
}

void *memset(void *dst, int c, size_t n)
{
	u8 *d = dst;
	for (size_t i = 0; i < n; i++)
		d[i] = (u8)c;
	return dst;
}
