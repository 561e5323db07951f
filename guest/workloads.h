/*
 * The workloads' algorithms, shared by the built-in guest's EL0 processes
 * (user.c) and the Linux init (linux/init.c). Pure functions over a working set
 * the caller maps: no system calls, no globals, so both environments run the same
 * code and apf_vm::workload (crates/vm/src/workload.rs) can mirror it exactly.
 *
 * Every process starts with checksum = rng state = its seed and reports
 * (units done, checksum) every WORKLOAD_REPORT_EVERY units and at the end.
 */
#ifndef APF_WORKLOADS_H
#define APF_WORKLOADS_H

#include <stdint.h>
#include "abi.h"

#define WORKLOAD_REPORT_EVERY 64

#define WORKLOAD_GOLDEN 0x9E3779B97F4A7C15ul
#define WORKLOAD_CALC_ROUNDS 64
#define WORKLOAD_BUILD_ROUNDS 32
#define WORKLOAD_BUILD_PAGES 8
#define WORKLOAD_WORDS_PER_PAGE (APF_PAGE_SIZE / 8)

/* --- Mixing functions (splitmix64's finaliser and generator) --- */
static inline uint64_t workload_mix64(uint64_t z)
{
	z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ul;
	z = (z ^ (z >> 27)) * 0x94D049BB133111EBul;
	return z ^ (z >> 31);
}

static inline uint64_t workload_rng_next(uint64_t *state)
{
	*state += WORKLOAD_GOLDEN;
	return workload_mix64(*state);
}

static inline uint64_t workload_fold(uint64_t c, uint64_t v)
{
	uint64_t x = (c ^ v) * 0xFF51AFD7ED558CCDul;
	return x ^ (x >> 33);
}

/* The CPU-only part of calc and build. */
static inline uint64_t workload_crunch(uint64_t x, unsigned rounds)
{
	for (unsigned i = 0; i < rounds; i++)
		x = (x ^ (x >> 31)) * WORKLOAD_GOLDEN + i;
	return x;
}

static inline void workload_zero(uint64_t *p, uint64_t words)
{
	for (uint64_t i = 0; i < words; i++)
		p[i] = 0;
}

/*
 * kv: an open-addressing hash table (linear probing, key 0 = empty) of cap
 * entries, the largest power of two that fits. Keys 1..cap/4 are inserted first;
 * each unit looks up a key in 1..cap/2 and one in eight also updates it, so the
 * table never fills beyond half.
 */
struct workload_kv_entry {
	uint64_t key, value;
};

/* One process's state. */
struct workload {
	uint64_t kind;		/* APF_WORKLOAD_* */
	uint64_t *mem;		/* the working set */
	uint64_t npages;	/* scan, build: pages of the working set */
	uint64_t write_pct;	/* scan: percent of accesses that write */
	uint64_t rng;
	uint64_t checksum;
	struct workload_kv_entry *kv_table;
	uint64_t kv_cap;
	unsigned kv_bits;
};

/*
 * Whether a scan access drawn as r writes: write_pct of them, chosen from a mix of
 * r (not r's own bits, which chose the page and word) so the choice is
 * reproducible and independent of where the access lands.
 */
static inline int workload_scan_writes(uint64_t r, uint64_t write_pct)
{
	return write_pct >= APF_WRITE_PCT_ALL || workload_mix64(r) % 100 < write_pct;
}

/* scan: read one word of a random page, and for write_pct of them write it back. */
static inline void workload_scan_unit(struct workload *w)
{
	uint64_t r = workload_rng_next(&w->rng);
	uint64_t page = r % w->npages;
	uint64_t *word = &w->mem[page * WORKLOAD_WORDS_PER_PAGE + (r >> 55)];
	uint64_t v = *word;
	if (workload_scan_writes(r, w->write_pct))
		*word = v + (r | 1);
	w->checksum = workload_fold(w->checksum, v + page);
}

static inline void workload_calc_unit(struct workload *w)
{
	w->checksum = workload_fold(w->checksum, workload_crunch(w->checksum, WORKLOAD_CALC_ROUNDS));
}

/* build: a compute phase, then a memory phase over a run of consecutive pages. */
static inline void workload_build_unit(struct workload *w)
{
	uint64_t x = workload_crunch(w->checksum, WORKLOAD_BUILD_ROUNDS);
	uint64_t first = workload_rng_next(&w->rng) % w->npages;
	for (unsigned j = 0; j < WORKLOAD_BUILD_PAGES; j++) {
		uint64_t page = (first + j) % w->npages;
		uint64_t *word = &w->mem[page * WORKLOAD_WORDS_PER_PAGE +
					 ((x >> (7 * j)) & (WORKLOAD_WORDS_PER_PAGE - 1))];
		uint64_t v = *word;
		*word = v + x;
		w->checksum = workload_fold(w->checksum, v);
	}
	w->checksum = workload_fold(w->checksum, x);
}

static inline struct workload_kv_entry *workload_kv_find(const struct workload *w, uint64_t key)
{
	uint64_t i = (key * WORKLOAD_GOLDEN) >> (64 - w->kv_bits);
	while (w->kv_table[i].key != key && w->kv_table[i].key != 0)
		i = (i + 1) & (w->kv_cap - 1);
	return &w->kv_table[i];
}

static inline void workload_kv_init(struct workload *w, uint64_t bytes, uint64_t seed)
{
	w->kv_table = (struct workload_kv_entry *)w->mem;
	w->kv_cap = 1;
	w->kv_bits = 0;
	while (w->kv_cap * 2 * sizeof(struct workload_kv_entry) <= bytes) {
		w->kv_cap *= 2;
		w->kv_bits++;
	}
	workload_zero(w->mem, w->kv_cap * 2);
	for (uint64_t k = 1; k <= w->kv_cap / 4; k++) {
		struct workload_kv_entry *e = workload_kv_find(w, k);
		e->key = k;
		e->value = workload_mix64(seed + k);
	}
}

static inline void workload_kv_unit(struct workload *w)
{
	uint64_t r = workload_rng_next(&w->rng);
	uint64_t key = 1 + (r >> 8) % (w->kv_cap / 2);
	struct workload_kv_entry *e = workload_kv_find(w, key);
	uint64_t old = e->key == key ? e->value : 0;
	if ((r & 7) == 0) {
		e->key = key;
		e->value = old + (r | 1);
	}
	w->checksum = workload_fold(w->checksum, old + key);
}

/*
 * Prepares a process over the working set mem[0..bytes) (write_pct: scan's
 * share of writing accesses, 0..100), which must already be
 * zero for scan and build (as fresh anonymous memory under Linux is); kv's table
 * is filled here. The caller checked kind and bytes against the minimum each kind
 * needs (a page for scan and build, 64 bytes for kv).
 */
static inline void workload_start_zeroed(struct workload *w, uint64_t kind, uint64_t *mem,
					 uint64_t bytes, uint64_t seed, uint64_t write_pct)
{
	w->kind = kind;
	w->mem = mem;
	w->npages = bytes / APF_PAGE_SIZE;
	w->write_pct = write_pct;
	w->rng = seed;
	w->checksum = seed;
	w->kv_table = 0;
	w->kv_cap = 0;
	w->kv_bits = 0;
	if (kind == APF_WORKLOAD_KV)
		workload_kv_init(w, bytes, seed);
}

/* workload_start_zeroed over memory of any content: scan's and build's is zeroed first. */
static inline void workload_start(struct workload *w, uint64_t kind, uint64_t *mem,
				  uint64_t bytes, uint64_t seed, uint64_t write_pct)
{
	if (kind == APF_WORKLOAD_SCAN || kind == APF_WORKLOAD_BUILD)
		workload_zero(mem, bytes / APF_PAGE_SIZE * WORKLOAD_WORDS_PER_PAGE);
	workload_start_zeroed(w, kind, mem, bytes, seed, write_pct);
}

/* Does one unit of work. */
static inline void workload_step(struct workload *w)
{
	switch (w->kind) {
	case APF_WORKLOAD_SCAN:
		workload_scan_unit(w);
		break;
	case APF_WORKLOAD_CALC:
		workload_calc_unit(w);
		break;
	case APF_WORKLOAD_KV:
		workload_kv_unit(w);
		break;
	case APF_WORKLOAD_BUILD:
		workload_build_unit(w);
		break;
	}
}

#endif
