/*
 * Boot: the run configuration, memory layout, bringing up the other vCPUs, and
 * the end of the run.
 */
#include "kernel.h"

#define MiB (1024ul * 1024)
#define PAGE_ALIGN(x) (((x) + APF_PAGE_SIZE - 1) & ~(u64)(APF_PAGE_SIZE - 1))
/* SCTLR_EL1: RES1 bits, stack alignment checks at EL1 and EL0; MMU and caches off. */
#define SCTLR_EL1_RES1 0x30D00800ul
#define SCTLR_EL1_SA (1ul << 3)
#define SCTLR_EL1_SA0 (1ul << 4)

struct cpu cpus[MAX_CPUS];
struct config config;
struct proc procs[MAX_PROCS];
static struct apf_proc_result local_results[MAX_PROCS];	/* without a boot block */
static struct apf_boot_block *const boot = (struct apf_boot_block *)APF_BOOT_BLOCK_GPA;
static u64 boot_ticks;	/* virtual counter at boot, for the run's length */
extern char __image_end[];

/*
 * The built-in run, used when no VMM passed a boot block (QEMU). Mirrored by
 * apf_vm::workload::default_config(), which the QEMU cross-check compares.
 */
#define DEFAULT_NR_VCPUS 2
#define DEFAULT_RAM_SIZE (256 * MiB)
static const struct apf_proc_spec default_procs[] = {
	{ APF_WORKLOAD_SCAN, 0, 8 * MiB, 200000, 0x5ca0000000000001, APF_WRITE_PCT_ALL, 0 },
	{ APF_WORKLOAD_CALC, 0, 0, 4000, 0xca1c000000000002, APF_WRITE_PCT_ALL, 0 },
	{ APF_WORKLOAD_SCAN, 1, 8 * MiB, 200000, 0x5ca0000000000003, APF_WRITE_PCT_ALL, 0 },
	{ APF_WORKLOAD_CALC, 1, 0, 4000, 0xca1c000000000004, APF_WRITE_PCT_ALL, 0 },
};

static const char *const kind_names[] = { "?", "scan", "calc", "kv", "build" };
static const char *const state_names[] = { "new", "running", "done", "killed" };

static noreturn void power_off(void)
{
	barrier();
	hvc(PSCI_SYSTEM_OFF, 0, 0, 0);
	park();
}

static noreturn void fatal(const char *what, u64 value)
{
	kprintf("APF-ERROR %s 0x%lx\n", what, value);
	power_off();
}

int stop_requested(void)
{
	return config.from_boot_block && *(volatile u32 *)&boot->stop;
}

/* Smallest working set each kind can run on (kv needs a table of 4 entries). */
static u64 min_mem_bytes(u32 kind)
{
	switch (kind) {
	case APF_WORKLOAD_SCAN:
	case APF_WORKLOAD_BUILD:
		return APF_PAGE_SIZE;
	case APF_WORKLOAD_KV:
		return 64;
	default:
		return 0;
	}
}

/* Reads the boot block (or the defaults), checks it and lays out memory. */
static void load_config(void)
{
	const struct apf_proc_spec *specs = default_procs;
	config.nr_vcpus = DEFAULT_NR_VCPUS;
	config.nr_procs = sizeof(default_procs) / sizeof(default_procs[0]);
	config.ram_base = APF_RAM_BASE;
	config.ram_size = DEFAULT_RAM_SIZE;
	if (boot->magic == APF_BOOT_MAGIC) {
		if (boot->version != APF_BOOT_VERSION)
			fatal("boot block version", boot->version);
		config.from_boot_block = 1;
		config.nr_vcpus = boot->nr_vcpus;
		config.nr_procs = boot->nr_procs;
		config.ram_base = boot->ram_base;
		config.ram_size = boot->ram_size;
		specs = boot->procs;
	}
	if (config.nr_vcpus < 1 || config.nr_vcpus > MAX_CPUS)
		fatal("nr_vcpus", config.nr_vcpus);
	if (config.nr_procs < 1 || config.nr_procs > MAX_PROCS)
		fatal("nr_procs", config.nr_procs);
	if (config.ram_base != APF_RAM_BASE)
		fatal("ram_base", config.ram_base);
	u64 ram_end = config.ram_base + config.ram_size;
	u64 next = PAGE_ALIGN((u64)__image_end);
	if (config.ram_size > (1ul << 48) || next > ram_end)
		fatal("ram_size", config.ram_size);

	for (unsigned i = 0; i < config.nr_procs; i++) {
		struct proc *p = &procs[i];
		p->spec = specs[i];
		if (p->spec.kind < APF_WORKLOAD_SCAN || p->spec.kind > APF_WORKLOAD_BUILD)
			fatal("proc kind", p->spec.kind);
		if (p->spec.vcpu >= config.nr_vcpus)
			fatal("proc vcpu", p->spec.vcpu);
		if (p->spec.write_pct > APF_WRITE_PCT_ALL)
			fatal("proc write_pct", p->spec.write_pct);
		if (p->spec.mem_bytes < min_mem_bytes(p->spec.kind) ||
		    p->spec.mem_bytes > ram_end - next)
			fatal("proc mem_bytes", p->spec.mem_bytes);
		p->idx = i;
		p->mem_base = next;
		next += PAGE_ALIGN(p->spec.mem_bytes);
		p->res = config.from_boot_block ? &boot->results[i] : &local_results[i];
		proc_init(p);

		struct cpu *c = &cpus[p->spec.vcpu];
		c->procs[c->nr_procs++] = p;
		c->alive++;
		c->rr = c->nr_procs - 1;	/* the first one pinned runs first */
	}
	kprintf("apf-guest: config=%s vcpus=%u procs=%u ram=0x%lx heap=0x%lx..0x%lx\n",
		config.from_boot_block ? "boot-block" : "default", config.nr_vcpus,
		config.nr_procs, config.ram_size, PAGE_ALIGN((u64)__image_end), next);
}

static void boot_primary(void)
{
	boot_ticks = read_sysreg(cntvct_el0);
	load_config();
	gic_dist_init();
	for (u64 i = 1; i < config.nr_vcpus; i++) {
		/* MPIDR of vCPU i is Aff0 = i on the virt platform (up to 8 vCPUs). */
		s64 ret = hvc(PSCI_CPU_ON, i, (u64)secondary_entry, i);
		if (ret != PSCI_RET_SUCCESS)
			fatal("PSCI CPU_ON", (u64)ret);
	}
}

/* Every vCPU starts here from entry.S with its stack set up. */
noreturn void cpu_main(u64 id, u64 stack_top)
{
	struct cpu *c = &cpus[id];
	c->id = (unsigned)id;
	c->stack_top = stack_top;
	write_sysreg(tpidr_el1, (u64)c);
	write_sysreg(sctlr_el1, SCTLR_EL1_RES1 | SCTLR_EL1_SA | SCTLR_EL1_SA0);
	isb();
	if (id == 0)
		boot_primary();
	if (gic_cpu_init(c->id))
		fatal("GICR_TYPER affinity, cpu", id);
	timer_start();
	apf_cpu_init(c);
	enter_scheduler(stack_top);
}

static void print_results(void)
{
	for (unsigned i = 0; i < config.nr_procs; i++) {
		const struct proc *p = &procs[i];
		const struct apf_proc_result *r = p->res;
		kprintf("APF-RESULT proc=%u kind=%s vcpu=%u state=%s progress=%lu "
			"checksum=0x%lx esr=0x%x mem=%lu work=%lu seed=0x%lx write=%u\n",
			i, kind_names[p->spec.kind], p->spec.vcpu,
			state_names[r->state & 3], r->progress, r->checksum, r->kill_esr,
			p->spec.mem_bytes, p->spec.work, p->spec.seed, p->spec.write_pct);
	}
	kprintf("APF-END procs=%u ticks=%lu cntfrq=%lu\n", config.nr_procs,
		read_sysreg(cntvct_el0) - boot_ticks, read_sysreg(cntfrq_el0));
}

/*
 * This vCPU has no process left. Secondaries go offline; vCPU 0 waits for them,
 * reports and powers the machine off.
 */
noreturn void cpu_finish(struct cpu *c)
{
	apf_cpu_offline(c);
	if (c->id != 0) {
		timer_stop();
		c->offline = 1;
		barrier();
		hvc(PSCI_CPU_OFF, 0, 0, 0);
		park();
	}
	for (unsigned i = 1; i < config.nr_vcpus; i++)
		while (!cpus[i].offline) {
			wfi();		/* the tick keeps coming */
			irq_dispatch(c);
		}
	timer_stop();
	print_results();
	if (config.from_boot_block)
		*(volatile u32 *)&boot->finished = 1;
	power_off();
}
