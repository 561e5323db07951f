/*
 * GICv3 (QEMU virt layout, one security state, everything in group 1) and the
 * EL1 virtual timer that drives preemption.
 */
#include "kernel.h"

#define GICD_CTLR		0x0000
#define GICD_CTLR_RWP		(1u << 31)
#define GICD_CTLR_ARE		(1u << 4)
#define GICD_CTLR_ENABLE_G1	(1u << 1)

#define GICR_TYPER_AFF		0x000C	/* GICR_TYPER[63:32]: this frame's affinity */
#define GICR_WAKER		0x0014
#define GICR_WAKER_SLEEP	(1u << 1)	/* ProcessorSleep */
#define GICR_WAKER_ASLEEP	(1u << 2)	/* ChildrenAsleep */
#define GICR_IGROUPR0		0x0080	/* SGI frame */
#define GICR_ISENABLER0		0x0100
#define GICR_ICENABLER0		0x0180
#define GICR_IPRIORITYR		0x0400
#define GICR_ICFGR1		0x0C04

#define PRIO_DEFAULT		0x80
#define PMR_UNMASK_ALL		0xF0

#define CNTV_CTL_ENABLE		1u

static u64 timer_period;

static u64 gicr_rd(unsigned cpu) { return APF_GICR_BASE + (u64)cpu * APF_GICR_STRIDE; }
static u64 gicr_sgi(unsigned cpu) { return gicr_rd(cpu) + APF_GICR_SGI_OFFSET; }

void gic_dist_init(void)
{
	mmio_write32(APF_GICD_BASE + GICD_CTLR, GICD_CTLR_ARE);
	while (mmio_read32(APF_GICD_BASE + GICD_CTLR) & GICD_CTLR_RWP)
		;
	mmio_write32(APF_GICD_BASE + GICD_CTLR, GICD_CTLR_ARE | GICD_CTLR_ENABLE_G1);
}

/* Wakes this vCPU's redistributor and enables its CPU interface. 0 on success. */
int gic_cpu_init(unsigned cpu)
{
	u64 rd = gicr_rd(cpu);
	if ((mmio_read32(rd + GICR_TYPER_AFF) & 0xff) != cpu)
		return -1;
	mmio_write32(rd + GICR_WAKER, mmio_read32(rd + GICR_WAKER) & ~GICR_WAKER_SLEEP);
	while (mmio_read32(rd + GICR_WAKER) & GICR_WAKER_ASLEEP)
		;
	mmio_write32(gicr_sgi(cpu) + GICR_IGROUPR0, ~0u);

	write_sysreg(icc_sre_el1, read_sysreg(icc_sre_el1) | 1);	/* SRE */
	isb();
	write_sysreg(icc_pmr_el1, PMR_UNMASK_ALL);
	write_sysreg(icc_bpr1_el1, 0);
	write_sysreg(icc_igrpen1_el1, 1);
	isb();
	return 0;
}

/* Enables or disables a PPI as level-triggered, group 1, default priority. */
void gic_ppi_enable(unsigned cpu, u32 intid, int enable)
{
	u64 sgi = gicr_sgi(cpu);
	u32 bit = 1u << intid;
	if (!enable) {
		mmio_write32(sgi + GICR_ICENABLER0, bit);
		return;
	}
	u64 prio = sgi + GICR_IPRIORITYR + (intid & ~3u);
	u32 shift = (intid & 3) * 8;
	mmio_write32(prio, (mmio_read32(prio) & ~(0xffu << shift)) | (PRIO_DEFAULT << shift));
	u32 cfg_shift = (intid - 16) * 2 + 1;	/* Int_config bit: 0 = level */
	mmio_write32(sgi + GICR_ICFGR1, mmio_read32(sgi + GICR_ICFGR1) & ~(1u << cfg_shift));
	mmio_write32(sgi + GICR_ISENABLER0, bit);
}

u32 gic_ack(void)
{
	u32 intid = (u32)read_sysreg(icc_iar1_el1) & 0xffffff;
	__asm__ volatile("dsb sy" ::: "memory");
	return intid;
}

void gic_eoi(u32 intid)
{
	write_sysreg(icc_eoir1_el1, intid);
	isb();
}

void timer_start(void)
{
	timer_period = read_sysreg(cntfrq_el0) / TIMER_HZ;
	gic_ppi_enable(this_cpu()->id, PPI_TIMER_VIRT, 1);
	timer_rearm();
	write_sysreg(cntv_ctl_el0, CNTV_CTL_ENABLE);
	isb();
}

/* Writing TVAL also lowers the (level) timer interrupt until the next expiry. */
void timer_rearm(void)
{
	write_sysreg(cntv_tval_el0, timer_period);
	isb();
}

void timer_stop(void)
{
	write_sysreg(cntv_ctl_el0, 0);
	gic_ppi_enable(this_cpu()->id, PPI_TIMER_VIRT, 0);
	isb();
}
