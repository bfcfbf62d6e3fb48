// SPDX-License-Identifier: Apache-2.0
/*
 * Paced getppid loop for bench/events_throughput.py (which builds it with gcc -O2).
 *
 *   events_loop RATE CALLS SECONDS CPU OUT
 *
 * Makes getppid calls at RATE calls/s (0: flat out) until CALLS calls were made or
 * SECONDS (0: no limit) have passed, whichever comes first. Pacing busy-waits on
 * CLOCK_MONOTONIC (read through the vDSO: no syscall, so no event) between bursts
 * of at most 16 calls spanning at most 20 us of the schedule, and keeps
 * to the schedule from the start (a late burst is followed by the ones it owes, up to
 * the time limit), so the achieved rate is the target unless the calls themselves are
 * slower than the target period.
 * CPU: pin to that CPU (-1: don't). OUT: where the one result line goes ("-": stdout),
 * since under a tracer stdout may be the tracer's; it is written after the loop:
 *   "<calls made> <start ns> <end ns> <syscall nr>"
 * start and end are CLOCK_MONOTONIC readings taken before the first call and after the
 * last one (absolute, so the bench can compare them with its own clock readings).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "bench.h"

#define MAX_BURST 16L        /* most calls between two clock reads */
#define MAX_BURST_NS 20000.0 /* most schedule time one burst may cover */


int main(int argc, char **argv)
{
	if (argc != 6) {
		fprintf(stderr, "usage: %s RATE CALLS SECONDS CPU OUT\n", argv[0]);
		return 2;
	}
	double rate = strtod(argv[1], NULL);
	long calls = strtol(argv[2], NULL, 10);
	double seconds = strtod(argv[3], NULL);
	int cpu = atoi(argv[4]);
	const char *out_path = argv[5];
	if (rate < 0 || calls <= 0 || seconds < 0) {
		fprintf(stderr, "events_loop: RATE >= 0, CALLS > 0, SECONDS >= 0\n");
		return 2;
	}
	if (cpu >= 0) {
		cpu_set_t set;
		CPU_ZERO(&set);
		CPU_SET(cpu, &set);
		if (sched_setaffinity(0, sizeof(set), &set) != 0)
			return die("sched_setaffinity");
	}
	/* Opened before the loop, so the loop makes no call but getppid. */
	FILE *out = strcmp(out_path, "-") == 0 ? stdout : fopen(out_path, "w");
	if (out == NULL)
		return die(out_path);

	double period = rate > 0 ? 1e9 / rate : 0; /* ns between two calls */
	/* A burst spans at most MAX_BURST_NS of the schedule (one call at slow rates):
	 * the calls are made back to back, so the rate is even at that time scale. */
	long burst = period > 0 ? (long)(MAX_BURST_NS / period) : MAX_BURST;
	if (burst < 1)
		burst = 1;
	if (burst > MAX_BURST)
		burst = MAX_BURST;
	long limit_ns = (long)(seconds * 1e9);
	long done = 0;
	long t0 = now_ns(), t = t0;
	while (done < calls) {
		if (rate > 0) {
			/* Wait until the schedule says the next call is due. */
			long due = t0 + (long)(done * period);
			while ((t = now_ns()) < due)
				;
		} else {
			t = now_ns();
		}
		if (limit_ns && t - t0 >= limit_ns)
			break;
		long n = calls - done < burst ? calls - done : burst;
		for (long i = 0; i < n; i++)
			syscall(SYS_getppid);
		done += n;
	}
	long t1 = now_ns();

	fprintf(out, "%ld %ld %ld %ld\n", done, t0, t1, (long)SYS_getppid);
	return fclose(out) == 0 ? 0 : die("write result");
}
