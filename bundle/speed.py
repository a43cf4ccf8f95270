"""The floor benchmark: how close prediction and training come to what this CPU can do, the eager path and the fast
one side by side in one run (issue "Close to the machine's limit"; figures in docs/results.md, "Speed").

    python -m bundle.speed [--sizes 1024 4096] [--repeats 3] [--threads N] [--isa avx2|native] [--checkpoint CKPT]

It prints, each figure the median of `--repeats` after a warm-up (the matmul and the window: of 10x as many):
  matmul    the cores' fp32 matmul rate (2048², torch): the yardstick;
  network   GFLOP per megapixel of the forward (torch.utils.flop_counter, a 512² window) and per training step
            (batch and crop of configs/finetune.yaml, forward + backward);
  window    one 512² window: ms, GFLOP/s and its share of the matmul rate, eager | openvino;
  slice S²  `VolumePredictor.predict_image` of an S x S slice (EPFL slice 120 tiled; windows as configs/inference.yaml,
            then the instances), s and peak RSS, eager | openvino, their ratio and the largest probability difference;
  train     one training step (forward, loss, backward, Adam), eager | torch.compile + channels_last;
  busy core the 1024² slice with another process spinning on one core, at the idle rule's threads, at the threads
            the rule picks with the core taken (bundle.threads.busy_cores) and at 1;
  loader    with --loader N: the shipped fine-tune's wait for data against its step, per iteration.
With --device cuda it measures only the paper recipe on the GPU (fp32 and bf16 autocast): training it/s and
prediction ms per megapixel, the check to run when a GPU machine is lent.
Every figure comes from a child process of its own, so that each peak RSS is its own and the processes do not share
warm caches. `--isa avx2` (the default) caps oneDNN, MKL and ATen at AVX2, the instruction set of the machines we
target (CI's, the users' laptops), when this one has more; `--isa native` uses what the CPU has.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
EPFL = REPO.parent / "shared" / "data" / "epfl_hippocampus" / "training.tif"
ISA_CAPS = {"avx2": {"ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"},
            "native": {}}  # fmt: skip
WINDOW = 512


def make_slice(size: int):
    """A size x size uint8 EM slice: EPFL slice 120 tiled (mirrored), else smooth synthetic blobs; and its source."""
    import numpy as np

    if EPFL.is_file():
        import tifffile

        base = tifffile.imread(EPFL, key=120)
        reps = (-(-size // base.shape[0]), -(-size // base.shape[1]))
        pad = ((0, base.shape[0] * (reps[0] - 1)), (0, base.shape[1] * (reps[1] - 1)))
        return np.pad(base, pad, mode="symmetric")[:size, :size], "EPFL slice 120 tiled"
    from scipy.ndimage import gaussian_filter

    image = gaussian_filter(np.random.default_rng(0).random((size, size), dtype=np.float32), 6)
    return ((image - image.min()) / (np.ptp(image) + 1e-12) * 255).astype(np.uint8), "synthetic"


def median_time(fn, repeats: int) -> float:
    """Median wall seconds of `repeats` calls of `fn`, after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def peak_rss_bytes() -> int:
    """The peak resident memory of this process so far (Linux: ru_maxrss is in KiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def load_network(checkpoint: str):
    """The width-16 multitask U-Net with `checkpoint`'s weights, weights-only, in eval mode."""
    from bundle.networks import MultiTaskUNet, load_checkpoint

    return load_checkpoint(MultiTaskUNet(), checkpoint).eval()


def floor_figures(checkpoint: str, repeats: int) -> dict:
    """The matmul rate, the network's FLOPs, one 512² window on each runtime and one training step, eager and
    compiled."""
    import torch
    import torch.nn.functional as F
    from torch.utils.flop_counter import FlopCounterMode

    from bundle.inference.runtime import OpenVINONetwork

    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    matmul = 2 * 2048**3 / median_time(lambda: a @ b, 10 * repeats) / 1e9
    network = load_network(checkpoint)
    window = torch.randn(1, 1, WINDOW, WINDOW)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        network(window)
    gflop_per_mp = counter.get_total_flops() / 1e9 / (WINDOW * WINDOW / 1e6)
    fast = OpenVINONetwork(network)
    with torch.no_grad():  # a window is cheap: 10x the repeats, so that one slow call does not make the figure
        eager_s = median_time(lambda: network(window), 10 * repeats)
        difference = float((fast(window) - network(window)).abs().max())
    openvino_s = median_time(lambda: fast(window), 10 * repeats)

    batch, crop = 2, 256  # configs/finetune.yaml's batch_size, configs/train.yaml's crop_size
    x = torch.randn(batch, 1, crop, crop)
    labels, density = (torch.rand(batch, crop, crop) > 0.7).long(), torch.rand(batch, 1, crop, crop) * 1e-3

    def trainer(channels_last: bool, compiled: bool):
        net = load_network(checkpoint).train()
        inputs = x
        if channels_last:
            net, inputs = net.to(memory_format=torch.channels_last), x.to(memory_format=torch.channels_last)
        optimizer = torch.optim.Adam(net.parameters(), 1e-3)
        model = torch.compile(net) if compiled else net

        def step() -> None:
            out = model(inputs)
            loss = F.cross_entropy(out[:, :2], labels) + F.mse_loss(out[:, 2:] * 1e3, density * 1e3)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        return step

    eager_step = trainer(False, False)
    with FlopCounterMode(display=False) as counter:
        eager_step()
    step_gflop = counter.get_total_flops() / 1e9
    train_eager = median_time(eager_step, 3 * repeats)
    compiled_step = trainer(True, True)
    start = time.perf_counter()
    compiled_step()
    compile_s = time.perf_counter() - start
    train_compiled = median_time(compiled_step, 3 * repeats)
    return {"matmul_gflops": matmul, "gflop_per_mp": gflop_per_mp, "window_eager_s": eager_s,
            "window_openvino_s": openvino_s, "window_max_difference": difference, "step_gflop": step_gflop,
            "train_eager_s": train_eager, "train_compiled_s": train_compiled, "compile_s": compile_s,
            "threads": torch.get_num_threads()}  # fmt: skip


def slice_figures(size: int, runtime: str, checkpoint: str, repeats: int, probability_path: str | None) -> dict:
    """Seconds per `predict_image` of a size² slice on `runtime`, with configs/inference.yaml's inferer and
    post-processing, and this process's peak RSS; the probability is saved to `probability_path` when given."""
    import numpy as np
    import torch
    from monai.bundle import ConfigParser

    from bundle.data.dataset import normalize_slice

    parser = ConfigParser()
    parser.read_config(str(REPO / "configs" / "inference.yaml"))
    parser.update({"checkpoint": checkpoint, "device": "$torch.device('cpu')", "runtime": runtime, "input_image": None,
                   "predictor#scale": [1.0, 1.0], "predictor#pixel_size": None})  # fmt: skip
    predictor = parser.get_parsed_content("predictor")
    raw, source = make_slice(size)
    seconds = median_time(lambda: predictor.predict_image(normalize_slice(raw)), repeats)
    if probability_path:
        np.save(probability_path, predictor.predict_image(normalize_slice(raw))[0])
    return {"size": size, "runtime": runtime, "seconds": seconds, "peak_rss_gb": peak_rss_bytes() / 1e9, "source": source,
            "threads": torch.get_num_threads()}  # fmt: skip


def loader_figures(iterations: int, num_workers: int, output_dir: str) -> dict:
    """Seconds per iteration that the shipped fine-tune (configs/finetune.yaml on its EPFL defaults, one round)
    spends waiting for its batches against computing them, by ignite's BasicTimeProfiler, with `num_workers`
    data-loader processes."""
    from ignite.handlers import BasicTimeProfiler
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(REPO / "configs" / "train.yaml"), str(REPO / "configs" / "finetune.yaml")])
    parser.update({"bundle_root": str(REPO), "output_dir": output_dir, "num_iterations": iterations,
                   "val_interval": iterations, "num_rounds": 1, "num_workers": num_workers})  # fmt: skip
    parser.get_parsed_content("initialize")
    trainer = parser.get_parsed_content("train#trainer")
    profiler = BasicTimeProfiler()
    profiler.attach(trainer)
    trainer.run()
    results = profiler.get_results()
    return {"dataflow_s": float(results["dataflow_stats"]["mean"]),
            "step_s": float(results["processing_stats"]["mean"]), "num_workers": num_workers, "iterations": iterations}  # fmt: skip


def gpu_figures(device: str, repeats: int, size: int = 4096) -> dict:
    """The paper recipe on `device` (configs/recipe_paper.yaml: width 32, batch 4 of 512² crops): training steps per
    second and ms per megapixel of a size² slice's sliding-window prediction (512² windows, overlap 0.25, 16 at a
    time), in fp32 and under bf16 autocast (AMP)."""
    import torch
    import torch.nn.functional as F
    from monai.inferers import SlidingWindowInferer

    from bundle.networks import MultiTaskUNet

    def synchronized(fn):
        def call():
            fn()
            if torch.device(device).type == "cuda":
                torch.cuda.synchronize()

        return call

    figures: dict = {"device": torch.cuda.get_device_name(device) if torch.device(device).type == "cuda" else device}
    x = torch.randn(4, 1, 512, 512, device=device)
    labels = (torch.rand(4, 512, 512, device=device) > 0.7).long()
    image = torch.randn(1, 1, size, size, device=device)
    inferer = SlidingWindowInferer((512, 512), sw_batch_size=16, overlap=0.25, mode="gaussian")
    for name, dtype in (("fp32", None), ("bf16", torch.bfloat16)):
        torch.manual_seed(0)
        net = MultiTaskUNet(width=32).to(device)
        optimizer = torch.optim.Adam(net.parameters(), 1e-3)

        def step() -> None:
            with torch.autocast(torch.device(device).type, dtype=dtype, enabled=dtype is not None):
                loss = F.cross_entropy(net(x)[:, :2].float(), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        figures[f"train_{name}_it_s"] = 1 / median_time(synchronized(step), 5 * repeats)
        net.eval()

        @torch.no_grad()
        def predict() -> None:
            with torch.autocast(torch.device(device).type, dtype=dtype, enabled=dtype is not None):
                inferer(image, net)

        figures[f"predict_{name}_ms_per_mp"] = median_time(synchronized(predict), repeats) * 1e3 / (size * size / 1e6)
    return figures


def child(spec: dict) -> dict:
    """Run one measurement described by `spec` in this process."""
    import torch

    sys.path.insert(0, str(REPO))
    torch.set_num_threads(spec["threads"])
    if spec["kind"] == "floor":
        return floor_figures(spec["checkpoint"], spec["repeats"])
    if spec["kind"] == "gpu":
        return gpu_figures(spec["device"], spec["repeats"], spec["size"])
    if spec["kind"] == "loader":
        with tempfile.TemporaryDirectory() as output_dir:
            return loader_figures(spec["iterations"], spec["num_workers"], output_dir)
    return slice_figures(spec["size"], spec["runtime"], spec["checkpoint"], spec["repeats"], spec.get("probability"))


def run_child(spec: dict, isa: str) -> dict:
    """`child(spec)` in a fresh interpreter with the `isa` caps in its environment; its figures."""
    env = {**os.environ, **ISA_CAPS[isa], "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "bundle.speed", "--child", json.dumps(spec)]
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"bundle.speed: the {spec['kind']} measurement failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def machine_line(isa: str) -> str:
    """The CPU model, whether it has AVX-512, and the instruction set the figures were measured with."""
    model, flags = "unknown CPU", ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and model == "unknown CPU":
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = line
    except OSError:
        pass
    has = "AVX-512" if " avx512f" in flags else "AVX2" if " avx2" in flags else "no AVX2"
    used = "capped at AVX2 (--isa avx2)" if isa == "avx2" and has == "AVX-512" else f"{has} (--isa {isa})"
    return f"{model}, {os.cpu_count()} CPUs seen, has {has}; measured with {used}"


def main(argv: list[str] | None = None) -> None:
    """Measure every figure in its own child process and print them side by side."""
    parser = argparse.ArgumentParser(prog="python -m bundle.speed", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--checkpoint", default=str(REPO / "models" / "model.pt"))
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 4096])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="default: the rule of bundle.threads")
    parser.add_argument("--isa", choices=sorted(ISA_CAPS), default="avx2")
    parser.add_argument("--no_busy", action="store_true", help="skip the one-busy-core figure")
    parser.add_argument("--loader", type=int, metavar="ITERATIONS", default=0,
                        help="also time the fine-tune's data loading against its steps over ITERATIONS iterations, "
                        "with 1 loader process (the default) and with none (about a minute each, plus one round)")
    parser.add_argument("--device", default="cpu", help="cuda: only the paper recipe's GPU figures (fp32 and bf16 "
                        "AMP), in a few minutes; the prepared check for a lent GPU machine")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    import numpy as np

    from bundle.threads import thread_count

    threads, reason = thread_count(args.threads)
    base = {"checkpoint": args.checkpoint, "repeats": args.repeats, "threads": threads}
    if args.device != "cpu":
        size = max(args.sizes)
        gpu = run_child({**base, "kind": "gpu", "device": args.device, "size": size}, "native")
        print(f"# python -m bundle.speed {' '.join(argv if argv is not None else sys.argv[1:])}; {gpu['device']}")
        for name in ("fp32", "bf16"):
            print(f"paper recipe, {name}: training {gpu[f'train_{name}_it_s']:.2f} it/s (width 32, batch 4 x 512²); "
                  f"prediction {gpu[f'predict_{name}_ms_per_mp']:.1f} ms per megapixel ({size}² slice, "
                  "16 windows at a time)")
        return
    print(f"# python -m bundle.speed {' '.join(argv if argv is not None else sys.argv[1:])}".rstrip())
    print(f"# {machine_line(args.isa)}; {threads} threads ({reason}); medians of {args.repeats} after a warm-up")
    floor = run_child({**base, "kind": "floor"}, args.isa)
    peak = floor["matmul_gflops"]
    print(f"matmul 2048² fp32: {peak:.1f} GFLOP/s | network: {floor['gflop_per_mp']:.1f} GFLOP per megapixel forward,"
          f" {floor['step_gflop']:.1f} GFLOP per training step (batch 2, 256²)")  # fmt: skip
    print(f"{'':24} {'eager':>22} {'fast':>22} {'speed-up':>9}  notes")

    def row(name: str, eager_s: float, fast_s: float, gflop: float | None, note: str, unit: str = "s") -> None:
        def cell(s: float) -> str:
            text = f"{s * 1e3:.1f} ms" if unit == "ms" else f"{s:.2f} s"
            return f"{text} ({gflop / s:.0f} GF/s, {gflop / s / peak:.0%})" if gflop else text

        print(f"{name:24} {cell(eager_s):>22} {cell(fast_s):>22} {eager_s / fast_s:>8.2f}x  {note}")

    mp = WINDOW * WINDOW / 1e6
    row("window 512² (openvino)", floor["window_eager_s"], floor["window_openvino_s"], floor["gflop_per_mp"] * mp,
        f"max |difference| of the outputs {floor['window_max_difference']:.1e}", unit="ms")  # fmt: skip
    slices: dict[int, dict] = {}
    with tempfile.TemporaryDirectory() as scratch:
        for size in dict.fromkeys([*args.sizes, 1024] if not args.no_busy else args.sizes):
            figures = {}
            for runtime in ("eager", "openvino"):
                path = str(Path(scratch) / f"{runtime}_{size}.npy")
                figures[runtime] = run_child({**base, "kind": "slice", "size": size, "runtime": runtime,
                                              "probability": path}, args.isa)  # fmt: skip
            slices[size] = figures
            eager, fast = figures["eager"], figures["openvino"]
            probabilities = [np.load(Path(scratch) / f"{runtime}_{size}.npy") for runtime in ("eager", "openvino")]
            difference = float(np.abs(probabilities[0] - probabilities[1]).max())
            row(f"slice {size}² (openvino)", eager["seconds"], fast["seconds"], None,
                f"peak RSS {eager['peak_rss_gb']:.2f} | {fast['peak_rss_gb']:.2f} GB; max |Δ probability| "
                f"{difference:.1e}; {eager['source']}")  # fmt: skip
    row("train step (compile)", floor["train_eager_s"], floor["train_compiled_s"], floor["step_gflop"],
        f"torch.compile + channels_last, {floor['compile_s']:.0f} s to compile", unit="ms")  # fmt: skip
    for num_workers in (1, 0) if args.loader else ():
        figures = run_child({**base, "kind": "loader", "iterations": args.loader, "num_workers": num_workers}, args.isa)
        print(f"fine-tune loader, {num_workers} worker{'s' * (num_workers != 1)}: waits "
              f"{figures['dataflow_s'] * 1e3:.1f} ms per iteration for its batch, computes {figures['step_s'] * 1e3:.1f} ms "
              f"({figures['dataflow_s'] / (figures['dataflow_s'] + figures['step_s']):.0%} waiting; "
              f"{args.loader} iterations of configs/finetune.yaml on EPFL)")  # fmt: skip
    if args.no_busy:
        return
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(1.0)
        busy_threads, busy_reason = thread_count(args.threads)  # the rule again, now that a core is taken
        counts = dict.fromkeys((threads, busy_threads, 1))
        busy = {(runtime, n): run_child({**base, "threads": n, "kind": "slice", "size": 1024, "runtime": runtime},
                                        args.isa)["seconds"]  # fmt: skip
                for runtime in ("eager", "openvino") for n in counts}
    finally:
        spinner.kill()
    idle = {runtime: slices[1024][runtime]["seconds"] for runtime in ("eager", "openvino")}
    for n in counts:
        chosen = f" (rule: {busy_reason})" if n == busy_threads else " (the idle rule's)" if n == threads else ""
        row(f"1024², 1 core busy, {n}T", busy[("eager", n)], busy[("openvino", n)], None,
            f"another process spins on one core; {busy[('eager', n)] / idle['eager']:.1f}x | "
            f"{busy[('openvino', n)] / idle['openvino']:.1f}x the idle {threads}-thread time{chosen}")  # fmt: skip


if __name__ == "__main__":
    main()
