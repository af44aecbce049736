#!/usr/bin/env python3
"""Where a multi-threaded training step leaves cores idle, by operation.

Samples every thread of the trainer (`perf record` of the process) while
`candle-mpi --threads N train` runs in its steady state (perf starts after
the time a 2-step run takes), then cuts the recording into sampling
periods. In each period a core either did work, waited (idle, or a thread
spinning or yielding for work: rayon's and candle's pools, a barrier), or
ran another process. A period where some cores worked and others waited is charged to
the operations the working cores ran: those are the parts of the step that
do not use every core. The table gives, per operation, its share of all
core time ("work") and the core time others spent waiting while only it ran
("left idle"), both in seconds per step.

With `--against 1` the same run is also made with 1 thread, and the table
gains that run's work per operation beside it: where two threads do more
core-seconds of work than one (caches shared, memory bandwidth, a loop's
hand-overs), the extra shows by operation.

Usage: python3 scripts/profile-threads.py [--threads 2] [--against 1]
           [--image-size 128] [--batch-size 16] [--steps 8] [MODEL ...]
Needs perf (linux-perf) and target/release/candle-mpi; the machine should
have as many cores as --threads (this one has 2).
"""
import argparse
import collections
import os
import re
import subprocess
import tempfile

from profile_common import startup_delay_ms

EXE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "target", "release", "candle-mpi")

# Frames that mean "this core is waiting for work", matched on the leaf frames.
WAITING = re.compile(r"rayon_core::sleep|rayon_core::registry::WorkerThread::wait_until|crossbeam_deque|"
                     r"sched_yield|do_sched_yield|BarrierGuard|candle_core::utils::BarrierPool::new::\{\{closure\}\}|"
                     r"__rust_begin_short_backtrace|futex_wait|spin_loop|cpuidle|default_idle|pv_native_safe_halt|"
                     r"acpi_idle|intel_idle|do_idle|swapper|LockLatch|wait_until_cold|steal")

# What a sample's work was: the first frame (leaf upwards) of the operation
# that called it, and what kind of work the leaf frames do.
OWNERS = [
    ("conv forward", r"ops::conv::forward|Conv2dOp.*fwd"),
    ("conv backward", r"ops::conv::backward|Conv2dGrad"),
    ("batch norm", r"ops::batch_norm"),
    ("pooling", r"ops::pool"),
    ("SGD", r"candle_mpi::optim"),
    ("gradient exchange", r"candle_mpi::exchange|candle_mpi::comm"),
    ("data (loader thread)", r"candle_mpi::data"),
    ("candle backward (gradient accumulation, elementwise gradients)", r"candle_core::backprop"),
    ("candle forward", r"candle_core::tensor::Tensor::|candle_core::custom_op|candle_nn::"),
]
KINDS = [
    ("GEMM", r"^gemm_|gemm_common"),
    ("im2col", r"ops::conv::im2col"),
    ("col2im", r"ops::conv::col2im"),
    ("memory (page faults, malloc, memset)", r"exc_page_fault|malloc|_int_free|cfree|memset|clear_page|calloc"),
    ("copies", r"memmove|memcpy|copy_strided|copy2d"),
    ("candle elementwise", r"binary_map|unary_map|affine|cmp|where_cond|VecOps"),
]


def first_match(frames, table):
    for f in frames:
        for name, pat in table:
            if re.search(pat, f):
                return name
    return None


def train_cmd(a, model, steps, threads=None):
    return [EXE, "--threads", str(threads or a.threads), "train", "--model", model, "--image-size", str(a.image_size),
            "--batch-size", str(a.batch_size), "--steps", str(steps), "--log-every", "1000"]


def classify(frames, unknown):
    """('wait', None) or ('work', op) for one sample's frames, leaf first;
    leaf frames of work that no table names are counted in `unknown`."""
    for f in frames[:6]:
        if WAITING.search(f):
            return "wait", None
    owner, kind = first_match(frames, OWNERS), first_match(frames[:8], KINDS)
    if owner is None and kind is None:
        unknown[frames[0] if frames else "?"] += 1
    return "work", f"{owner or 'other'}: {kind or 'the rest'}"


def samples(script_text, pid_of_interest, unknown):
    """(time, cpu, state, op) for each sample perf script printed."""
    out = []
    for block in script_text.split("\n\n"):
        lines = [l for l in block.splitlines() if l.strip()]
        if not lines:
            continue
        m = re.match(r"\s*(\S.*?)\s+(\d+)/(\d+)\s+\[(\d+)\]\s+([\d.]+):", lines[0])
        if not m:
            continue
        comm, pid, cpu, t = m.group(1), int(m.group(2)), int(m.group(4)), float(m.group(5))
        frames = [re.sub(r"^\s*[0-9a-f]+\s+", "", l).strip() for l in lines[1:]]
        if pid == 0:
            state, op = "wait", None
        elif pid != pid_of_interest:
            state, op = "other", None
        else:
            state, op = classify(frames or [comm], unknown)
        out.append((t, cpu, state, op))
    return out


def profile(a, model, threads=None):
    skip_ms = startup_delay_ms(train_cmd(a, model, 2, threads))
    hz = 250
    with tempfile.TemporaryDirectory() as tmp:
        data = os.path.join(tmp, "perf.data")
        # Only this process is sampled (with its call stacks, which need
        # DWARF unwinding: the release build keeps no frame pointers); a core
        # with no sample of it in a period ran nothing of it then.
        cmd = ["perf", "record", "--sample-cpu", "--call-graph", "dwarf,16384", "-F", str(hz), "--delay", str(skip_ms), "-o", data,
               "--"]
        proc = subprocess.Popen(cmd + train_cmd(a, model, a.steps, threads), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
        stdout, _ = proc.communicate()
        if proc.returncode != 0:
            raise SystemExit(f"perf record failed ({proc.returncode})")
        pid = proc.pid  # perf's own pid; the trainer is its child
        script = subprocess.run(["perf", "script", "-i", data, "-F", "comm,pid,tid,cpu,time,ip,sym"],
                                capture_output=True, text=True).stdout
        pids = collections.Counter(int(m.group(1)) for m in re.finditer(r"^candle-mpi\s+(\d+)/", script, re.M))
        target = pids.most_common(1)[0][0] if pids else pid
    done = [l for l in stdout.splitlines() if l.startswith("done:")]
    m = re.search(r"median step of ([\d.]+) (m?s)", done[0]) if done else None
    step_s = float(m.group(1)) / (1000.0 if m.group(2) == "ms" else 1.0) if m else float("nan")
    unknown = collections.Counter()
    rows = samples(script, target, unknown)
    if not rows:
        raise SystemExit(f"perf recorded no samples of {model} after its {skip_ms} ms start-up delay: "
                         "the run ended first (give more --steps), or perf may not sample here (perf_event_paranoid)")
    period = 1.0 / hz
    # Cut into periods; each core's sample (or its absence: an idle, tickless core) in each.
    t0 = min(t for t, *_ in rows)
    cores = sorted({c for _, c, _, _ in rows})
    bins = collections.defaultdict(dict)
    for t, cpu, state, op in rows:
        bins[int((t - t0) / period)][cpu] = (state, op)
    work = collections.Counter()
    idle_charge = collections.Counter()
    for slot in bins.values():
        states = [slot.get(c, ("wait", None)) for c in cores]
        working = [op for s, op in states if s == "work"]
        waiting = sum(1 for s, _ in states if s == "wait")
        for op in working:
            work[op] += period
        if working and waiting:
            for op in working:
                idle_charge[op] += period * waiting / len(working)
    steps = (max(bins) + 1) * period / step_s if step_s == step_s else float("nan")
    return done[0] if done else "", step_s, steps, work, idle_charge, unknown


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--against", type=int, default=None,
                    help="also profile with this many threads and show its work per operation beside")
    ap.add_argument("--image-size", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("models", nargs="*", default=["alexnet", "vgg16", "resnet50", "googlenet"])
    a = ap.parse_args()
    for flag, n in (("--threads", a.threads), ("--against", a.against)):
        if n is not None and n < 1:
            raise SystemExit(f"{flag} {n}: need at least 1 thread")
    for model in a.models:
        done, step_s, steps, work, idle, unknown = profile(a, model)
        print(f"\n### {model}, {a.threads} threads, {a.image_size} px, batch {a.batch_size}\n\n{done}\n")
        if a.against is None:
            print(f"Sampled about {steps:.1f} steps. Seconds per step:\n")
            print("| operation | work (core-s) | other cores left idle (core-s) |\n|---|---|---|")
            for op, _ in sorted(work.items(), key=lambda kv: -idle[kv[0]]):
                print(f"| {op} | {work[op] / steps:.3f} | {idle[op] / steps:.3f} |")
            print(f"| all | {sum(work.values()) / steps:.3f} | {sum(idle.values()) / steps:.3f} |")
        else:
            done1, _, steps1, work1, _, _ = profile(a, model, a.against)
            print(f"{a.against} threads: {done1}\n")
            print(f"Sampled about {steps:.1f} and {steps1:.1f} steps. Core-seconds of work per step:\n")
            n, m = a.threads, a.against
            print(f"| operation | work, {m} threads | work, {n} threads | extra | left idle, {n} threads |\n"
                  "|---|---|---|---|---|")
            ops = set(work) | set(work1)
            extra = {op: work[op] / steps - work1[op] / steps1 for op in ops}
            for op in sorted(ops, key=lambda o: -extra[o]):
                print(f"| {op} | {work1[op] / steps1:.3f} | {work[op] / steps:.3f} | {extra[op]:+.3f} | "
                      f"{idle[op] / steps:.3f} |")
            w, w1 = sum(work.values()) / steps, sum(work1.values()) / steps1
            print(f"| all | {w1:.3f} | {w:.3f} | {w - w1:+.3f} | {sum(idle.values()) / steps:.3f} |")
        if os.environ.get("PROFILE_OTHER"):
            for sym, n in unknown.most_common(25):
                print(n, sym)


if __name__ == "__main__":
    main()
