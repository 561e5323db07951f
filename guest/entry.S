/*
 * Entry points, exception vectors, the SDEI trampoline and the HVC helper.
 *
 * Every exception saves a struct frame (kernel.h) on the current kernel stack,
 * calls trap(frame, vector) and returns through the frame, which the scheduler
 * may have replaced with another process's registers.
 */
#define FRAME_SIZE	272		/* sizeof(struct frame) */
#define F_SP_EL0	248		/* offsetof(struct frame, sp_el0) */
#define F_ELR		256
#define F_SPSR		264
#define KSTACK_SHIFT	14		/* KSTACK_SIZE = 16 KiB */
#define MAX_CPUS	8

	.section .text.boot, "ax"
	.globl _start
_start:
	/* vCPU 0, EL1h, MMU off. x0 (0 on apf, the DTB on QEMU) is not used. */
	msr	daifset, #0xf
	mrs	x0, mpidr_el1
	and	x0, x0, #0xff
	cbnz	x0, park		/* only Aff0 0 boots; others come via CPU_ON */
	adrp	x1, __bss_start
	add	x1, x1, :lo12:__bss_start
	adrp	x2, __bss_end
	add	x2, x2, :lo12:__bss_end
1:	cmp	x1, x2
	b.hs	cpu_entry
	str	xzr, [x1], #8
	b	1b

	/* PSCI CPU_ON lands here (EL1h, MMU off, x0 = context id). */
	.globl secondary_entry
secondary_entry:
	msr	daifset, #0xf
	mrs	x0, mpidr_el1
	and	x0, x0, #0xff

cpu_entry:				/* x0 = this vCPU's Aff0 */
	cmp	x0, #MAX_CPUS
	b.hs	park
	adrp	x1, kernel_stacks
	add	x1, x1, :lo12:kernel_stacks
	add	x2, x0, #1
	add	x1, x1, x2, lsl #KSTACK_SHIFT
	mov	sp, x1
	adrp	x2, vectors
	add	x2, x2, :lo12:vectors
	msr	vbar_el1, x2
	isb
	bl	cpu_main		/* cpu_main(cpu, stack_top); never returns */

	.globl park
park:
	msr	daifset, #0xf
1:	wfi
	b	1b

/* enter_scheduler(stack_top): drop the boot call chain and run processes. */
	.text
	.globl enter_scheduler
enter_scheduler:
	mov	sp, x0
	sub	sp, sp, #FRAME_SIZE
	mov	x0, sp
	bl	sched_first
	b	kernel_exit

/* --- Exception vectors --- */
.macro ventry vec
	.balign 0x80
	sub	sp, sp, #FRAME_SIZE
	stp	x0, x1, [sp, #0]
	mov	x1, #\vec
	b	kernel_entry
.endm

	.balign 2048
	.globl vectors
vectors:
	ventry 0	/* current EL, SP_EL0: never used */
	ventry 1
	ventry 2
	ventry 3
	ventry 4	/* current EL, SP_ELx: sync (HVC that the platform lacks) */
	ventry 5
	ventry 6
	ventry 7
	ventry 8	/* lower EL, AArch64: sync (SVC, aborts) */
	ventry 9	/* lower EL, AArch64: IRQ (also SDEI COMPLETE_AND_RESUME) */
	ventry 10
	ventry 11
	ventry 12	/* lower EL, AArch32: never used */
	ventry 13
	ventry 14
	ventry 15

kernel_entry:				/* x0, x1 saved; x1 = vector */
	stp	x2, x3, [sp, #16]
	stp	x4, x5, [sp, #32]
	stp	x6, x7, [sp, #48]
	stp	x8, x9, [sp, #64]
	stp	x10, x11, [sp, #80]
	stp	x12, x13, [sp, #96]
	stp	x14, x15, [sp, #112]
	stp	x16, x17, [sp, #128]
	stp	x18, x19, [sp, #144]
	stp	x20, x21, [sp, #160]
	stp	x22, x23, [sp, #176]
	stp	x24, x25, [sp, #192]
	stp	x26, x27, [sp, #208]
	stp	x28, x29, [sp, #224]
	mrs	x2, sp_el0
	stp	x30, x2, [sp, #240]
	mrs	x2, elr_el1
	mrs	x3, spsr_el1
	stp	x2, x3, [sp, #F_ELR]
	mov	x0, sp
	bl	trap

kernel_exit:				/* sp = the frame to return to */
	ldp	x30, x2, [sp, #240]
	msr	sp_el0, x2
	ldp	x2, x3, [sp, #F_ELR]
	msr	elr_el1, x2
	msr	spsr_el1, x3
	ldp	x0, x1, [sp, #0]
	ldp	x2, x3, [sp, #16]
	ldp	x4, x5, [sp, #32]
	ldp	x6, x7, [sp, #48]
	ldp	x8, x9, [sp, #64]
	ldp	x10, x11, [sp, #80]
	ldp	x12, x13, [sp, #96]
	ldp	x14, x15, [sp, #112]
	ldp	x16, x17, [sp, #128]
	ldp	x18, x19, [sp, #144]
	ldp	x20, x21, [sp, #160]
	ldp	x22, x23, [sp, #176]
	ldp	x24, x25, [sp, #192]
	ldp	x26, x27, [sp, #208]
	ldp	x28, x29, [sp, #224]
	add	sp, sp, #FRAME_SIZE
	eret

/*
 * SDEI event entry: EL1h, DAIF masked, x0 = event, x1 = argument, x2 = the
 * interrupted PC, x3 = its PSTATE. The host restores x0..x17 on COMPLETE (so x9 and
 * x10 are free to carry the call across the restore); x18..x30
 * still belong to the interrupted context and are preserved here. SP is the
 * current kernel stack and is left as found.
 */
	.globl sdei_entry
sdei_entry:
	stp	x18, x19, [sp, #-112]!
	stp	x20, x21, [sp, #16]
	stp	x22, x23, [sp, #32]
	stp	x24, x25, [sp, #48]
	stp	x26, x27, [sp, #64]
	stp	x28, x29, [sp, #80]
	str	x30, [sp, #96]
	bl	apf_sdei_handler	/* x0 = COMPLETE or COMPLETE_AND_RESUME, x1 = resume address */
	mov	x9, x0
	mov	x10, x1
	ldp	x20, x21, [sp, #16]
	ldp	x22, x23, [sp, #32]
	ldp	x24, x25, [sp, #48]
	ldp	x26, x27, [sp, #64]
	ldp	x28, x29, [sp, #80]
	ldr	x30, [sp, #96]
	ldp	x18, x19, [sp], #112
	mov	x0, x9
	mov	x1, x10
	hvc	#0
	b	park			/* COMPLETE does not return */

/*
 * smccc_hvc(res, fn, a1..a5): an SMCCC call over HVC. SMCCC 1.0 lets the callee
 * clobber x4..x17, so the result pointer is kept on the stack.
 */
	.globl smccc_hvc
smccc_hvc:
	str	x0, [sp, #-16]!
	mov	x0, x1
	mov	x1, x2
	mov	x2, x3
	mov	x3, x4
	mov	x4, x5
	mov	x5, x6
	hvc	#0
	ldr	x9, [sp], #16
	stp	x0, x1, [x9]
	stp	x2, x3, [x9, #16]
	ret

	.bss
	.balign 16
	.globl kernel_stacks
kernel_stacks:
	.space MAX_CPUS << KSTACK_SHIFT
