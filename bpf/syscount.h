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
/* 0: the stats map is preallocated (user space chooses it when MAX_STATS x CPUs fits its
 * memory budget). BPF_F_NO_PREALLOC (1) allocates entries at first insert instead, from
 * per-CPU caches refilled asynchronously: a burst of new processes can then exhaust the
 * cache and inserts fail with -ENOMEM far below MAX_STATS (counted as C_STATS_FULL). */
#ifndef STATS_MAP_FLAGS
#define STATS_MAP_FLAGS 0
#endif

/* Counter blocks: one process generation's counters for every native syscall number
 * below BLOCK_TALLY, one copy per CPU, in an array (see struct pid_state.block). A call
 * counted in a block costs the CPU id (a helper the verifier inlines on x86-64 from 6.10)
 * and an inlined array lookup where the stats hash costs a hashed lookup (a few ns
 * against ~60 on the reference VM, bench/hotpath.py). Blocks are few (the
 * array is allocated whole at load: MAX_BLOCKS x BLOCK_NRS x CPU_SLOTS values); processes
 * beyond them, compat calls and numbers >= BLOCK_TALLY are counted in the stats hash.
 * MAX_BLOCKS 0: no blocks. CPU_SLOTS: highest possible CPU id + 1. */
#ifndef MAX_BLOCKS
#define MAX_BLOCKS 0
#endif
#ifndef CPU_SLOTS
#define CPU_SLOTS 1
#endif
#define BLOCK_NRS 512
/* Entry BLOCK_TALLY of each CPU's copy of a block is no syscall's: its calls field counts
 * the writes to the block on that CPU, so user space tells an idle block by one read per
 * CPU. Numbers from BLOCK_TALLY up are counted in the stats hash. */
#define BLOCK_TALLY (BLOCK_NRS - 1)
#define BLOCK_ENTRIES (MAX_BLOCKS ? MAX_BLOCKS * BLOCK_NRS * CPU_SLOTS : 1)
/* The array's map_flags: BPF_F_MMAPABLE, so user space reads the counters where they
 * are, with no copy and no syscall per drain. */
#define BLOCK_MAP_FLAGS (1U << 10)

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

/* Pages of the per-syscall event ring buffer (power of two): what can wait for user
 * space between two reads of it. Allocated at load even with no events session. */
#ifndef EV_RINGBUF_PAGES
#define EV_RINGBUF_PAGES 1024
#endif

/* Threads with an events syscall in flight (entered, not yet returned) at once. An
 * LRU map: a thread whose entry was pushed out loses that one event, counted. */
#ifndef EV_MAX_INFLIGHT
#define EV_MAX_INFLIGHT 16384
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
/* Calls that never return (an event is recorded at entry) and exec (whose path
 * argument is gone at sys_exit when it succeeded). */
#ifndef NR_EXIT
#define NR_EXIT -1
#endif
#ifndef NR_EXIT_GROUP
#define NR_EXIT_GROUP -1
#endif
#ifndef NR_EXECVE
#define NR_EXECVE -1
#endif
#ifndef NR_EXECVEAT
#define NR_EXECVEAT -1
#endif

/* Byte offsets of task_struct.mm and mm_struct.brk (from BTF, like TASK_EXIT_CODE_OFF);
 * either negative: brk growth is not measured. */
/* Does sched_process_exit carry group_dead (kernels from 6.16 on)? Older ones do not:
 * the last thread out is then told by task_struct.signal->live, which do_exit() has
 * decremented before the tracepoint (offsets from BTF; -1: unknown). */
#ifndef EXIT_HAS_GROUP_DEAD
#define EXIT_HAS_GROUP_DEAD 0
#endif
#ifndef TASK_SIGNAL_OFF
#define TASK_SIGNAL_OFF -1
#endif
#ifndef SIGNAL_LIVE_OFF
#define SIGNAL_LIVE_OFF -1
#endif

/* x86_64: byte offset of thread_info.status in task_struct (BTF; -1: unknown, compat
 * tasks then go undetected and their calls are counted under native numbers). */
#ifndef TASK_TI_STATUS_OFF
#define TASK_TI_STATUS_OFF -1
#endif
#define TS_COMPAT_FLAG 0x0002 /* x86 thread_info.status: a 32-bit syscall is active */
#define PSR_MODE32_FLAG 0x10  /* arm64 pstate: the task runs AArch32 code */

#ifndef TASK_MM_OFF
#define TASK_MM_OFF -1
#endif
#ifndef MM_BRK_OFF
#define MM_BRK_OFF -1
#endif

/* Count-only mode (1): sys_enter counts calls and nothing is attached to sys_exit,
 * like BCC's syscount without -L. Errors, times and histograms stay zero; events
 * (which need the return) are unavailable. About half the cost of the full mode. */
#ifndef COUNT_ONLY
#define COUNT_ONLY 0
#endif

#define HIST_BUCKETS 32
#define LIMIT_RULES 4
#define NR_MASK_WORDS 8 /* syscall numbers 0..511 */
#define MAP_ANONYMOUS_FLAG 0x20 /* MAP_ANONYMOUS: the same value on x86_64 and arm64 */
#define COMM_LEN 16
#define FILENAME_LEN 256
#define ERRNO_MAX 4095
#define EV_DATA_LEN 256 /* bytes copied per decoded argument (a power of two) */
#define EV_DATA_ARGS 2  /* decoded arguments per event */
#define NR_SLOTS_NR 512 /* syscall numbers the event decode table covers */
/* Counted numbers: a compat task's (ia32, AArch32) calls carry COMPAT_BIT, so they never
 * pass for the native call of the same number; numbers out of range share NR_OVERFLOW. */
#define COMPAT_BIT 0x4000
#define NR_OVERFLOW 0x3fff

/* One slot per pid number. Thread ids and process ids share that number space,
 * so a single array serves both roles: every thread keeps its syscall entry time
 * in its own slot, and the slot of a thread-group leader (tgid) also carries the
 * tracked flag for the whole process. The array is fixed-size and indexed, so
 * nothing grows with the threads ever seen, and the lookup is inlined by the
 * verifier (no hashing on the path of untracked processes). */
struct pid_state {
	__u64 start_ns; /* bpf_ktime_get_ns() at sys_enter, 0 when not in a syscall */
	__u32 gen;      /* on a tgid's slot: exec generation, +1 at each exec while tracked */
	__u16 nr;       /* syscall number seen at sys_enter (| COMPAT_BIT, | NR_EVENT_BIT) */
	__u16 tracked;  /* on a tgid's slot: non-zero when the process is tracked (PS_*) */
	__u32 block;    /* on a tgid's slot: its counter block for this gen, 1..MAX_BLOCKS;
			 * 0: none, every call goes to the stats hash */
	__u32 _pad;
};
/* block_owner[b]: whose counters block b holds, tgid | gen << 32 (0: free), written in
 * one store when the block is taken, by whoever takes it (the kernel at fork and exec,
 * user space at track()). Only user space frees a block: it reads it a last time, zeroes
 * it, clears its owner and pushes it back on free_blocks. */
/* Bits of pid_state.tracked. The ABI bits cache, per exec generation, whether the image
 * makes compat calls: found at its first syscall, which costs two helper calls. */
#define PS_TRACKED 1
#define PS_ABI_KNOWN 2
#define PS_ABI_COMPAT 4

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

/* A session slot's event filter (ev_filters[i], the same index as limits[i]: a process
 * under slot i, see limit_of, sends per-syscall events when enabled and the syscall
 * is in mask). */
struct ev_filter {
	__u32 enabled;
	__u32 gen;     /* which session holds the slot (user space bumps it at each reuse) */
	__u64 mask[NR_MASK_WORDS];
	__u64 lost;    /* events of this slot that could not be recorded (atomic) */
};

/* How user memory behind an argument is read for events (ev_decode[nr], one entry
 * per syscall number, from user space's table of signatures). */
enum arg_kind {
	AK_NONE = 0,
	AK_PATH = 1,     /* NUL-terminated string */
	AK_BUFFER = 2,   /* data bytes */
	AK_SOCKADDR = 3, /* struct sockaddr */
};
enum len_src {
	LEN_MAX = 0, /* up to EV_DATA_LEN (a string's NUL ends it sooner) */
	LEN_ARG = 1, /* the value of argument len_idx */
	LEN_RET = 2, /* the return value (bytes the call moved); nothing when it failed */
	LEN_PTR = 3, /* the u32 that argument len_idx points to (socklen_t *), after the call */
};
struct ev_decode {
	__u8 kind[EV_DATA_ARGS];    /* enum arg_kind */
	__u8 idx[EV_DATA_ARGS];     /* argument holding the pointer */
	__u8 len_src[EV_DATA_ARGS]; /* enum len_src */
	__u8 len_idx[EV_DATA_ARGS];
};

/* What sys_enter keeps for sys_exit, per thread, for an events syscall. */
struct ev_inflight {
	__u64 args[6];
	__u32 slot;    /* slot | gen << 16, as in sys_event.slot */
	__u32 nr;
};

/* Bits of sys_event.flags. */
#define SEF_NO_RETURN 1 /* the call never returned (exit, exit_group, killed thread) */
#define SEF_TRUNC0 2    /* data[0] was cut at EV_DATA_LEN (or the buffer's bound) */
#define SEF_TRUNC1 4
#define SEF_EXEC_PATH 8 /* data[0] is the path sched_process_exec saw (exec succeeded) */
#define SEF_DATA0 16    /* data[0] holds a copy (possibly empty); else the read failed */
#define SEF_DATA1 32

/* One syscall of an events session. The record is this header alone when the syscall
 * has no decoded argument, else the header and data. */
struct sys_event {
	__u64 start_ns; /* bpf_ktime_get_ns() at sys_enter */
	__u64 end_ns;   /* at sys_exit; start_ns when it never returned */
	__u32 pid;      /* tgid */
	__u32 tid;
	__u32 nr;
	__u32 slot;     /* the session slot the process is under | ev_filter.gen << 16 */
	__s64 ret;
	__u64 args[6];
	__u32 flags;    /* SEF_* */
	__u16 len[EV_DATA_ARGS]; /* bytes in data[i] (a PATH without its NUL) */
	__u8 kind[EV_DATA_ARGS]; /* enum arg_kind of data[i]: records describe themselves */
	__u8 idx[EV_DATA_ARGS];  /* the argument data[i] was copied from */
	__u32 _pad;
};
struct sys_event_data {
	struct sys_event hdr;
	char data[EV_DATA_ARGS][EV_DATA_LEN];
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
	C_SYS_EVENTS_LOST = 3, /* a syscall event lost (all slots; per slot in ev_filter.lost) */
	NR_COUNTERS = 4,
};

#endif /* TRACERD_SYSCOUNT_H */
