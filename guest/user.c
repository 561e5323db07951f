/*
 * The workloads: EL0 processes. Each keeps a running checksum over the values it
 * reads and computes, so a host can recompute the checksum after any number of
 * units by replaying the same steps (apf_vm::workload mirrors this file exactly).
 *
 * All start with checksum = rng state = the process seed, and report progress
 * every REPORT_EVERY units and at the end. A process with work == 0 runs until the
 * kernel stops it.
 */
#include "kernel.h"

#define GOLDEN 0x9E3779B97F4A7C15ul
#define REPORT_EVERY 64
#define CALC_ROUNDS 64
#define BUILD_ROUNDS 32
#define BUILD_PAGES 8
#define WORDS_PER_PAGE (APF_PAGE_SIZE / 8)

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

/* --- Mixing functions (splitmix64's finaliser and generator) --- */
static u64 mix64(u64 z)
{
	z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ul;
	z = (z ^ (z >> 27)) * 0x94D049BB133111EBul;
	return z ^ (z >> 31);
}

static u64 rng_next(u64 *state)
{
	*state += GOLDEN;
	return mix64(*state);
}

static u64 fold(u64 c, u64 v)
{
	u64 x = (c ^ v) * 0xFF51AFD7ED558CCDul;
	return x ^ (x >> 33);
}

/* The CPU-only part of calc and build. */
static u64 crunch(u64 x, unsigned rounds)
{
	for (unsigned i = 0; i < rounds; i++)
		x = (x ^ (x >> 31)) * GOLDEN + i;
	return x;
}

static void zero(u64 *p, u64 words)
{
	for (u64 i = 0; i < words; i++)
		p[i] = 0;
}

struct work {
	u64 *mem;
	u64 npages;
	u64 rng;
	u64 checksum;
};

/* scan: read-modify-write one word of a random page. */
static void scan_unit(struct work *w)
{
	u64 r = rng_next(&w->rng);
	u64 page = r % w->npages;
	u64 *word = &w->mem[page * WORDS_PER_PAGE + (r >> 55)];
	u64 v = *word;
	*word = v + (r | 1);
	w->checksum = fold(w->checksum, v + page);
}

static void calc_unit(struct work *w)
{
	w->checksum = fold(w->checksum, crunch(w->checksum, CALC_ROUNDS));
}

/* build: a compute phase, then a memory phase over a run of consecutive pages. */
static void build_unit(struct work *w)
{
	u64 x = crunch(w->checksum, BUILD_ROUNDS);
	u64 first = rng_next(&w->rng) % w->npages;
	for (unsigned j = 0; j < BUILD_PAGES; j++) {
		u64 page = (first + j) % w->npages;
		u64 *word = &w->mem[page * WORDS_PER_PAGE + ((x >> (7 * j)) & (WORDS_PER_PAGE - 1))];
		u64 v = *word;
		*word = v + x;
		w->checksum = fold(w->checksum, v);
	}
	w->checksum = fold(w->checksum, x);
}

/*
 * kv: an open-addressing hash table (linear probing, key 0 = empty) of cap
 * entries, the largest power of two that fits. Keys 1..cap/4 are inserted first;
 * each unit looks up a key in 1..cap/2 and one in eight also updates it, so the
 * table never fills beyond half.
 */
struct kv_entry {
	u64 key, value;
};

struct kv {
	struct kv_entry *table;
	u64 cap;
	unsigned bits;
};

static struct kv_entry *kv_find(const struct kv *kv, u64 key)
{
	u64 i = (key * GOLDEN) >> (64 - kv->bits);
	while (kv->table[i].key != key && kv->table[i].key != 0)
		i = (i + 1) & (kv->cap - 1);
	return &kv->table[i];
}

static void kv_init(struct kv *kv, u64 base, u64 bytes, u64 seed)
{
	kv->table = (struct kv_entry *)base;
	kv->cap = 1;
	kv->bits = 0;
	while (kv->cap * 2 * sizeof(struct kv_entry) <= bytes) {
		kv->cap *= 2;
		kv->bits++;
	}
	zero((u64 *)base, kv->cap * 2);
	for (u64 k = 1; k <= kv->cap / 4; k++) {
		struct kv_entry *e = kv_find(kv, k);
		e->key = k;
		e->value = mix64(seed + k);
	}
}

static void kv_unit(struct kv *kv, struct work *w)
{
	u64 r = rng_next(&w->rng);
	u64 key = 1 + (r >> 8) % (kv->cap / 2);
	struct kv_entry *e = kv_find(kv, key);
	u64 old = e->key == key ? e->value : 0;
	if ((r & 7) == 0) {
		e->key = key;
		e->value = old + (r | 1);
	}
	w->checksum = fold(w->checksum, old + key);
}

noreturn void user_main(u64 kind, u64 base, u64 bytes, u64 work, u64 seed)
{
	static const char *const ready[] = { "", "scan: ready\n", "calc: ready\n",
					     "kv: ready\n", "build: ready\n" };
	struct work w = { (u64 *)base, bytes / APF_PAGE_SIZE, seed, seed };
	struct kv kv = { NULL, 0, 0 };
	if (kind == APF_WORKLOAD_SCAN || kind == APF_WORKLOAD_BUILD)
		zero(w.mem, w.npages * WORDS_PER_PAGE);
	if (kind == APF_WORKLOAD_KV)
		kv_init(&kv, base, bytes, seed);
	sys_print(ready[kind]);

	for (u64 done = 0; work == 0 || done < work;) {
		switch (kind) {
		case APF_WORKLOAD_SCAN:
			scan_unit(&w);
			break;
		case APF_WORKLOAD_CALC:
			calc_unit(&w);
			break;
		case APF_WORKLOAD_KV:
			kv_unit(&kv, &w);
			break;
		case APF_WORKLOAD_BUILD:
			build_unit(&w);
			break;
		}
		done++;
		if (done % REPORT_EVERY == 0 || done == work)
			sys_progress(done, w.checksum);
	}
	sys_exit();
}
