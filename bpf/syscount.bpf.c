// SPDX-License-Identifier: Apache-2.0
/*
 * tracerd kernel side: exact per-(process, syscall) accounting for tracked
 * processes only, compiled by BCC with -I bpf/ and the -D limits of syscount.h.
 *
 * Hot path cost notes (measured by bench/kernel_cost):
 *  - raw tracepoints on sys_enter/sys_exit: no per-event argument marshalling;
 *  - the tracked test is one array lookup by tgid, which the verifier inlines,
 *    so an untracked process pays almost nothing beyond the attached hook;
 *  - entry times live in the same array, indexed by tid: no hash update and
 *    delete per syscall, no per-thread state that outlives its thread;
 *  - counters are per-CPU: plain increments, no atomics, no cache-line bouncing
 *    between the threads of one process on different CPUs;
 *  - a tracked process's counters are in its block (see MAX_BLOCKS), an array indexed
 *    by CPU, block and number: no hashing; the stats hash is the fall-back.
 */
#include <uapi/linux/ptrace.h>
#include <uapi/linux/sched.h> /* CLONE_THREAD; the uapi header keeps compile time low */
#include "syscount.h"

BPF_ARRAY(pids, struct pid_state, PID_MAX);
BPF_F_TABLE("percpu_hash", struct stats_key, struct stats_val, stats, MAX_STATS, STATS_MAP_FLAGS);
BPF_PERCPU_ARRAY(counters, __u64, NR_COUNTERS);
/* Counter blocks (see MAX_BLOCKS): value [cpu][block - 1][nr]. Each CPU's copy of the
 * array is one contiguous run, so CPUs share a cache line only at its two ends. */
BPF_F_TABLE("array", __u32, struct stats_val, blocks, BLOCK_ENTRIES, BLOCK_MAP_FLAGS);
BPF_F_TABLE("array", __u32, __u64, block_owner, MAX_BLOCKS + 1, BLOCK_MAP_FLAGS);
BPF_QUEUE(free_blocks, __u32, MAX_BLOCKS ? MAX_BLOCKS : 1);
BPF_RINGBUF_OUTPUT(events, RINGBUF_PAGES);
BPF_ARRAY(limits, struct limit, MAX_LIMITS);
BPF_ARRAY(limit_of, __u32, PID_MAX);
/* Exec rules: a process whose exec matches any of these becomes tracked inside
 * sched_process_exec, before its first syscall after the exec. The value is the
 * limit_of it gets (0, or i + 1 to be under limits[i] from its first call); user
 * space counts the sessions sharing a rule. */
BPF_HASH(rule_comm, struct comm_key, __u32, MAX_RULES);
BPF_HASH(rule_path, struct path_key, __u32, MAX_RULES);
BPF_HASH(rule_cgroup, __u64, __u32, MAX_RULES);
/* A 256-byte key does not fit next to the rest on the 512-byte BPF stack. */
BPF_PERCPU_ARRAY(path_scratch, struct path_key, 1);
/* Per-syscall events (sessions that ask for them): the filter of each session slot,
 * how to decode each syscall's arguments, the calls in flight, and the records. */
BPF_ARRAY(ev_filters, struct ev_filter, MAX_LIMITS);
BPF_ARRAY(ev_decode, struct ev_decode, NR_SLOTS_NR);
BPF_TABLE("lru_hash", __u32, struct ev_inflight, ev_inflight, EV_MAX_INFLIGHT);
/* The path of an execve that succeeded, by tgid, from sched_process_exec: at sys_exit
 * the old image (and the pointer argument) is gone. */
BPF_TABLE("lru_hash", __u32, struct path_key, ev_exec_path, 1024);
BPF_RINGBUF_OUTPUT(sys_events, EV_RINGBUF_PAGES);
/* Never used by the programs: declared so user space can check its view of the ring
 * records against the compiled layout (tests/privileged/test_limits_and_layout.py). */
BPF_ARRAY(layout_sys_event, struct sys_event, 1);

/* pid_state.nr's top bit: this thread's call has an ev_inflight entry to emit. */
#define NR_EVENT_BIT 0x8000

static __always_inline void count_drop(__u32 idx)
{
	__u64 *c = counters.lookup(&idx);
	if (c)
		(*c)++;
}

/* floor(log2(v)) without __builtin_clzll, which BCC's LLVM cannot lower to BPF. */
static __always_inline __u32 log2_u64(__u64 v)
{
	__u32 r = (v > 0xFFFFFFFFULL) << 5;
	v >>= r;
	__u32 s = (v > 0xFFFF) << 4;
	v >>= s;
	r |= s;
	s = (v > 0xFF) << 3;
	v >>= s;
	r |= s;
	s = (v > 0xF) << 2;
	v >>= s;
	r |= s;
	s = (v > 0x3) << 1;
	v >>= s;
	r |= s;
	return r | (__u32)(v >> 1);
}

static __always_inline struct stats_val *stats_slot(__u32 tgid, __u32 nr, __u32 gen)
{
	struct stats_key key = {.tgid = tgid, .nr = nr, .gen = gen};
	struct stats_val *s = stats.lookup(&key);
	if (s)
		return s;
	/* First call of this syscall by this process: insert a zeroed entry.
	 * EEXIST means a concurrent insert on another CPU won the race; the entry
	 * is per-CPU, so looking it up again is all that is needed. */
	struct stats_val zero = {};
	int err = stats.insert(&key, &zero);
	if (err && err != -EEXIST) {
		count_drop(C_STATS_FULL);
		return 0;
	}
	s = stats.lookup(&key);
	if (!s)
		count_drop(C_STATS_FULL);
	return s;
}

/* The counters of (tgid, nr, gen), to be written: in the process's block when it has one
 * and nr fits (the block's tally counts the write first), else in the stats hash. The
 * CPU id is the index of the per-CPU copy: programs run with migration off, so it stays
 * this CPU's for the whole update. */
static __always_inline struct stats_val *counter(__u32 block, __u32 tgid, __u32 nr,
						 __u32 gen)
{
	if (MAX_BLOCKS && block && nr < BLOCK_TALLY) {
		__u32 base = (bpf_get_smp_processor_id() * MAX_BLOCKS + block - 1) * BLOCK_NRS;
		__u32 idx = base + nr, tally_idx = base + BLOCK_TALLY;
		struct stats_val *s = blocks.lookup(&idx);
		struct stats_val *tally = blocks.lookup(&tally_idx);
		if (s && tally) { /* out of range only if user space wrote a bad block number */
			tally->calls++;
			return s;
		}
	}
	return stats_slot(tgid, nr, gen);
}

/* A free counter block for (tgid, gen), its owner recorded; 0 when none is left (the
 * generation is then counted in the stats hash, which is slower, not less exact). */
static __always_inline __u32 new_block(__u32 tgid, __u32 gen)
{
	__u32 b = 0;
	if (!MAX_BLOCKS || free_blocks.pop(&b))
		return 0;
	__u64 *owner = block_owner.lookup(&b);
	if (!owner)
		return 0; /* not a block number: user space pushed a bad one */
	*owner = (__u64)gen << 32 | tgid;
	return b;
}

/* Argument i (0..5) of the syscall being entered, from the saved user registers. */
static __always_inline __u64 syscall_arg(struct pt_regs *regs, int i)
{
	__u64 v = 0;
#if defined(__TARGET_ARCH_x86) || defined(__x86_64__)
	/* The syscall ABI's fourth argument is r10, not the C ABI's rcx. */
	int off = i == 0   ? offsetof(struct pt_regs, di)
		  : i == 1 ? offsetof(struct pt_regs, si)
		  : i == 2 ? offsetof(struct pt_regs, dx)
		  : i == 3 ? offsetof(struct pt_regs, r10)
		  : i == 4 ? offsetof(struct pt_regs, r8)
			   : offsetof(struct pt_regs, r9);
	bpf_probe_read_kernel(&v, sizeof(v), (void *)regs + off);
#elif defined(__TARGET_ARCH_arm64) || defined(__aarch64__)
	bpf_probe_read_kernel(&v, sizeof(v), (void *)regs + i * sizeof(__u64));
#endif
	return v;
}

/* Bytes a memory request asks for; 0 for other syscalls (the common case costs
 * three compares). */
static __always_inline __u64 requested_bytes(struct pt_regs *regs, __s64 nr)
{
	if (nr == NR_MMAP) {
		if (!(syscall_arg(regs, 3) & MAP_ANONYMOUS_FLAG))
			return 0; /* a file mapping is not an allocation */
		return syscall_arg(regs, 1);
	}
	if (nr == NR_MREMAP) {
		__u64 old_len = syscall_arg(regs, 1), new_len = syscall_arg(regs, 2);
		return new_len > old_len ? new_len - old_len : 0;
	}
	if (nr == NR_BRK && TASK_MM_OFF >= 0 && MM_BRK_OFF >= 0) {
		void *task = (void *)bpf_get_current_task();
		void *mm = 0;
		__u64 brk = 0;
		bpf_probe_read_kernel(&mm, sizeof(mm), task + TASK_MM_OFF);
		if (!mm)
			return 0;
		bpf_probe_read_kernel(&brk, sizeof(brk), mm + MM_BRK_OFF);
		__u64 want = syscall_arg(regs, 0); /* brk(0) asks where the break is */
		return want > brk ? want - brk : 0;
	}
	return 0;
}

/* Is nr in a syscall mask? Out-of-range numbers are not. */
static __always_inline int mask_has(const __u64 *mask, __u32 nr)
{
	if (nr >= 64 * NR_MASK_WORDS)
		return 0;
	/* Masked as well, behind a barrier: the compiler drops a mask it can prove
	 * redundant, and the verifier loses the range check's bound on the register it
	 * sees. NR_MASK_WORDS is a power of two. */
	__u32 w = nr / 64;
	asm volatile("" : "+r"(w));
	w &= NR_MASK_WORDS - 1;
	return (mask[w] >> (nr & 63)) & 1;
}

/* The process is under limits[idx]: count this call against every rule that
 * covers it, and signal the process once any rule is over. Two CPUs may both see
 * a rule go over; both signal, which is what tripping means anyway. */
static __always_inline void enforce(__u32 idx, __u32 nr)
{
	struct limit *l = limits.lookup(&idx);
	if (!l)
		return;
	if (l->nrules) {
#pragma unroll
		for (int i = 0; i < LIMIT_RULES; i++) {
			if (i >= l->nrules)
				break;
			struct limit_rule *r = &l->rule[i];
			if (!mask_has(r->mask, nr))
				continue;
			/* Counted after tripping as well: count - max is what got past. */
			__sync_fetch_and_add(&r->count, 1);
			if (r->count > r->max && !r->tripped_ns) {
				r->tripped_ns = bpf_ktime_get_ns();
				if (!l->tripped_ns)
					l->tripped_ns = r->tripped_ns;
			}
		}
	}
	if (!l->tripped_ns)
		return;
	/* The call being entered still runs; the signal is delivered when it returns
	 * (a fatal one also interrupts a blocking wait). */
	bpf_send_signal(l->sig);
	__sync_fetch_and_add(&l->signals, 1);
}

/* An event of slot (| gen << 16) that could not be recorded: counted for the session
 * that holds the slot, unless the slot went to another session since. */
static __always_inline void event_lost(__u32 tagged)
{
	count_drop(C_SYS_EVENTS_LOST);
	__u32 slot = tagged & 0xffff;
	struct ev_filter *f = ev_filters.lookup(&slot);
	if (f && f->gen == tagged >> 16)
		__sync_fetch_and_add(&f->lost, 1);
}

/* Copy the user memory behind one argument into dst; returns the bytes kept, sets *ok
 * when the copy succeeded (an empty string is data too) and *trunc when there was
 * more. Any fault leaves nothing. */
static __always_inline __u16 read_arg(char *dst, __u8 kind, __u8 len_src, const __u64 *args,
				      __u8 idx, __u8 len_idx, __s64 ret, int *trunc, int *ok)
{
	if (idx > 5 || len_idx > 5)
		return 0;
	__u64 ptr = args[idx];
	if (!ptr)
		return 0;
	if (kind == AK_PATH) {
		long n = bpf_probe_read_user_str(dst, EV_DATA_LEN, (void *)ptr);
		if (n <= 0)
			return 0;
		/* A string that filled the buffer may have been cut (or be exactly 255). */
		*trunc = n >= EV_DATA_LEN;
		*ok = 1;
		return (__u16)(n - 1);
	}
	__u64 want = EV_DATA_LEN;
	if (len_src == LEN_ARG) {
		want = args[len_idx];
	} else if (len_src == LEN_RET) {
		want = ret > 0 ? (__u64)ret : 0;
	} else if (len_src == LEN_PTR) {
		__u32 l = 0;
		if (bpf_probe_read_user(&l, sizeof(l), (void *)args[len_idx]))
			return 0;
		want = l;
	}
	*trunc = want > EV_DATA_LEN;
	__u32 n = want > EV_DATA_LEN ? EV_DATA_LEN : (__u32)want;
	asm volatile("" : "+r"(n));
	if (n > EV_DATA_LEN)
		return 0;
	if (bpf_probe_read_user(dst, n, (void *)ptr))
		return 0;
	*ok = 1;
	return (__u16)n;
}

static __always_inline void fill_event(struct sys_event *e, const struct ev_inflight *in,
				       __u32 tgid, __u32 tid, __u64 start, __u64 end, __s64 ret,
				       __u32 flags)
{
	e->start_ns = start;
	e->end_ns = end;
	e->pid = tgid;
	e->tid = tid;
	e->nr = in->nr;
	e->slot = in->slot;
	e->ret = ret;
#pragma unroll
	for (int i = 0; i < 6; i++)
		e->args[i] = in->args[i];
	e->flags = flags;
	e->len[0] = 0;
	e->len[1] = 0;
	e->kind[0] = 0;
	e->kind[1] = 0;
	e->idx[0] = 0;
	e->idx[1] = 0;
	e->_pad = 0;
}

/* Record one completed (or never-returning) syscall of an events session. */
static __always_inline void emit_syscall(const struct ev_inflight *in, __u32 tgid, __u32 tid,
					 __u64 start, __u64 end, __s64 ret, __u32 flags)
{
	__u32 nr = in->nr;
	struct ev_decode *d = nr < NR_SLOTS_NR ? ev_decode.lookup(&nr) : 0;
	if (!d || !d->kind[0]) {
		struct sys_event *e = sys_events.ringbuf_reserve(sizeof(struct sys_event));
		if (!e) {
			event_lost(in->slot);
			return;
		}
		fill_event(e, in, tgid, tid, start, end, ret, flags);
		sys_events.ringbuf_submit(e, 0);
		return;
	}
	struct sys_event_data *e = sys_events.ringbuf_reserve(sizeof(struct sys_event_data));
	if (!e) {
		event_lost(in->slot);
		return;
	}
	fill_event(&e->hdr, in, tgid, tid, start, end, ret, flags);
	e->hdr.kind[0] = d->kind[0];
	e->hdr.kind[1] = d->kind[1];
	e->hdr.idx[0] = d->idx[0];
	e->hdr.idx[1] = d->idx[1];
	int trunc = 0, ok = 0;
	if (flags & SEF_EXEC_PATH) {
		struct path_key *pk = ev_exec_path.lookup(&tgid);
		if (pk) {
			long n = bpf_probe_read_kernel_str(e->data[0], EV_DATA_LEN, pk->path);
			e->hdr.len[0] = n > 0 ? (__u16)(n - 1) : 0;
			ok = n > 0;
			ev_exec_path.delete(&tgid);
		}
	} else if (!(flags & SEF_NO_RETURN) || d->len_src[0] != LEN_RET) {
		e->hdr.len[0] = read_arg(e->data[0], d->kind[0], d->len_src[0], in->args,
					 d->idx[0], d->len_idx[0], ret, &trunc, &ok);
	}
	e->hdr.flags |= (trunc ? SEF_TRUNC0 : 0) | (ok ? SEF_DATA0 : 0);
	trunc = 0;
	ok = 0;
	if (d->kind[1]) {
		e->hdr.len[1] = read_arg(e->data[1], d->kind[1], d->len_src[1], in->args,
					 d->idx[1], d->len_idx[1], ret, &trunc, &ok);
		e->hdr.flags |= (trunc ? SEF_TRUNC1 : 0) | (ok ? SEF_DATA1 : 0);
	}
	sys_events.ringbuf_submit(e, 0);
}

/* At sys_enter of a process under slot: keep the arguments for sys_exit if the slot
 * wants events of this syscall. Returns whether it did (the NR_EVENT_BIT). A call
 * that never returns is recorded here, with its arguments only. */
static __always_inline int event_enter(__u32 slot, __u32 tgid, __u32 tid, __u32 nr,
				       struct pt_regs *regs, __u64 start)
{
	struct ev_filter *f = ev_filters.lookup(&slot);
	if (!f || !f->enabled || !mask_has(f->mask, nr))
		return 0;
	struct ev_inflight in = {.slot = slot | (f->gen << 16), .nr = nr};
#pragma unroll
	for (int i = 0; i < 6; i++)
		in.args[i] = syscall_arg(regs, i);
	if ((__s64)nr == NR_EXIT || (__s64)nr == NR_EXIT_GROUP) {
		emit_syscall(&in, tgid, tid, start, start, 0, SEF_NO_RETURN);
		return 0;
	}
	if (ev_inflight.update(&tid, &in)) {
		event_lost(in.slot);
		return 0;
	}
	return 1;
}

/* At sys_exit (or thread exit) of a call event_enter kept. */
static __always_inline void event_exit(__u32 tgid, __u32 tid, __u64 start, __u64 end,
				       __s64 ret, __u32 flags)
{
	struct ev_inflight *in = ev_inflight.lookup(&tid);
	if (!in) {
		/* Pushed out of the LRU map by other threads' calls: lost, counted for the
		 * slot the process is under now (the one it entered with, unless user space
		 * moved it in between). */
		__u32 *lim = limit_of.lookup(&tgid);
		if (lim && *lim) {
			__u32 slot = *lim - 1;
			struct ev_filter *f = ev_filters.lookup(&slot);
			event_lost(slot | (f ? f->gen << 16 : 0));
		} else {
			count_drop(C_SYS_EVENTS_LOST);
		}
		return;
	}
	/* A call entered under a session that has ended (the slot cleared or given to
	 * another session since): its event belongs to nobody. */
	__u32 slot = in->slot & 0xffff;
	struct ev_filter *f = ev_filters.lookup(&slot);
	if (!f || !f->enabled || f->gen != in->slot >> 16) {
		ev_inflight.delete(&tid);
		return;
	}
	if ((__s64)in->nr == NR_EXECVE || (__s64)in->nr == NR_EXECVEAT) {
		if (ret == 0 && !(flags & SEF_NO_RETURN))
			flags |= SEF_EXEC_PATH;
	}
	emit_syscall(in, tgid, tid, start, end, ret, flags);
	ev_inflight.delete(&tid);
}

/* Is the call being entered a 32-bit compat call? Asked once per exec generation and
 * cached in g->tracked (PS_ABI_*): every call of an image has the same ABI, except in the
 * rare 64-bit program that also enters the kernel through int 0x80 (those calls are then
 * counted under the ABI of the image's first call: a known limitation).
 * Known race: this read-modify-write of g->tracked (and the reset at exec) can undo an
 * untrack() by user space that lands between its read and its write, on the first call
 * of a generation only; the process then stays tracked until it exits. An atomic OR on
 * the 32-bit (nr, tracked) word, with every tracked test masking PS_TRACKED, would close
 * it. */
static __always_inline __u32 compat_bit(struct pid_state *g, struct pt_regs *regs)
{
	__u16 flags = g->tracked;
	if (!(flags & PS_ABI_KNOWN)) {
		int compat = 0;
#if defined(__TARGET_ARCH_x86) || defined(__x86_64__)
		if (TASK_TI_STATUS_OFF >= 0) {
			__u32 status = 0;
			void *task = (void *)bpf_get_current_task();
			bpf_probe_read_kernel(&status, sizeof(status), task + TASK_TI_STATUS_OFF);
			compat = !!(status & TS_COMPAT_FLAG);
		}
#elif defined(__TARGET_ARCH_arm64) || defined(__aarch64__)
		__u64 pstate = 0;
		bpf_probe_read_kernel(&pstate, sizeof(pstate),
				      (void *)regs + offsetof(struct user_pt_regs, pstate));
		compat = !!(pstate & PSR_MODE32_FLAG);
#endif
		flags |= PS_ABI_KNOWN | (compat ? PS_ABI_COMPAT : 0);
		g->tracked = flags;
	}
	return flags & PS_ABI_COMPAT ? COMPAT_BIT : 0;
}

/* The number counters are kept under (see COMPAT_BIT). */
static __always_inline __u32 counted_nr(__s64 nr, __u32 compat)
{
	if (nr < 0 || nr >= NR_OVERFLOW)
		return NR_OVERFLOW | compat;
	return (__u32)nr | compat;
}

static __always_inline struct pid_state *tracked_process(__u32 tgid)
{
	struct pid_state *g = pids.lookup(&tgid);
	if (!g || !g->tracked)
		return 0;
	return g;
}

/* Reserve a lifecycle record with its common fields filled; NULL (and the loss
 * counted) when the ring buffer is full. The caller adds any extra field and submits. */
static __always_inline struct event *new_event(__u32 type, __u32 pid, __u32 ppid, __s32 code)
{
	struct event *e = events.ringbuf_reserve(sizeof(struct event));
	if (!e) {
		count_drop(C_EVENTS_LOST);
		return 0;
	}
	e->type = type;
	e->pid = pid;
	e->ppid = ppid;
	e->exit_code = code;
	e->uid = (__u32)bpf_get_current_uid_gid();
	e->flags = 0;
	e->gen = 0;
	e->_pad = 0;
	e->cgroup_id = bpf_get_current_cgroup_id();
	e->ts_ns = bpf_ktime_get_ns();
	bpf_get_current_comm(&e->comm, sizeof(e->comm));
	e->filename[0] = 0;
	return e;
}

static __always_inline void emit(__u32 type, __u32 pid, __u32 ppid, __s32 code)
{
	struct event *e = new_event(type, pid, ppid, code);
	if (e)
		events.ringbuf_submit(e, 0);
}

#if !COUNT_ONLY
RAW_TRACEPOINT_PROBE(sys_enter)
{
	__u64 id = bpf_get_current_pid_tgid();
	__u32 tgid = id >> 32, tid = (__u32)id;
	struct pid_state *g = tracked_process(tgid);
	if (!g)
		return 0; /* untracked: nothing touched but the pid array */
	struct pid_state *t = tid == tgid ? g : pids.lookup(&tid);
	if (!t)
		return 0;
	/* The call is counted when it returns, or at thread exit if it never does
	 * (exit, exit_group, or a thread killed inside a blocking call). */
	struct pt_regs *regs = (struct pt_regs *)ctx->args[0];
	/* Compared with the NR_* of native calls below, a compat call never matches. */
	__u32 nr = counted_nr((__s64)ctx->args[1], compat_bit(g, regs));
	__u64 now = bpf_ktime_get_ns();
	t->nr = nr;
	t->start_ns = now;
	__u32 *lim = limit_of.lookup(&tgid);
	if (lim && *lim) {
		__u32 slot = *lim - 1;
		enforce(slot, nr);
		if (event_enter(slot, tgid, tid, nr, regs, now))
			t->nr |= NR_EVENT_BIT;
	}
	if (nr == NR_MMAP || nr == NR_BRK || nr == NR_MREMAP) {
		__u64 bytes = requested_bytes(regs, nr);
		struct stats_val *s = bytes ? counter(g->block, tgid, nr, g->gen) : 0;
		if (s)
			s->alloc_bytes += bytes;
	}
	return 0;
}
#else
/* Count-only: one lookup and one increment per call, at entry, so calls that never
 * return (exit_group) are counted with no help from sched_process_exit. An execve is
 * counted under the generation it was entered in, then moved to the new one by
 * sched_process_exec if it succeeds (where the full mode counts it, at its return). */
RAW_TRACEPOINT_PROBE(sys_enter)
{
	__u64 id = bpf_get_current_pid_tgid();
	__u32 tgid = id >> 32;
	struct pid_state *g = tracked_process(tgid);
	if (!g)
		return 0;
	struct pt_regs *regs = (struct pt_regs *)ctx->args[0];
	__u32 nr = counted_nr((__s64)ctx->args[1], compat_bit(g, regs));
	__u32 *lim = limit_of.lookup(&tgid);
	if (lim && *lim)
		enforce(*lim - 1, nr);
	struct stats_val *s = counter(g->block, tgid, nr, g->gen);
	if (!s)
		return 0;
	s->calls++;
	/* A compat task's execve stays under the generation it was entered in. */
	if (nr == NR_EXECVE || nr == NR_EXECVEAT) {
		/* Remembered for sched_process_exec, which moves this call to the new
		 * generation if the exec succeeds (start_ns: counted under gen + 1). */
		__u32 tid = (__u32)id;
		struct pid_state *t = tid == tgid ? g : pids.lookup(&tid);
		if (t) {
			t->start_ns = (__u64)g->gen + 1;
			t->nr = nr;
		}
	}
	if (nr == NR_MMAP || nr == NR_BRK || nr == NR_MREMAP)
		s->alloc_bytes += requested_bytes(regs, nr);
	return 0;
}
#endif /* !COUNT_ONLY */

#if !COUNT_ONLY
RAW_TRACEPOINT_PROBE(sys_exit)
{
	__u64 id = bpf_get_current_pid_tgid();
	__u32 tgid = id >> 32, tid = (__u32)id;
	struct pid_state *g = tracked_process(tgid);
	if (!g)
		return 0;
	struct pid_state *t = tid == tgid ? g : pids.lookup(&tid);
	/* start_ns == 0: no matching entry, e.g. a child returning from fork, or
	 * a process that became tracked while inside this call. */
	if (!t || !t->start_ns)
		return 0;
	__u64 start = t->start_ns, end = bpf_ktime_get_ns();
	__u64 delta = end - start;
	__u32 nr = t->nr & ~NR_EVENT_BIT;
	int event = t->nr & NR_EVENT_BIT;
	t->start_ns = 0;
	t->nr = 0;
	long ret = (long)ctx->args[1];
	/* Recorded before counting: a full stats map must not cost the event too. */
	if (event)
		event_exit(tgid, tid, start, end, ret, 0);

	struct stats_val *s = counter(g->block, tgid, nr, g->gen);
	if (!s)
		return 0;
	s->calls++;
	if (ret < 0 && ret >= -ERRNO_MAX)
		s->errors++;
	s->total_ns += delta;
	if (delta > s->max_ns)
		s->max_ns = delta;
	/* 64-bit: with a 32-bit index clang bounds-checks one register and indexes
	 * through a zero-extended copy of it, whose bound older verifiers (6.1) lose. */
	__u64 b = log2_u64(delta);
	if (b >= HIST_BUCKETS)
		b = HIST_BUCKETS - 1;
	s->hist[b]++;
	return 0;
}
#endif /* !COUNT_ONLY */

/* Processes (not threads) forked by a tracked process are tracked before they
 * can run: task_newtask fires in the parent inside copy_process(), before the
 * child is woken, so there is no window in which the child runs untracked.
 * Every new process's slot is (re)initialised here, tracked parent or not, so a
 * reused pid never inherits state left by an earlier process with that number. */
TRACEPOINT_PROBE(task, task_newtask)
{
	if (args->clone_flags & CLONE_THREAD)
		return 0; /* threads are counted through their tgid's slot */
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	struct pid_state *g = tracked_process(tgid);
	__u32 child = args->pid;
	struct pid_state *c = pids.lookup(&child);
	if (!c) {
		if (g)
			count_drop(C_PID_RANGE);
		return 0;
	}
	c->start_ns = 0;
	c->nr = 0;
	c->gen = 0;
	c->tracked = g ? g->tracked : 0;
	c->block = g ? new_block(child, 0) : 0;
	c->_pad = 0;
	/* A tracked parent's limit goes to its child (user space takes it back if the
	 * child is not the limiting session's); anyone else's slot is cleared. */
	__u32 *plim = g ? limit_of.lookup(&tgid) : 0;
	__u32 clim = plim ? *plim : 0;
	limit_of.update(&child, &clim);
	if (g)
		emit(EV_FORK, child, tgid, 0);
	return 0;
}

TRACEPOINT_PROBE(sched, sched_process_exec)
{
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	struct pid_state *g = pids.lookup(&tgid);
	if (!g)
		return 0;
	/* Exec rules are tested on every exec (a rare event), tracked or not, so user
	 * space learns which rules a process matched from the same record. */
	__u32 flags = 0;
	__u64 cg = bpf_get_current_cgroup_id();
	struct comm_key ck = {};
	bpf_get_current_comm(&ck.comm, sizeof(ck.comm)); /* zero-padded, so hashes match */
	__u32 zero = 0;
	struct path_key *pk = path_scratch.lookup(&zero);
	if (pk) {
		__builtin_memset(pk, 0, sizeof(*pk));
		TP_DATA_LOC_READ_STR(pk->path, filename, sizeof(pk->path));
	}
	__u32 *code = rule_cgroup.lookup(&cg);
	if (!code)
		code = rule_comm.lookup(&ck);
	if (!code && pk)
		code = rule_path.lookup(pk);
	if (code)
		flags = EVF_RULE_MATCHED;
	if (!g->tracked) {
		if (!code)
			return 0;
		/* Tracked from here: the execve itself (entered untracked) is not
		 * counted, every syscall after it is. */
		g->tracked = 1;
		g->start_ns = 0;
		g->block = 0;
		limit_of.update(&tgid, code);
	}
	/* A new generation: the in-flight execve and everything after it are counted
	 * under it (the execve of an already tracked process included), in a block of its
	 * own. The old generation's block stays the old generation's: user space retires it
	 * when it reads this EV_EXEC (no thread can count in it any more: exec killed the
	 * other threads before this tracepoint). */
	__u32 old_block = g->block;
	g->gen++;
	g->block = new_block(tgid, g->gen);
	g->tracked = PS_TRACKED; /* a new image: its ABI is found at its first call */
	__u32 old = args->old_pid;
	if (old != tgid) {
		/* A non-leader thread exec'd and took over the leader's pid: its
		 * execve, still in flight, now returns under the tgid's slot. */
		struct pid_state *o = pids.lookup(&old);
		if (o) {
			g->start_ns = o->start_ns;
			g->nr = o->nr;
			o->start_ns = 0;
			o->nr = 0;
			o->tracked = 0;
		}
		struct ev_inflight *in = ev_inflight.lookup(&old);
		if (in) {
			struct ev_inflight moved = *in;
			ev_inflight.update(&tgid, &moved);
			ev_inflight.delete(&old);
		}
	}
#if COUNT_ONLY
	/* The execve that got here was counted at entry under the old generation; the
	 * full mode counts it under the new one (at its return), and so must this. The
	 * decrement may be on another CPU than the increment (exec balances CPUs): the
	 * per-CPU value wraps below zero and user space sums modulo 2^64. */
	if (g->start_ns) {
		struct stats_val *from = counter(old_block, tgid, g->nr, (__u32)(g->start_ns - 1));
		struct stats_val *to = from ? counter(g->block, tgid, g->nr, g->gen) : 0;
		if (to) {
			from->calls--;
			to->calls++;
		}
		g->start_ns = 0;
		g->nr = 0;
	}
#else
	if ((g->nr & NR_EVENT_BIT) && pk)
		ev_exec_path.update(&tgid, pk);
#endif
	struct event *e = new_event(EV_EXEC, tgid, 0, 0);
	if (!e)
		return 0;
	e->flags = flags;
	e->gen = g->gen;
	if (pk)
		__builtin_memcpy(e->filename, pk->path, sizeof(e->filename));
	events.ringbuf_submit(e, 0);
	return 0;
}

/* Is this the last thread of its process to exit? See EXIT_HAS_GROUP_DEAD. Two
 * threads exiting at once may both see live == 0: both report the exit, and user
 * space ignores the second. Without BTF the leader's exit stands in for the group's
 * (a leader that exits before its threads then ends the process early). */
static __always_inline int last_thread_out(__u32 tid, __u32 tgid)
{
	if (TASK_SIGNAL_OFF < 0 || SIGNAL_LIVE_OFF < 0)
		return tid == tgid;
	void *task = (void *)bpf_get_current_task();
	void *sig = 0;
	int live = 1;
	bpf_probe_read_kernel(&sig, sizeof(sig), task + TASK_SIGNAL_OFF);
	if (!sig)
		return tid == tgid;
	bpf_probe_read_kernel(&live, sizeof(live), sig + SIGNAL_LIVE_OFF);
	return live == 0;
}

TRACEPOINT_PROBE(sched, sched_process_exit)
{
	__u64 id = bpf_get_current_pid_tgid();
	__u32 tgid = id >> 32, tid = (__u32)id;
#if EXIT_HAS_GROUP_DEAD
	int group_dead = args->group_dead;
#else
	int group_dead = last_thread_out(tid, tgid);
#endif
	struct pid_state *t = pids.lookup(&tid);
	if (!t)
		return 0;
	struct pid_state *g = tid == tgid ? t : pids.lookup(&tgid);
	if (g && g->tracked) {
		/* Count-only: every call was counted at entry; start_ns marks an execve. */
		if (!COUNT_ONLY && t->start_ns) {
			/* The call this thread is in will never return: count it, untimed. */
			struct stats_val *s = counter(g->block, tgid, t->nr & ~NR_EVENT_BIT, g->gen);
			if (s)
				s->calls++;
			if (t->nr & NR_EVENT_BIT)
				event_exit(tgid, tid, t->start_ns, t->start_ns, 0, SEF_NO_RETURN);
		}
		if (group_dead) {
			__s32 code = -1;
			if (TASK_EXIT_CODE_OFF >= 0) {
				void *task = (void *)bpf_get_current_task();
				bpf_probe_read_kernel(&code, sizeof(code), task + TASK_EXIT_CODE_OFF);
			}
			emit(EV_EXIT, tgid, 0, code);
		}
	}
	/* Leave nothing behind for whoever reuses these pid numbers. A leader that
	 * exits before its threads keeps the process flag until the group dies. */
	t->start_ns = 0;
	t->nr = 0;
	if (tid != tgid)
		t->tracked = 0;
	if (group_dead && g) {
		g->tracked = 0;
		g->gen = 0;
		g->block = 0; /* freed by user space, once it has read it */
		__u32 none = 0;
		limit_of.update(&tgid, &none);
	}
	return 0;
}
