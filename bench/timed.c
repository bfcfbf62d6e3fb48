// SPDX-License-Identifier: Apache-2.0
/*
 * Timing wrapper for bench/suite.py (which builds it with gcc -O2).
 *
 *   timed REPEAT CMD [ARG...]
 *
 * Prints "ready <pid>" on stdout, waits for one byte on stdin (EOF also means
 * go), then fork+execs CMD REPEAT times in a row, each waited for, and prints
 * "<elapsed ns> <runs>" on stdout: CLOCK_MONOTONIC from just before the first
 * fork to just after the last wait, so whatever started this process (a tracer
 * that wraps it, the bench registering its pid) is not in the figure.
 *
 * Why a wrapper rather than timing CMD from the bench: the bench tracks this
 * pid before sending the byte, so every process of the workload, forked from
 * it, is tracked from its first call (children inherit tracking in the kernel);
 * and tracers that wrap a command (strace, perf trace) or start one once they
 * are attached (bpftrace -c) run the same binary, timed the same way.
 *
 * CMD runs with stdin and stdout on /dev/null (bench/loop.c then starts at
 * once, on EOF; nothing the workload prints mixes with ours) and our stderr.
 * A CMD that fails (non-zero status, signal, exec error) ends the run: exit 1,
 * with the reason on stderr.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "bench.h"

int main(int argc, char **argv)
{
	if (argc < 3) {
		fprintf(stderr, "usage: %s REPEAT CMD [ARG...]\n", argv[0]);
		return 2;
	}
	long repeat = strtol(argv[1], NULL, 10);
	if (repeat <= 0) {
		fprintf(stderr, "timed: REPEAT must be positive\n");
		return 2;
	}
	int devnull = open("/dev/null", O_RDWR);
	if (devnull < 0)
		return die("open /dev/null");

	printf("ready %d\n", (int)getpid());
	fflush(stdout);
	char byte;
	if (read(0, &byte, 1) < 0)
		return die("read stdin");

	long t0 = now_ns();
	for (long i = 0; i < repeat; i++) {
		pid_t pid = fork();
		if (pid < 0)
			return die("fork");
		if (pid == 0) {
			if (dup2(devnull, 0) < 0 || dup2(devnull, 1) < 0)
				_exit(126);
			execvp(argv[2], &argv[2]);
			fprintf(stderr, "timed: exec %s: %s\n", argv[2], strerror(errno));
			_exit(127);
		}
		int status;
		while (waitpid(pid, &status, 0) < 0)
			if (errno != EINTR)
				return die("waitpid");
		if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
			fprintf(stderr, "timed: %s: %s %d\n", argv[2],
				WIFEXITED(status) ? "exit status" : "killed by signal",
				WIFEXITED(status) ? WEXITSTATUS(status) : WTERMSIG(status));
			return 1;
		}
	}
	long t1 = now_ns();

	printf("%ld %ld\n", t1 - t0, repeat);
	return 0;
}
