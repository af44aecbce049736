#!/usr/bin/env python3
"""Flat against hierarchical exchange on the virtual cluster, side by side.

For each link rate, brings up HOSTS hosts of SLOTS ranks (scripts/cluster.sh,
root), then trains the same network REPEAT times with each transport,
alternating them, and prints each run and the medians: step time, exchange
time, and bytes sent between hosts per step. Takes the cluster down at the
end, also on failure.

Usage: sudo python3 scripts/cluster-compare.py [--model resnet50] [--rates 1gbit,10gbit]
       [--hosts 2] [--slots 2] [--repeat 3] [--steps 6] [--grad-dtype f16] [--json FILE]
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


def train(a, np, hostfile, transport, out):
    cmd = ["bash", CLUSTER, "run", "--name", NAME, "--", "mpirun", "-np", str(np), "--hostfile", hostfile, BIN,
           "--threads", "1", "train", "--model", a.model, "--image-size", str(a.image_size), "--batch-size",
           str(a.batch_size), "--steps", str(a.steps), "--warmup-steps", "2", "--log-every", "1000",
           "--grad-dtype", a.grad_dtype, "--transport", transport, "--out", out]
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    p = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=900)
    if p.returncode != 0:
        sys.exit(f"cluster-compare: {transport} run failed:\n{p.stdout.decode()[-3000:]}")
    with open(os.path.join(out, "summary.json")) as f:
        s = json.load(f)
    return {"step_s": s["step_s_median"], "comm_s": s["comm_s"], "compute_s": s["compute_s"],
            "between_hosts_bytes": s["between_hosts_bytes"]}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="resnet50")
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--rates", default="1gbit,10gbit")
    ap.add_argument("--hosts", type=int, default=2)
    ap.add_argument("--slots", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--grad-dtype", default="f16")
    ap.add_argument("--json")
    a = ap.parse_args()
    if not os.access(BIN, os.X_OK):
        sys.exit(f"cluster-compare: build first (cargo build --release): no {BIN}")
    np = a.hosts * a.slots
    results = []
    try:
        for rate in a.rates.split(","):
            cluster("up", str(a.hosts), "--slots", str(a.slots), "--rate", rate)
            hostfile = subprocess.run(["bash", CLUSTER, "hostfile", "--name", NAME], check=True,
                                      stdout=subprocess.PIPE).stdout.decode().strip()
            for rep in range(a.repeat):
                for transport in ["messages", "hierarchical"]:
                    with tempfile.TemporaryDirectory() as out:
                        r = train(a, np, hostfile, transport, out)
                    r.update(rate=rate, repeat=rep, transport=transport)
                    results.append(r)
                    print(f"{rate:>7} run {rep + 1} {transport:>12}: step {r['step_s']:.3f} s, exchange "
                          f"{r['comm_s']:.3f} s, {r['between_hosts_bytes'] / 1e6:.1f} MB between hosts", flush=True)
    finally:
        cluster("down")
    print(f"\n{a.model}, {a.image_size} px, batch {a.batch_size} per rank, {a.hosts} hosts x {a.slots} ranks, "
          f"{a.grad_dtype} on the wire; medians of {a.repeat}, ratios within each repeat")
    print("| link | transport | step s | exchange s | MB between hosts / step | step hier/flat | exchange hier/flat |")
    print("|---|---|---|---|---|---|---|")
    for rate in a.rates.split(","):
        runs = {t: [r for r in results if r["rate"] == rate and r["transport"] == t] for t in ["messages", "hierarchical"]}
        ratio = lambda key: statistics.median(h[key] / f[key] for f, h in zip(runs["messages"], runs["hierarchical"]))
        for t in ["messages", "hierarchical"]:
            med = lambda key: statistics.median(r[key] for r in runs[t])
            tail = f"{ratio('step_s'):.2f} | {ratio('comm_s'):.2f}" if t == "hierarchical" else " | "
            print(f"| {rate} | {t} | {med('step_s'):.3f} | {med('comm_s'):.3f} | "
                  f"{med('between_hosts_bytes') / 1e6:.1f} | {tail} |")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
