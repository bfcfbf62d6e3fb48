/* Shared by the bench loops (loop.c, events_loop.c); include after _GNU_SOURCE. */
#ifndef TRACERD_BENCH_H
#define TRACERD_BENCH_H

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

/* CLOCK_MONOTONIC in ns: through the vDSO, so no syscall is added to what is measured. */
static long now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1000000000L + ts.tv_nsec;
}

/* "PROGRAM: WHAT: strerror(errno)" on stderr; returns the exit status 1. */
static int die(const char *what)
{
	fprintf(stderr, "%s: %s: %s\n", program_invocation_short_name, what, strerror(errno));
	return 1;
}

#endif
