// SPDX-License-Identifier: Apache-2.0
/*
 * Syscall loop for bench/kernel_cost.py (which builds it with gcc -O2).
 *
 *   loop KIND CALLS [CPU]
 *
 * KIND is one of
 *   getppid        always succeeds, does almost nothing in the kernel: the loop
 *                  is dominated by the syscall entry/exit path we want to cost;
 *   getpgid-esrch  getpgid(INT_MAX), always fails with ESRCH: exercises the
 *                  error-counting branch of the exit program;
 *   read-zero      read(2) of one byte from /dev/zero: a call with a real body.
 * CPU (optional, -1 = don't): pin to that CPU, so that runs compared with each
 * other do not differ by migrations.
 *
 * The loop starts only after one byte arrives on stdin, so the tracer can
 * register this pid (track it or not) between fork and the first timed call.
 * Output, one line on stdout: "<ns per call> <syscall nr> <calls>"; the syscall
 * number lets the tracer look up its own counters without a syscall table.
 * Only the loop is timed (CLOCK_MONOTONIC, read once before and once after).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "bench.h"

int main(int argc, char **argv)
{
	if (argc < 3 || argc > 4) {
		fprintf(stderr, "usage: %s getppid|getpgid-esrch|read-zero CALLS [CPU]\n", argv[0]);
		return 2;
	}
	const char *kind = argv[1];
	long calls = strtol(argv[2], NULL, 10);
	int cpu = argc == 4 ? atoi(argv[3]) : -1;
	if (calls <= 0) {
		fprintf(stderr, "loop: CALLS must be positive\n");
		return 2;
	}
	if (cpu >= 0) {
		cpu_set_t set;
		CPU_ZERO(&set);
		CPU_SET(cpu, &set);
		if (sched_setaffinity(0, sizeof(set), &set) != 0)
			return die("sched_setaffinity");
	}

	long nr;
	int fd = -1;
	char byte;
	if (strcmp(kind, "getppid") == 0) {
		nr = SYS_getppid;
	} else if (strcmp(kind, "getpgid-esrch") == 0) {
		nr = SYS_getpgid;
	} else if (strcmp(kind, "read-zero") == 0) {
		nr = SYS_read;
		fd = open("/dev/zero", O_RDONLY);
		if (fd < 0)
			return die("open /dev/zero");
	} else {
		fprintf(stderr, "loop: unknown kind %s\n", kind);
		return 2;
	}

	/* Check once, untimed, that the call behaves as the kind says: a bench that
	 * silently measured a different path would be worse than none. INT_MAX is
	 * above any possible pid_max (at most 2^22), so no process can have it. */
	if (nr == SYS_getpgid && (syscall(SYS_getpgid, INT_MAX) != -1 || errno != ESRCH))
		return die("getpgid(INT_MAX) did not fail with ESRCH");
	if (nr == SYS_read && syscall(SYS_read, fd, &byte, 1) != 1)
		return die("read /dev/zero");

	/* Wait for the go byte (EOF also means go, so a closed pipe cannot hang us). */
	if (read(0, &byte, 1) < 0)
		return die("read stdin");

	/* Three separate loops rather than a switch inside one, so the timed body
	 * is the syscall and nothing else. syscall(2) is an external call the
	 * compiler cannot drop or hoist. */
	long t0 = now_ns();
	if (nr == SYS_getppid) {
		for (long i = 0; i < calls; i++)
			syscall(SYS_getppid);
	} else if (nr == SYS_getpgid) {
		for (long i = 0; i < calls; i++)
			syscall(SYS_getpgid, INT_MAX);
	} else {
		for (long i = 0; i < calls; i++)
			syscall(SYS_read, fd, &byte, 1);
	}
	long t1 = now_ns();

	printf("%.3f %ld %ld\n", (double)(t1 - t0) / (double)calls, nr, calls);
	return 0;
}
