/*
 * Entry of the CoreMark image: vCPU 0 at 0x40080000, EL1h, MMU off (apf's
 * --image and QEMU's -kernel both start a flat image so). Clears the BSS, sets
 * a stack and the exception vectors, and calls coremark_boot (core_portme.c),
 * which runs CoreMark and powers off. Other vCPUs, if any, park.
 */
	.section .text.boot, "ax"
	.globl _start
_start:
	msr	daifset, #0xf
	mrs	x1, mpidr_el1
	and	x1, x1, #0xff
	cbnz	x1, park
	adrp	x1, __bss_start
	add	x1, x1, :lo12:__bss_start
	adrp	x2, __bss_end
	add	x2, x2, :lo12:__bss_end
1:	cmp	x1, x2
	b.hs	2f
	str	xzr, [x1], #8
	b	1b
2:	adrp	x1, __stack_top
	add	x1, x1, :lo12:__stack_top
	mov	sp, x1
	adrp	x1, vectors
	add	x1, x1, :lo12:vectors
	msr	vbar_el1, x1
	isb
	bl	coremark_boot
park:
	wfi
	b	park

/* Every vector reports itself: CoreMark takes no exceptions when all is well. */
.macro ventry vec
	.balign 0x80
	mov	x0, #\vec
	b	coremark_trap
.endm

	.text
	.balign 2048
vectors:
	.irp vec, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15
	ventry \vec
	.endr
