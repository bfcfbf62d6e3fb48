// SPDX-License-Identifier: Apache-2.0
/*
 * Sleeping processes for bench/daemon_cost.py (which builds it with gcc -O2).
 *
 *   sleepers N
 *
 * Forks N children that do nothing but pause(), then prints "ready PID N" on stdout
 * and pauses too. The bench tracks them (as one session's tree, or one session per
 * child: their pids are the children of PID in /proc) to see what tracked processes
 * cost the daemon and the traced syscalls of *other* processes.
 *
 * SIGUSR1 wakes every process it reaches from pause() (a no-op handler) and each one
 * pauses again: sent to the process group once the processes are tracked, it leaves
 * counters in the kernel's statistics map for every one of them (pause returning
 * EINTR, rt_sigreturn, pause), as processes that ever made a syscall have, so that
 * the daemon's drain reads as many entries as it would on a real machine.
 *
 * Every child dies with its parent (PR_SET_PDEATHSIG), and the parent with the
 * bench's process, so nothing is left behind if the bench is killed outright; the
 * bench normally kills the whole process group.
 */
#define _GNU_SOURCE
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <unistd.h>

#include "bench.h"

static void on_usr1(int sig)
{
	(void)sig; /* only there to interrupt pause() */
}

int main(int argc, char **argv)
{
	if (argc != 2) {
		fprintf(stderr, "usage: %s N\n", argv[0]);
		return 2;
	}
	long n = strtol(argv[1], NULL, 10);
	if (n < 0) {
		fprintf(stderr, "sleepers: N >= 0\n");
		return 2;
	}
	/* Installed before the forks, so a child inherits it: a SIGUSR1 arriving before
	 * the child's first pause() cannot kill it. */
	struct sigaction sa = {.sa_handler = on_usr1};
	sigemptyset(&sa.sa_mask);
	if (sigaction(SIGUSR1, &sa, NULL) != 0)
		return die("sigaction");
	/* Die with the bench; the bench's Popen thread is its main thread, which lives
	 * as long as the bench does. */
	if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0)
		return die("prctl");
	pid_t self = getpid();
	for (long i = 0; i < n; i++) {
		pid_t pid = fork();
		if (pid < 0)
			return die("fork");
		if (pid == 0) {
			prctl(PR_SET_PDEATHSIG, SIGKILL);
			if (getppid() != self) /* the parent died before the prctl */
				_exit(1);
			for (;;)
				pause();
		}
	}
	printf("ready %d %ld\n", (int)self, n);
	if (fflush(stdout) != 0)
		return die("write");
	for (;;)
		pause();
}
