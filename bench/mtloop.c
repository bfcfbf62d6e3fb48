// SPDX-License-Identifier: Apache-2.0
/*
 * Multi-threaded syscall loop for bench/suite.py (built with gcc -O2).
 *
 *   mtloop CALLS [THREADS]
 *
 * THREADS threads (default: one per online CPU) each make CALLS getppid calls,
 * all released together from a barrier, so every CPU is in the syscall path at
 * once: what a tracer's shared state (one hash slot per syscall, say) costs when
 * several CPUs update it concurrently shows here and not in bench/loop.c. Not
 * pinned: the scheduler spreads the threads as it would any program's.
 * Prints nothing; bench/timed.c times it.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "bench.h"

static long calls;
static pthread_barrier_t start;

static void *worker(void *arg)
{
	(void)arg;
	pthread_barrier_wait(&start);
	for (long i = 0; i < calls; i++)
		syscall(SYS_getppid);
	return NULL;
}

int main(int argc, char **argv)
{
	if (argc < 2 || argc > 3) {
		fprintf(stderr, "usage: %s CALLS [THREADS]\n", argv[0]);
		return 2;
	}
	calls = strtol(argv[1], NULL, 10);
	long n = argc == 3 ? strtol(argv[2], NULL, 10) : sysconf(_SC_NPROCESSORS_ONLN);
	if (calls <= 0 || n <= 0 || n > 1024) {
		fprintf(stderr, "mtloop: CALLS and THREADS must be positive (THREADS <= 1024)\n");
		return 2;
	}
	pthread_t *threads = calloc((size_t)n, sizeof(*threads));
	if (!threads)
		return die("calloc");
	/* n workers; this thread only waits for them. */
	if ((errno = pthread_barrier_init(&start, NULL, (unsigned)n)) != 0)
		return die("pthread_barrier_init");
	for (long i = 0; i < n; i++)
		if ((errno = pthread_create(&threads[i], NULL, worker, NULL)) != 0)
			return die("pthread_create");
	for (long i = 0; i < n; i++)
		pthread_join(threads[i], NULL);
	free(threads);
	return 0;
}
