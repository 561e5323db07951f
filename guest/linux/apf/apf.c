// SPDX-License-Identifier: GPL-2.0
/*
 * apf: the guest side of apf's asynchronous page faults, as a loadable module for
 * Debian's stock arm64 kernel.
 *
 * This step only discovers the hypervisor: the SMCCC vendor-hyp UID must be apf's,
 * FEATURES must list the ASYNC_PF function, and its VERSION, SLOTS, SDEI and IRQ
 * sub-functions must describe something usable. One line says what was found.
 * Nothing is enabled yet.
 *
 * The ABI values are guest/include/abi.h's, under the same names: that header
 * needs <stdint.h>, which a kernel build does not have. crates/abi/tests/header.rs
 * checks each literal #define here against abi.h and the Rust side.
 */
#include <linux/arm-smccc.h>
#include <linux/init.h>
#include <linux/kernel.h>
#include <linux/module.h>

#define APF_VERSION 0x010100
#define APF_VERSION_MAJOR(v) (((v) >> 16) & 0xff)
#define APF_VERSION_MINOR(v) (((v) >> 8) & 0xff)

#define SMCCC_VENDOR_HYP_UID 0x8600FF01
#define SMCCC_VENDOR_HYP_FEATURES 0x86000000
#define SMCCC_VENDOR_HYP_FUNC_ASYNC_PF 0x30
#define SMCCC_VENDOR_HYP_ASYNC_PF 0x86000030
#define APF_UID_0 0xE6B1F0A9
#define APF_UID_1 0x21467061
#define APF_UID_2 0x415E8C21
#define APF_UID_3 0xF0A92146

#define ASYNC_PF_FUNC_VERSION 0
#define ASYNC_PF_FUNC_SLOTS 1
#define ASYNC_PF_FUNC_SDEI 2
#define ASYNC_PF_FUNC_IRQ 3

/* PPIs are INTIDs 16..31; 27 is the virtual timer's, which apf never offers. */
#define PPI_FIRST 16
#define PPI_LAST 31
#define PPI_TIMER_VIRT 27

struct apf_params {
	unsigned long version;
	unsigned long slots;
	unsigned long event;
	unsigned long ppi;
};

/* One ASYNC_PF sub-function: the SMCCC status, and x1 into *value. */
static long apf_call(unsigned long subfn, unsigned long *value)
{
	struct arm_smccc_res res;

	arm_smccc_1_1_hvc(SMCCC_VENDOR_HYP_ASYNC_PF, subfn, &res);
	*value = res.a1;
	return (long)res.a0;
}

/* Fills *p from the hypervisor; returns why APF is not offered, or NULL. */
static const char *apf_discover(struct apf_params *p)
{
	static const u32 uid[4] = { APF_UID_0, APF_UID_1, APF_UID_2, APF_UID_3 };
	struct arm_smccc_res res;
	unsigned long fn = SMCCC_VENDOR_HYP_FUNC_ASYNC_PF;
	unsigned long features[4];

	/*
	 * An HVC with no EL2 is UNDEFINED, and firmware reached by SMC is no
	 * hypervisor: ask which conduit Linux found for SMCCC 1.1 before any HVC.
	 * (QEMU's PSCI without SMCCC_VERSION is SMCCC 1.0: no conduit.)
	 */
	switch (arm_smccc_1_1_get_conduit()) {
	case SMCCC_CONDUIT_HVC:
		break;
	case SMCCC_CONDUIT_SMC:
		return "the SMCCC conduit is SMC, not a hypervisor's HVC";
	default:
		return "no SMCCC 1.1 firmware interface";
	}

	arm_smccc_1_1_hvc(SMCCC_VENDOR_HYP_UID, &res);
	if ((u32)res.a0 != uid[0] || (u32)res.a1 != uid[1] ||
	    (u32)res.a2 != uid[2] || (u32)res.a3 != uid[3])
		return "vendor-hyp UID is not apf's";

	/* A 128-bit bitmap, 32 bits per register: function n is bit n % 32 of x[n / 32]. */
	arm_smccc_1_1_hvc(SMCCC_VENDOR_HYP_FEATURES, &res);
	features[0] = res.a0;
	features[1] = res.a1;
	features[2] = res.a2;
	features[3] = res.a3;
	if (!((features[fn / 32] >> (fn % 32)) & 1))
		return "FEATURES does not list ASYNC_PF";

	if (apf_call(ASYNC_PF_FUNC_VERSION, &p->version) != SMCCC_RET_SUCCESS)
		return "VERSION failed";
	if ((p->version >> 24) != 0 || APF_VERSION_MAJOR(p->version) != APF_VERSION_MAJOR(APF_VERSION))
		return "unsupported VERSION";
	if (apf_call(ASYNC_PF_FUNC_SLOTS, &p->slots) != SMCCC_RET_SUCCESS || p->slots == 0)
		return "no SLOTS";
	if (apf_call(ASYNC_PF_FUNC_SDEI, &p->event) != SMCCC_RET_SUCCESS ||
	    p->event == 0 || p->event > U32_MAX)
		return "no SDEI event";
	if (apf_call(ASYNC_PF_FUNC_IRQ, &p->ppi) != SMCCC_RET_SUCCESS ||
	    p->ppi < PPI_FIRST || p->ppi > PPI_LAST || p->ppi == PPI_TIMER_VIRT)
		return "no page-ready PPI";
	return NULL;
}

static int __init apf_init(void)
{
	struct apf_params p = { 0 };
	const char *why = apf_discover(&p);

	/* Loading succeeds either way: "not offered" is an answer, not an error. */
	if (why)
		pr_info("apf: APF not offered (%s)\n", why);
	else
		pr_info("apf: hypervisor offers APF %lu.%lu (%lu slots, SDEI event 0x%lx, PPI %lu)\n",
			APF_VERSION_MAJOR(p.version), APF_VERSION_MINOR(p.version),
			p.slots, p.event, p.ppi);
	return 0;
}

static void __exit apf_exit(void)
{
	pr_info("apf: unloaded\n");
}

module_init(apf_init);
module_exit(apf_exit);

MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("apf asynchronous page faults: guest side");
