#!/usr/bin/env python3
"""What each hot-path design choice costs, in kernel ns per program run.

    sudo .venv/bin/python bench/hotpath.py [--reps 5] [--calls 200000] [--cpu N] [--json FILE]

Each variant is a small program on the raw ``sys_enter`` tracepoint written to isolate one
choice tracerd had to make (how to find the process, where to keep entry times, how to
keep counters, which hook). A getppid loop (bench/loop.c) is tracked in the variant's pid
array, and ``kernel.bpf_stats_enabled=1`` gives run_time_ns / run_cnt of the program: the
median over repetitions, minus the empty program's, is what the choice adds per syscall.
Variants run interleaved (every variant once per repetition, rotated), so drifts of this
VM's speed spread over all of them. Classic tracepoints (``raw_syscalls:sys_enter``) are
measured by wall clock instead (their argument marshalling happens outside the program's
timed run): ns per call of the loop, median, against the raw tracepoint's.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _build import bpf_stats_enabled, build_c, machine_facts, prog_run_stats

RESULTS = Path(__file__).resolve().parent / "results"

# Common declarations; pids mirrors tracerd's pid_state array, stats its per-CPU hash.
PRELUDE = r"""
#include <uapi/linux/ptrace.h>
struct st { __u64 start; __u32 gen; __u16 nr; __u16 tracked; };
struct key { __u32 tgid, nr, gen; };
struct val { __u64 calls, errors, total, max; __u32 hist[32]; __u64 alloc; };
BPF_ARRAY(pids, struct st, PID_MAX);
BPF_HASH(starts, __u32, __u64, 65536);
BPF_F_TABLE("percpu_hash", struct key, struct val, stats, 65536, BPF_F_NO_PREALLOC);
BPF_F_TABLE("percpu_hash", __u64, struct val, stats8, 65536, BPF_F_NO_PREALLOC);
BPF_HASH(shared, struct key, struct val, 65536);
BPF_PERCPU_ARRAY(dense, struct val, 4 * 512);
BPF_ARRAY(dense_shared, struct val, 4 * 512);
BPF_ARRAY(blocks, struct val, 16 * 4 * 512);
"""
# The tracked test every counting variant starts with (tracerd's, verbatim in spirit).
TRACKED = ("__u64 id = bpf_get_current_pid_tgid(); __u32 tgid = id >> 32; "
           "struct st *g = pids.lookup(&tgid); if (!g || !g->tracked) return 0; ")
NR = "__u32 nr = (__u32)ctx->args[1] & 511; "

# name -> (what it isolates, body of RAW_TRACEPOINT_PROBE(sys_enter))
VARIANTS: dict[str, tuple[str, str]] = {
    "empty": ("the floor: an empty program", "return 0;"),
    "smp_processor_id": ("helper the verifier inlines", "return bpf_get_smp_processor_id();"),
    "pid_tgid": ("helper call: bpf_get_current_pid_tgid",
                 "return bpf_get_current_pid_tgid() != 0;"),
    "current_task": ("helper call: bpf_get_current_task",
                     "return bpf_get_current_task() != 0;"),
    "tracked_test": ("pid_tgid + pid-array lookup (inlined): tracerd's untracked path",
                     TRACKED + "return 1;"),
    "ktime": ("tracked test + one bpf_ktime_get_ns, stored in the pid array",
              TRACKED + "g->start = bpf_ktime_get_ns(); return 0;"),
    "ktime_x2": ("tracked test + two bpf_ktime_get_ns (what enter + exit need)",
                 TRACKED + "g->start = bpf_ktime_get_ns(); g->start += bpf_ktime_get_ns(); "
                 "return 0;"),
    "start_in_hash": ("tracked test + entry time in a hash by tid (syscount -L's way)",
                      TRACKED + "__u32 tid = id; __u64 t = bpf_ktime_get_ns(); "
                      "starts.update(&tid, &t); return 0;"),
    "percpu_hash": ("tracked test + per-CPU hash (tgid, nr, gen) counter: tracerd's fall-back",
                    TRACKED + NR + "struct key k = {.tgid = tgid, .nr = nr}; "
                    "struct val *s = stats.lookup(&k); if (!s) { struct val z = {}; "
                    "stats.insert(&k, &z); return 0; } s->calls++; return 0;"),
    "percpu_hash_u64": ("same, one u64 key (tgid << 32 | nr)",
                        TRACKED + NR + "__u64 k = (__u64)tgid << 32 | nr; "
                        "struct val *s = stats8.lookup(&k); if (!s) { struct val z = {}; "
                        "stats8.insert(&k, &z); return 0; } s->calls++; return 0;"),
    "shared_hash_atomic": ("tracked test + shared hash counter, atomic add",
                           TRACKED + NR + "struct key k = {.tgid = tgid, .nr = nr}; "
                           "struct val *s = shared.lookup(&k); if (!s) { struct val z = {}; "
                           "shared.insert(&k, &z); return 0; } "
                           "__sync_fetch_and_add(&s->calls, 1); return 0;"),
    "percpu_array": ("tracked test + per-CPU array [slot][nr] counter (inlined lookup)",
                     TRACKED + NR + "__u32 i = nr + 512; struct val *s = dense.lookup(&i); "
                     "if (s) s->calls++; return 0;"),
    "array_atomic": ("tracked test + shared array [slot][nr] counter, atomic add",
                     TRACKED + NR + "__u32 i = nr + 512; "
                     "struct val *s = dense_shared.lookup(&i); "
                     "if (s) __sync_fetch_and_add(&s->calls, 1); return 0;"),
    "cpu_block_array": ("tracked test + array [cpu][block][nr] counter: tracerd's blocks",
                        TRACKED + NR + "__u32 i = ((bpf_get_smp_processor_id() & 15) * 4 + 1)"
                        " * 512 + nr; struct val *s = blocks.lookup(&i); "
                        "if (s) s->calls++; return 0;"),
}


class BenchError(Exception):
    pass


@dataclass(frozen=True)
class Loop:
    """The measured getppid loop: its binary, calls per run and the CPU it is pinned to."""

    binary: Path
    calls: int
    cpu: int


def _loop(loop: Loop, before: Any) -> float:
    """Run the getppid loop; ``before(pid)`` registers it first. Returns its ns/call."""
    proc = subprocess.Popen([str(loop.binary), "getppid", str(loop.calls), str(loop.cpu)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        before(proc.pid)
        out, _ = proc.communicate(b"g", timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if proc.returncode != 0:
        raise BenchError(f"loop exited {proc.returncode}")
    return float(out.split()[0])


def measure_variants(bcc: Any, loop: Loop, reps: int, log: Any) -> dict[str, list[float]]:
    pid_max = int(Path("/proc/sys/kernel/pid_max").read_text())
    loaded = {}
    for name, (_, body) in VARIANTS.items():
        b = bcc.BPF(text=PRELUDE + "RAW_TRACEPOINT_PROBE(sys_enter) {" + body + "}",
                    cflags=[f"-DPID_MAX={pid_max}", "-w"])
        b.detach_raw_tracepoint(tp=b"sys_enter")  # attached one at a time below
        loaded[name] = b
    samples: dict[str, list[float]] = {name: [] for name in VARIANTS}
    names = list(VARIANTS)
    try:
        with bpf_stats_enabled():
            for rep in range(reps):
                for name in names[rep % len(names):] + names[:rep % len(names)]:
                    b = loaded[name]
                    b.attach_raw_tracepoint(tp=b"sys_enter", fn_name=b"raw_tracepoint__sys_enter")
                    fd = b.funcs[b"raw_tracepoint__sys_enter"].fd
                    pids = b[b"pids"]

                    def track(pid: int, pids: Any = pids) -> None:
                        pids[pids.Key(pid)] = pids.Leaf(0, 0, 0, 1)

                    before = prog_run_stats(fd, BenchError)
                    _loop(loop, track)
                    after = prog_run_stats(fd, BenchError)
                    b.detach_raw_tracepoint(tp=b"sys_enter")
                    samples[name].append((after[0] - before[0]) / max(1, after[1] - before[1]))
                log(f"variants: repetition {rep + 1}/{reps}")
    finally:
        for b in loaded.values():
            b.cleanup()
    return samples


def measure_hooks(bcc: Any, loop: Loop, reps: int, log: Any) -> dict[str, list[float]]:
    """Wall ns/call of the loop: nothing attached, empty raw vs empty classic tracepoints."""
    raw = "RAW_TRACEPOINT_PROBE(sys_enter) { return 0; }\n" \
          "RAW_TRACEPOINT_PROBE(sys_exit) { return 0; }\n"
    classic = "TRACEPOINT_PROBE(raw_syscalls, sys_enter) { return 0; }\n" \
              "TRACEPOINT_PROBE(raw_syscalls, sys_exit) { return 0; }\n"
    out: dict[str, list[float]] = {"untraced": [], "raw_tp x2": [], "classic_tp x2": []}
    for rep in range(reps):
        order = list(out)[rep % 3:] + list(out)[:rep % 3]
        for mode in order:
            b = None
            if mode != "untraced":
                b = bcc.BPF(text=raw if mode.startswith("raw") else classic)
            try:
                out[mode].append(_loop(loop, lambda _pid: None))
            finally:
                if b is not None:
                    b.cleanup()
        log(f"hooks: repetition {rep + 1}/{reps}")
    return out


def render(meta: dict[str, Any], variants: dict[str, list[float]],
           hooks: dict[str, list[float]]) -> str:
    med = {k: statistics.median(v) for k, v in variants.items()}
    lines = [f"tracerd hot-path choices  {meta['date']}",
             f"kernel {meta['kernel']}  {meta['cpus']} CPUs ({meta['cpu_model']})  "
             f"load average {meta['loadavg']}",
             "",
             "In-kernel ns per run of one program on sys_enter (bpf_stats; median of "
             f"{len(next(iter(variants.values())))} interleaved repetitions). "
             "added = over the empty program.",
             f"{'variant':20} {'ns/run':>7} {'added':>7}  what it isolates"]
    for name, (what, _) in VARIANTS.items():
        lines.append(f"{name:20} {med[name]:7.1f} {med[name] - med['empty']:7.1f}  {what}")
    hmed = {k: statistics.median(v) for k, v in hooks.items()}
    lines += ["", "Wall ns per getppid of the loop (median), empty programs on enter + exit:"]
    for mode, v in hmed.items():
        added = "" if mode == "untraced" else f"  added {v - hmed['untraced']:.1f}"
        lines.append(f"{mode:20} {v:7.1f}{added}")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--calls", type=int, default=200_000)
    ap.add_argument("--cpu", type=int, default=(os.cpu_count() or 1) - 1)
    ap.add_argument("--json", default=str(RESULTS / "hotpath.json"))
    args = ap.parse_args(argv)
    if args.reps < 1 or args.calls < 1:
        print("hotpath: --reps and --calls must be >= 1", file=sys.stderr)
        return 2
    if os.geteuid() != 0:
        print("hotpath: needs root (BPF, kernel.bpf_stats_enabled)", file=sys.stderr)
        return 1
    import bcc  # noqa: PLC0415 - the OS package, only once we know we can use it

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    try:
        loop = Loop(build_c("loop.c", RESULTS, BenchError), args.calls, args.cpu)
        variants = measure_variants(bcc, loop, args.reps, log)
        hooks = measure_hooks(bcc, loop, args.reps, log)
    except BenchError as e:
        print(f"hotpath: {e}", file=sys.stderr)
        return 1
    meta = machine_facts(args.cpu)
    text = render(meta, variants, hooks)
    print(text, end="")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"meta": meta, "variants": variants,
                                           "hooks": hooks}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
