/* SPDX-License-Identifier: Apache-2.0 */
/*
 * tracerd: structs and limits shared by the kernel side (syscount.bpf.c) and
 * user space (tracerd/_probe.py mirrors every struct here with ctypes; a
 * root-only test checks the two layouts match).
 *
 * Limits are configured with -D cflags at load time, never by editing text.
 */
#ifndef TRACERD_SYSCOUNT_H
#define TRACERD_SYSCOUNT_H

/* Entries of the per-pid array: /proc/sys/kernel/pid_max at load time. A pid at
 * or above it cannot be tracked; forks that produce one count as drops. */
#ifndef PID_MAX
#define PID_MAX 32768
#endif

/* (tgid, syscall) aggregates alive at once. Entries of exited processes are
 * deleted by the drain, so this bounds live tracked processes x syscalls used. */
#ifndef MAX_STATS
#define MAX_STATS 65536
#endif

/* Pages of the lifecycle ring buffer (power of two). */
#ifndef RINGBUF_PAGES
#define RINGBUF_PAGES 64
#endif

/* Entries of each exec-rule map (rule_comm, rule_path, rule_cgroup). */
#ifndef MAX_RULES
#define MAX_RULES 1024
#endif

/* Byte offset of task_struct.exit_code, read from the running kernel's BTF by
 * user space (the installed headers need not match the running kernel).
 * Negative: unknown, exit codes of descendants are then reported as unknown. */
#ifndef TASK_EXIT_CODE_OFF
#define TASK_EXIT_CODE_OFF -1
#endif

/* In-kernel enforcement slots: one per session with a "kill" count budget. */
#ifndef MAX_LIMITS
#define MAX_LIMITS 64
#endif

/* Syscall numbers whose arguments are measured as memory requests, per arch from
 * user space's generated tables; -1 (the default) turns a measure off. */
#ifndef NR_MMAP
#define NR_MMAP -1
#endif
#ifndef NR_BRK
#define NR_BRK -1
#endif
#ifndef NR_MREMAP
#define NR_MREMAP -1
#endif

/* Byte offsets of task_struct.mm and mm_struct.brk (from BTF, like TASK_EXIT_CODE_OFF);
 * either negative: brk growth is not measured. */
#ifndef TASK_MM_OFF
#define TASK_MM_OFF -1
#endif
#ifndef MM_BRK_OFF
#define MM_BRK_OFF -1
#endif

#define HIST_BUCKETS 32
#define LIMIT_RULES 4
#define NR_MASK_WORDS 8 /* syscall numbers 0..511 */
#define MAP_ANONYMOUS_FLAG 0x20 /* MAP_ANONYMOUS: the same value on x86_64 and arm64 */
#define COMM_LEN 16
#define FILENAME_LEN 256
#define ERRNO_MAX 4095

/* One slot per pid number. Thread ids and process ids share that number space,
 * so a single array serves both roles: every thread keeps its syscall entry time
 * in its own slot, and the slot of a thread-group leader (tgid) also carries the
 * tracked flag for the whole process. The array is fixed-size and indexed, so
 * nothing grows with the threads ever seen, and the lookup is inlined by the
 * verifier (no hashing on the path of untracked processes). */
struct pid_state {
	__u64 start_ns; /* bpf_ktime_get_ns() at sys_enter, 0 when not in a syscall */
	__u32 gen;      /* on a tgid's slot: exec generation, +1 at each exec while tracked */
	__u16 nr;       /* syscall number seen at sys_enter */
	__u16 tracked;  /* on a tgid's slot: non-zero when the process is tracked */
};

/* Key of rule_path: the execve path, NUL-padded (so equal strings hash equal). */
struct path_key {
	char path[FILENAME_LEN];
};

/* Key of rule_comm. */
struct comm_key {
	char comm[COMM_LEN];
};

/* Counts are kept per exec generation, so user space can tell exactly which calls
 * came after a given exec (an exec rule's session starts there) without reading the
 * map at that instant. A process has one generation per exec while tracked. */
struct stats_key {
	__u32 tgid;
	__u32 nr;
	__u32 gen;
};

/* Per-CPU, so the hot path needs no atomics; user space sums the CPUs. */
struct stats_val {
	__u64 calls;
	__u64 errors;    /* return value in [-4095, -1] */
	__u64 total_ns;  /* time between sys_enter and sys_exit, summed */
	__u64 max_ns;
	__u32 hist[HIST_BUCKETS]; /* hist[i]: 2^i <= ns < 2^(i+1); 0 in bucket 0 */
	/* NR_MMAP (MAP_ANONYMOUS only), NR_BRK, NR_MREMAP: bytes asked for, added at
	 * sys_enter (a request counts even if it fails): the length of an anonymous
	 * mapping, the growth of the break, the growth of a remapping. */
	__u64 alloc_bytes;
};

/* One count budget enforced in the kernel: calls of the syscalls in mask, by all
 * processes under the limit together. */
struct limit_rule {
	__u64 max;        /* calls allowed; the next one trips the limit */
	__u64 count;      /* calls entered so far, after tripping too (atomic: shared) */
	__u64 tripped_ns; /* when this rule went over its max; 0 until then */
	__u64 mask[NR_MASK_WORDS]; /* bit nr set: syscall nr counts */
};

/* A session's in-kernel limits. Once tripped, every syscall entered by a process
 * under it gets sig (bpf_send_signal: the whole process), so a tree stops at its
 * next syscall: each process makes at most the call it is in. Which limit a process
 * is under is kept in the limit_of array (by tgid: 0 none, i + 1 for limits[i]),
 * apart from pid_state, so user space can set it without rewriting fields the
 * kernel updates (exec generation, tracked flag). */
struct limit {
	struct limit_rule rule[LIMIT_RULES];
	__u32 nrules;
	__u32 sig;
	__u64 tripped_ns; /* first time a rule went over its max; 0 until then */
	__u64 signals;    /* signals sent (one per syscall entered after tripping) */
};

enum event_type {
	EV_FORK = 1, /* a tracked process forked: pid is the child, ppid the parent */
	EV_EXEC = 2, /* a tracked process exec'd: comm and filename are the new ones */
	EV_EXIT = 3, /* the last thread of a tracked process exited */
};

/* Bits of event.flags. */
#define EVF_RULE_MATCHED 1 /* EV_EXEC: an exec rule started tracking this process */

struct event {
	__u32 type;      /* enum event_type */
	__u32 pid;       /* tgid of the process the event is about */
	__u32 ppid;      /* EV_FORK: tgid of the forking process */
	__s32 exit_code; /* EV_EXIT: raw task->exit_code, -1 when unknown */
	__u32 uid;       /* real uid of the current task (the parent, for EV_FORK) */
	__u32 flags;     /* EVF_* */
	__u32 gen;       /* EV_EXEC: the exec generation that starts here */
	__u32 _pad;
	__u64 cgroup_id; /* cgroup v2 id of the current task (inode of its directory) */
	__u64 ts_ns;     /* bpf_ktime_get_ns() when it happened */
	char comm[COMM_LEN];
	char filename[FILENAME_LEN]; /* EV_EXEC only */
};

/* Indexes of the per-CPU drop counters. */
enum counter_idx {
	C_STATS_FULL = 0, /* a syscall not counted: stats map full */
	C_EVENTS_LOST = 1, /* a lifecycle event lost: ring buffer full */
	C_PID_RANGE = 2,   /* a fork whose child pid is >= PID_MAX */
	NR_COUNTERS = 3,
};

#endif /* TRACERD_SYSCOUNT_H */
