/*
 * The EL0 stamp job: data that must survive eviction. Its code lives in
 * .text.user, so an SDEI handler can tell the interrupted PC is the job's.
 */
#include "rt.h"

#define WORDS_PER_PAGE (APF_PAGE_SIZE / 8)

/* A value no other word of any job has: the address mixed with the job's salt. */
static ALWAYS_INLINE u64 stamp(u64 salt, u64 addr)
{
	return salt ^ (addr * 0x9e3779b97f4a7c15ul);
}

static ALWAYS_INLINE void verify(struct stamp_job *j, volatile u64 *word, u64 want)
{
	u64 got = *word;
	if (got == want)
		return;
	if (!j->bad) {
		j->bad_addr = (u64)word;
		j->bad_got = got;
		j->bad_want = want;
	}
	j->bad++;
}

static ALWAYS_INLINE void verify_pages(struct stamp_job *j)
{
	for (u64 p = 0; p < j->pages; p++) {
		volatile u64 *page = (volatile u64 *)(j->base + p * APF_PAGE_SIZE);
		verify(j, &page[0], stamp(j->salt, (u64)&page[0]));
		verify(j, &page[WORDS_PER_PAGE - 1],
		       ~stamp(j->salt, (u64)&page[WORDS_PER_PAGE - 1]));
	}
	j->done = 1;
}

SECTION_USER void stamp_worker(u64 arg)
{
	struct stamp_job *j = (struct stamp_job *)arg;
	for (u64 p = 0; p < j->pages; p++) {
		volatile u64 *page = (volatile u64 *)(j->base + p * APF_PAGE_SIZE);
		page[0] = stamp(j->salt, (u64)&page[0]);
		page[WORDS_PER_PAGE - 1] = ~stamp(j->salt, (u64)&page[WORDS_PER_PAGE - 1]);
	}
	user_syscall(SYS_BARRIER);
	verify_pages(j);
	user_syscall(SYS_EXIT);
	__builtin_unreachable();	/* an ended task is never resumed */
}

void stamp_verify(struct stamp_job *j)
{
	verify_pages(j);
}

void stamp_report(const char *name, struct stamp_job *jobs, unsigned n)
{
	u64 bad = 0, pages = 0, unfinished = 0;
	struct stamp_job *first = NULL;
	for (unsigned i = 0; i < n; i++) {
		pages += jobs[i].pages;
		unfinished += !jobs[i].done;
		if (jobs[i].bad && !first)
			first = &jobs[i];
		bad += jobs[i].bad;
	}
	if (first)
		kprintf("FAIL %s got=0x%lx want=0x%lx at=0x%lx bad_words=%lu\n", name,
			first->bad_got, first->bad_want, first->bad_addr, bad);
	else if (unfinished)
		kprintf("FAIL %s got=0x%lx want=0x0 (jobs unfinished)\n", name, unfinished);
	else
		kprintf("OK %s pages=%lu\n", name, pages);
}
