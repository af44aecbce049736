#!/usr/bin/env python3
"""Two ways of exchanging gradients on the virtual cluster, side by side.

--compare transport: the flat exchange (MPI messages) against the
hierarchical one. --compare overlap: the exchange after backward against
`--overlap`. For each link rate, brings up HOSTS hosts of SLOTS ranks
(scripts/cluster.sh, root), then, for each network and wire type, trains
REPEAT times with each variant, alternating them, and prints each run and the
medians: step time, the exchange the step waited for (comm), the whole
exchange, and bytes sent between hosts per step; ratios are taken within each
repeat. Takes the cluster down at the end, also on failure.

Usage: sudo python3 scripts/cluster-compare.py [--compare transport|overlap] [--models resnet50]
       [--rates 1gbit,10gbit] [--hosts 2] [--slots 2] [--repeat 3] [--steps 6] [--grad-dtypes f16]
       [--train-flags '--bucket-mb 4'] [--json FILE]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLUSTER = os.path.join(ROOT, "scripts", "cluster.sh")
BIN = os.path.join(ROOT, "target", "release", "candle-mpi")
NAME = "cmcmp"


def cluster(*args):
    subprocess.run(["bash", CLUSTER, *args, "--name", NAME], check=True)


# Each comparison: (name, extra train flags) of its two variants, the baseline first.
# The transports are compared with the exchange after backward, where it is all waited for.
VARIANTS = {
    "transport": [("flat", ["--transport", "messages", "--overlap", "off"]),
                  ("hierarchical", ["--transport", "hierarchical", "--overlap", "off"])],
    "overlap": [("after", ["--overlap", "off"]), ("overlap", ["--overlap", "on"])],
}


def train(a, np, hostfile, model, dtype, flags, out):
    cmd = ["bash", CLUSTER, "run", "--name", NAME, "--", "mpirun", "-np", str(np), "--hostfile", hostfile, BIN,
           "--threads", "1", "train", "--model", model, "--image-size", str(a.image_size), "--batch-size",
           str(a.batch_size), "--steps", str(a.steps), "--warmup-steps", "2", "--log-every", "1000",
           "--grad-dtype", dtype, *a.train_flags.split(), *flags, "--out", out]
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    p = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=900)
    if p.returncode != 0:
        sys.exit(f"cluster-compare: {' '.join(cmd)} failed:\n{p.stdout.decode()[-3000:]}")
    with open(os.path.join(out, "summary.json")) as f:
        s = json.load(f)
    return {"step_s": s["step_s_median"], "comm_s": s["comm_s"], "compute_s": s["compute_s"],
            "exchange_s": s.get("exchange_s", s["comm_s"]), "between_hosts_bytes": s["between_hosts_bytes"]}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--compare", choices=sorted(VARIANTS), default="transport")
    ap.add_argument("--models", default="resnet50")
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--rates", default="1gbit,10gbit")
    ap.add_argument("--hosts", type=int, default=2)
    ap.add_argument("--slots", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--grad-dtypes", default="f16")
    ap.add_argument("--train-flags", default="", help="more train flags for every run, e.g. '--bucket-mb 4'")
    ap.add_argument("--json")
    a = ap.parse_args()
    if not os.access(BIN, os.X_OK):
        sys.exit(f"cluster-compare: build first (cargo build --release): no {BIN}")
    np = a.hosts * a.slots
    variants = VARIANTS[a.compare]
    cases = [(m, d) for m in a.models.split(",") for d in a.grad_dtypes.split(",")]
    results = []
    try:
        for rate in a.rates.split(","):
            cluster("up", str(a.hosts), "--slots", str(a.slots), "--rate", rate)
            hostfile = subprocess.run(["bash", CLUSTER, "hostfile", "--name", NAME], check=True,
                                      stdout=subprocess.PIPE).stdout.decode().strip()
            for model, dtype in cases:
                for rep in range(a.repeat):
                    for name, flags in variants:
                        with tempfile.TemporaryDirectory() as out:
                            r = train(a, np, hostfile, model, dtype, flags, out)
                        r.update(rate=rate, model=model, grad_dtype=dtype, repeat=rep, variant=name)
                        results.append(r)
                        print(f"{rate:>7} {model} {dtype} run {rep + 1} {name:>12}: step {r['step_s']:.3f} s, "
                              f"comm {r['comm_s']:.3f} s of exchange {r['exchange_s']:.3f} s, compute "
                              f"{r['compute_s']:.3f} s, {r['between_hosts_bytes'] / 1e6:.1f} MB between hosts",
                              flush=True)
    finally:
        cluster("down")
    base, other = variants[0][0], variants[1][0]
    print(f"\n{a.image_size} px, batch {a.batch_size} per rank, {a.hosts} hosts x {a.slots} ranks; medians of "
          f"{a.repeat}, ratios within each repeat; comm = the exchange the step waited for")
    print(f"| link | network | wire | variant | step s | compute s | comm s | exchange s | MB between hosts / step "
          f"| step {other}/{base} | comm {other}/{base} exchange |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for rate in a.rates.split(","):
        for model, dtype in cases:
            runs = {v: [r for r in results if (r["rate"], r["model"], r["grad_dtype"], r["variant"]) ==
                        (rate, model, dtype, v)] for v, _ in variants}
            ratio = lambda num, den: statistics.median(o[num] / b[den] for b, o in zip(runs[base], runs[other]))
            for v, _ in variants:
                med = lambda key: statistics.median(r[key] for r in runs[v])
                tail = (f"{ratio('step_s', 'step_s'):.2f} | {ratio('comm_s', 'exchange_s'):.2f}"
                        if v == other else " | ")
                print(f"| {rate} | {model} | {dtype} | {v} | {med('step_s'):.3f} | {med('compute_s'):.3f} | "
                      f"{med('comm_s'):.3f} | {med('exchange_s'):.3f} | {med('between_hosts_bytes') / 1e6:.1f} "
                      f"| {tail} |")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
