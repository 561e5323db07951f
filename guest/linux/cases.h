/* The hostile cases of the apf module (cases.c), run by init for apf.case=. */
#ifndef APF_LINUX_CASES_H
#define APF_LINUX_CASES_H

#include "sys.h"

/* Runs the case named by name[0..len) and prints its apf-case line; 0 = ok. */
int run_case(const char *name, u64 len);

#endif
