#!/usr/bin/env python3
"""The `run` half of scripts/gpu-check.sh, on a GPU host, in one sitting.

Checks, in order, each with its own time limit inside one budget (a check
that no longer fits is recorded as not run, never dropped silently):

  1. nvidia-smi: the GPU, its driver and compute capability
  2. ldd of the packed binary with the host's CUDA libraries found
  3. `allreduce --backend nccl --check` on one GPU (a world of one: a copy)
  4. the GPU test suite (tests/gpu.rs, built by `pack`)
  5. one training run of each network on one GPU at 224 px, the reference
     batches of ../shared/design.md, 1000 classes: images/s and memory
  6. PyTorch's images/s for the same networks and batches on the same GPU,
     with its defaults (TF32 convolutions) and in strict f32 as candle runs

Prints as it goes; writes results.json and results.md to --out. Exits 3
where there is no CUDA driver or device, 1 where a check failed.

Usage: scripts/gpu_check.py --root UNPACKED_PACK --out DIR [--budget-s 450]
       scripts/gpu_check.py --torch MODEL BATCH STEPS WARMUP STRICT  (one PyTorch run)
"""
import argparse
import glob
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

# Reference batches per network (../shared/design.md's figures), 224 px, 1000 classes.
NETWORKS = [("alexnet", 128), ("googlenet", 32), ("vgg16", 32), ("resnet50", 64)]
IMAGE, CLASSES, STEPS, WARMUP = 224, 1000, 10, 3


def torch_run(model, batch, steps, warmup, strict):
    """Median seconds of one training step of torchvision's `model` on the GPU."""
    import torch
    import torchvision

    torch.backends.cudnn.allow_tf32 = not strict
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.manual_seed(0)
    kwargs = {"num_classes": CLASSES}
    if model == "googlenet":
        kwargs.update(aux_logits=False, init_weights=True)
    net = getattr(torchvision.models, model)(**kwargs).cuda().train()
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    x = torch.randn(batch, 3, IMAGE, IMAGE, device="cuda")
    y = torch.randint(0, CLASSES, (batch,), device="cuda")
    times = []
    for i in range(warmup + steps):
        torch.cuda.synchronize()
        t = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
        torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - t)
    step = statistics.median(times)
    print(json.dumps({"step_s_median": step, "images_per_s": batch / step,
                      "max_memory_allocated_mib": torch.cuda.max_memory_allocated() / 2**20,
                      "torch": torch.__version__, "cudnn": torch.backends.cudnn.version()}))


def cuda_library_dirs():
    """Folders that hold the host's CUDA, NCCL and driver libraries."""
    dirs = []
    try:
        import site
        roots = site.getsitepackages() + [site.getusersitepackages()]
    except Exception:
        roots = []
    for root in roots:
        for lib in sorted(glob.glob(os.path.join(root, "nvidia", "**", "lib"), recursive=True)):
            if glob.glob(os.path.join(lib, "*.so*")):
                dirs.append(lib)
    for d in ["/usr/local/nvidia/lib64", "/usr/local/nvidia/lib", "/usr/local/cuda/lib64"]:
        if os.path.isdir(d):
            dirs.append(d)
    return dirs


class Checks:
    def __init__(self, out, budget_s):
        self.out, self.deadline = out, time.monotonic() + budget_s
        self.results = {"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "host": platform.node(),
                        "status": "running", "checks": []}

    def left(self):
        return self.deadline - time.monotonic()

    def run(self, name, cmd, limit_s, env=None):
        """Runs `cmd` within min(limit_s, what the budget has left); records and returns its entry."""
        limit = min(limit_s, self.left())
        entry = {"name": name, "command": " ".join(cmd)}
        if limit < 5:
            entry.update(ok=False, rc=None, seconds=0, output="not run: the time budget is spent")
            print(f"== {name}: not run (the time budget is spent)", flush=True)
            self.results["checks"].append(entry)
            return entry
        print(f"== {name} (limit {limit:.0f} s): {entry['command']}", flush=True)
        t = time.monotonic()
        try:
            p = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=limit)
            rc, output = p.returncode, p.stdout.decode(errors="replace")
        except subprocess.TimeoutExpired as e:
            rc, output = None, (e.stdout or b"").decode(errors="replace") + f"\n[killed after {limit:.0f} s]"
        except OSError as e:
            rc, output = None, f"cannot run: {e}"
        entry.update(ok=rc == 0, rc=rc, seconds=round(time.monotonic() - t, 1), output=output[-20000:])
        print(output[-3000:], flush=True)
        print(f"== {name}: {'ok' if rc == 0 else 'FAILED'} in {entry['seconds']} s", flush=True)
        self.results["checks"].append(entry)
        return entry

    def finish(self, status, code):
        self.results["status"] = status
        self.results["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        with open(os.path.join(self.out, "results.json"), "w") as f:
            json.dump(self.results, f, indent=2)
        with open(os.path.join(self.out, "results.md"), "w") as f:
            f.write(markdown(self.results))
        print(f"gpu-check: {status}; results in {self.out}/results.json and results.md", flush=True)
        sys.exit(code)


def markdown(r):
    lines = [f"# GPU check, {r['started']} on {r['host']}: {r['status']}", ""]
    if r.get("gpu"):
        lines += [f"GPU: {r['gpu']}", ""]
    if r.get("training"):
        lines += ["| network | batch | candle-mpi images/s | PyTorch images/s (defaults) | PyTorch images/s (strict f32) "
                  "| candle / PyTorch strict | GPU memory peak, MiB (tensors / whole GPU) |",
                  "|---|---|---|---|---|---|---|"]
        for t in r["training"]:
            def fig(v, fmt="{:.1f}"):
                return fmt.format(v) if isinstance(v, (int, float)) else "-"
            ratio = (t["candle_images_per_s"] / t["torch_strict_images_per_s"]
                     if t.get("candle_images_per_s") and t.get("torch_strict_images_per_s") else None)
            lines.append(f"| {t['model']} | {t['batch']} | {fig(t.get('candle_images_per_s'))} | "
                         f"{fig(t.get('torch_images_per_s'))} | {fig(t.get('torch_strict_images_per_s'))} | "
                         f"{fig(ratio, '{:.2f}')} | {fig(t.get('gpu_tensor_peak_mib'), '{:.0f}')} / "
                         f"{fig(t.get('gpu_mem_peak_mib'), '{:.0f}')} |")
        lines.append("")
    lines += ["| check | result | seconds |", "|---|---|---|"]
    for c in r["checks"]:
        lines.append(f"| {c['name']} | {'ok' if c['ok'] else 'failed' if c['rc'] is not None else c['output'][:60]} "
                     f"| {c['seconds']} |")
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--root")
    ap.add_argument("--out")
    ap.add_argument("--budget-s", type=float, default=450)
    ap.add_argument("--torch", nargs=5)
    a = ap.parse_args()
    if a.torch:
        model, batch, steps, warmup, strict = a.torch
        return torch_run(model, int(batch), int(steps), int(warmup), strict == "strict")
    checks = Checks(a.out, a.budget_s)
    root, out = os.path.abspath(a.root), os.path.abspath(a.out)
    binary, suite = os.path.join(root, "bin", "candle-mpi"), os.path.join(root, "bin", "gpu-suite")
    cuda_dirs = cuda_library_dirs()
    env = dict(os.environ)
    # The pack's libraries first (its Open MPI must match its plugins; it has no
    # CUDA library), then the host's CUDA ones, then the system's.
    env["LD_LIBRARY_PATH"] = ":".join([os.path.join(root, "lib")] + cuda_dirs +
                                      [p for p in [env.get("LD_LIBRARY_PATH")] if p])
    # Open MPI from the pack, a singleton without an orted: the checks run on one GPU.
    env.update(OPAL_PREFIX=os.path.join(root, "ompi"), OMPI_MCA_ess_singleton_isolated="1",
               OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1", CANDLE_MPI_BIN=binary,
               RUST_BACKTRACE="1")
    checks.results["library_dirs"] = cuda_dirs

    # 1. The GPU and its driver.
    if not shutil.which("nvidia-smi"):
        checks.results["gpu"] = None
        checks.finish("no CUDA device: no nvidia-smi on this host (no NVIDIA driver)", 3)
    smi = checks.run("nvidia-smi", ["nvidia-smi", "--query-gpu=name,driver_version,memory.total,compute_cap,pci.bus_id",
                                    "--format=csv,noheader"], 30)
    checks.run("nvidia-smi (full)", ["nvidia-smi"], 30)
    if not smi["ok"] or not smi["output"].strip():
        checks.finish("no CUDA device: nvidia-smi finds no GPU", 3)
    checks.results["gpu"] = smi["output"].strip().splitlines()[0]

    # 2. Does the binary load, and from where?
    ldd = checks.run("ldd candle-mpi", ["ldd", binary], 30, env)
    missing = [line.split()[0] for line in ldd["output"].splitlines() if "not found" in line]
    checks.results["libraries_missing"] = missing
    if "libcuda.so.1" in missing:
        checks.finish("no CUDA driver: libcuda.so.1 is not on this host", 3)
    if missing:
        checks.finish(f"the binary cannot load here: {', '.join(missing)} not found", 1)

    # 3. NCCL on one GPU.
    nccl_json = os.path.join(out, "allreduce-nccl.json")
    checks.run("allreduce --backend nccl (1 GPU)", [binary, "allreduce", "--backend", "nccl", "--check",
                                                    "--min-bytes", "1K", "--max-bytes", "256M",
                                                    "--json", nccl_json], 90, env)

    # 4. The GPU test suite. On a GPU host a test skipped for want of one GPU
    # is a failure (the driver showed one); those that need two may skip.
    suite_run = checks.run("tests/gpu.rs", [suite, "--test-threads=1", "--nocapture"], 200, env)
    skipped = [line for line in suite_run["output"].splitlines() if "skipped: needs 1 " in line]
    if skipped:
        suite_run["ok"] = False
        suite_run["output"] += "\n[a GPU host, yet tests skipped for want of a GPU]"
        print(f"== tests/gpu.rs: {len(skipped)} test(s) skipped on a GPU host: counted as failed", flush=True)

    # 5 and 6. Each network on one GPU, candle-mpi then PyTorch where the host has it.
    probe = subprocess.run([sys.executable, "-c", "import torch, torchvision; assert torch.cuda.is_available()"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    have_torch = probe.returncode == 0
    checks.results["pytorch"] = have_torch
    if not have_torch:
        print("== PyTorch: not here (no torch and torchvision with CUDA); the comparison is left out", flush=True)
    training = []
    for model, batch in NETWORKS:
        t = {"model": model, "batch": batch, "image_size": IMAGE}
        with tempfile.TemporaryDirectory() as rec:
            run = checks.run(f"train {model}", [binary, "train", "--model", model, "--device", "cuda",
                                                "--image-size", str(IMAGE), "--classes", str(CLASSES),
                                                "--batch-size", str(batch), "--steps", str(STEPS),
                                                "--warmup-steps", str(WARMUP), "--log-every", "5",
                                                "--out", rec], 75, env)
            summary_path = os.path.join(rec, "summary.json")
            if run["ok"] and os.path.exists(summary_path):
                with open(summary_path) as f:
                    s = json.load(f)
                t.update(candle_images_per_s=s["images_per_s"], candle_step_s_median=s["step_s_median"],
                         first_step_s=s["first_step_s"],
                         skipped_steps=s.get("skipped_steps"), final_loss=s.get("final_loss"),
                         gpu_mem_peak_mib=(s.get("gpu_mem_peak_mib") or [None])[0],
                         gpu_tensor_peak_mib=(s.get("gpu_tensor_peak_mib") or [None])[0],
                         peak_rss_mib=(s.get("peak_rss_mib") or [None])[0])
                loss = s.get("final_loss")
                if s.get("skipped_steps") or not isinstance(loss, (int, float)) or loss != loss:
                    run["ok"] = False
                    print(f"== train {model}: {s.get('skipped_steps')} step(s) skipped, final loss {loss}: "
                          "counted as failed", flush=True)
        for strict, key in [(False, "torch"), (True, "torch_strict")] if have_torch else []:
            run = checks.run(f"PyTorch {model}{' strict f32' if strict else ''}",
                             [sys.executable, os.path.abspath(__file__), "--torch", model, str(batch), str(STEPS),
                              str(WARMUP), "strict" if strict else "defaults"], 60)
            if run["ok"]:
                p = json.loads(run["output"].strip().splitlines()[-1])
                t[f"{key}_images_per_s"] = p["images_per_s"]
                t[f"{key}_max_memory_allocated_mib"] = p["max_memory_allocated_mib"]
                t["torch_version"] = p["torch"]
        training.append(t)
        checks.results["training"] = training

    failed = [c["name"] for c in checks.results["checks"] if not c["ok"]]
    checks.finish("all checks passed" if not failed else f"failed: {', '.join(failed)}", 1 if failed else 0)


if __name__ == "__main__":
    main()
