"""The benchmark: ``python -m gradcourse.bench`` (``make bench``).

Every figure is a ratio or a rate measured in one process, with the things compared
interleaved, because these machines are shared and noisy. Results are printed as a table
and written to ``_build/bench.json``. ``--quick`` runs every measurement briefly (CI uses
it to check that the benchmark works; its numbers are not the targets).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from . import __version__
from .data import load_data
from .device import describe_device, pick_device
from .models import CNNConfig, build_model
from .train import TrainConfig, train

DEFAULT_OUTPUT = Path("_build") / "bench.json"
# The 28x28 configuration for throughput: six 3x3 convolutions of width 16 on 28x28 digits.
THROUGHPUT_MODEL = CNNConfig(depth=6, width=16, init="kaiming_normal")
THROUGHPUT_IMAGE = 28


def monitor_overhead(repeats: int, steps: int) -> dict:
    """Time with per-step monitoring / time without, same config and seed: ``repeats``
    back-to-back pairs, alternating which goes first, and the median of the pairs' ratios
    (the two runs of a pair see the same load on a shared machine)."""
    data = load_data("digits")
    config = TrainConfig(steps=steps, eval_every=steps)
    train(train_config=TrainConfig(steps=10), data=data, progress=False)  # warm-up
    ratios, on, off = [], [], []
    for repeat in range(repeats):
        pair = {}
        for monitor in ((True, False) if repeat % 2 == 0 else (False, True)):
            pair[monitor] = train(train_config=config, data=data, monitor=monitor, progress=False).seconds
        ratios.append(pair[True] / pair[False])
        on.append(pair[True])
        off.append(pair[False])
    return {"monitor_overhead_ratio": statistics.median(ratios),
            "monitor_on_ms_per_step": 1000 * statistics.median(on) / steps,
            "monitor_off_ms_per_step": 1000 * statistics.median(off) / steps}


def slider_roundtrip(moves: int) -> dict:
    """A live-explorer slider move to its final figure, default config: median and p90 over
    ``moves`` distinct learning rates (none served from memory), and the time to the first
    figure drawn while training."""
    import numpy as np

    from .live_sliders import LiveExplorer

    explorer = LiveExplorer(start=False)
    explorer.set(lr=0.5, wait=True)  # warm-up: first figure, font cache, thread start
    totals, firsts = [], []
    try:
        for lr in np.geomspace(0.001, 0.3, moves):
            frames = explorer.counts["frames"]
            start = time.perf_counter()
            explorer.set(lr=float(lr))
            first = None
            while not explorer.wait(timeout=0.005):
                if first is None and explorer.counts["frames"] > frames:
                    first = time.perf_counter() - start
            total = time.perf_counter() - start
            totals.append(total)
            firsts.append(first if first is not None else total)
    finally:
        explorer.close()
    return {"slider_roundtrip_median_s": float(np.median(totals)),
            "slider_roundtrip_p90_s": float(np.percentile(totals, 90)),
            "slider_first_view_median_s": float(np.median(firsts))}


def sweep_speedup(repeats: int, steps: int | None = None, k: int = 8, threads: int | None = None,
                  model: CNNConfig | None = None, train_config: TrainConfig | None = None,
                  name: str = "") -> dict:
    """``k`` learning rates trained together (:func:`gradcourse.vectorized.train_many`) vs one
    after another with :func:`gradcourse.train`, same steps, best of ``repeats``, both with
    ``threads`` torch threads (default: the process's setting). Two references:

    - ``..._passes_only``: the sequential time over the time the same steps take when they
      run only the K-wide network's forward and backward passes (:func:`gradcourse.vectorized.passes_only`): the
      speed-up ``train_many`` would reach if its update, records and evaluation cost
      nothing. No work on those can take the figure past it;
    - ``..._at_matmul_rate``: the sequential time over the time the ``k`` runs' FLOPs take
      at the rate of a large matmul with the same threads. A practical peak, not a strict
      one: a convolution kernel can run faster than the BLAS matmul (BENCHMARKS.md has a
      host where it does).

    The default configuration is the slider's (the live explorer's ``LIVE_MODEL`` and
    ``LIVE_TRAIN``: what a precomputed learning-rate slider sweeps); ``name`` is added to the
    keys of another."""
    from .live_sliders import LIVE_MODEL, LIVE_TRAIN
    from .vectorized import passes_only, train_many

    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        data = load_data("digits")
        model = model or LIVE_MODEL
        base = train_config or LIVE_TRAIN
        steps = steps or base.steps
        configs = _lr_sweep(base, steps, k)
        train_many(model, configs, data)  # warm-up: the grouped kernels for these shapes
        train(model, configs[0], data, progress=False)
        passes_only(model, configs, data)
        times: dict = {"together": [], "apart": [], "passes": []}
        for repeat in range(repeats):  # best of each, rotating which goes first
            for variant in _rotate(list(times), repeat):
                start = time.perf_counter()
                if variant == "together":
                    train_many(model, configs, data)
                elif variant == "apart":
                    for config in configs:
                        train(model, config, data, progress=False)
                else:
                    passes_only(model, configs, data)
                times[variant].append(time.perf_counter() - start)
        flops = k * steps * _step_flops(model, data)
        at_matmul_rate = flops / matmul_flops(torch.device("cpu"))
    finally:
        torch.set_num_threads(previous)
    together, apart, passes = (min(times[v]) for v in ("together", "apart", "passes"))
    suffix = name + ("" if threads is None else "_all_cores")
    return {f"sweep_speedup_{k}{suffix}": apart / together,
            f"sweep_together_s{suffix}": together, f"sweep_sequential_s{suffix}": apart,
            f"sweep_passes_only_s{suffix}": passes,
            f"sweep_speedup_{k}_passes_only{suffix}": apart / passes,
            f"sweep_speedup_{k}_at_matmul_rate{suffix}": apart / at_matmul_rate}


def _rotate(items: list, by: int) -> list:
    by %= len(items)
    return items[by:] + items[:by]


def sweep_scaling(repeats: int, widths=(1, 4, 8, 16), steps: int | None = None) -> dict:
    """Seconds per model when ``k`` learning rates of the slider's configuration train
    together, for each ``k`` in ``widths``, and one run of :func:`gradcourse.train` alone
    (best of ``repeats``, the widths interleaved): where the per-model cost stops falling,
    no wider sweep can beat the ratio of ``train_alone_s`` to that cost."""
    from .live_sliders import LIVE_MODEL, LIVE_TRAIN
    from .vectorized import train_many

    data = load_data("digits")
    steps = steps or LIVE_TRAIN.steps
    best: dict = {}
    for repeat in range(repeats + 1):  # the first round warms up every shape
        for k in widths:
            configs = _lr_sweep(LIVE_TRAIN, steps, k)
            start = time.perf_counter()
            if k == 1:
                train(LIVE_MODEL, configs[0], data, progress=False)
            else:
                train_many(LIVE_MODEL, configs, data)
            seconds = (time.perf_counter() - start) / k
            if repeat:
                best[k] = min(best.get(k, seconds), seconds)
    return {"train_alone_s": best[1], **{f"sweep_per_model_s_{k}": best[k] for k in widths if k > 1}}


def _lr_sweep(base: TrainConfig, steps: int, k: int) -> list[TrainConfig]:
    """``base`` at ``k`` learning rates spaced evenly in log from 0.001 to 0.3 (one config at
    k = 1), ``steps`` steps and one evaluation at the end."""
    import numpy as np

    return [replace(base, steps=steps, eval_every=steps, lr=float(lr)) for lr in np.geomspace(0.001, 0.3, k)]


def _step_flops(model_config: CNNConfig, data, batch: int | None = None) -> int:
    """FLOPs of one forward+backward+SGD step (default batch size), counted by torch."""
    from torch.utils.flop_counter import FlopCounterMode

    model = build_model(model_config, data).to(data.device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    n = batch or TrainConfig().batch_size
    with FlopCounterMode(display=False) as counter:
        loss = torch.nn.functional.cross_entropy(model(data.x_train[:n]), data.y_train[:n])
        loss.backward()
        optimizer.step()
    return counter.get_total_flops()


def matmul_flops(device: torch.device, size: int = 2048, repeats: int = 5) -> float:
    """FLOP/s of a large float32 matrix product on ``device`` (the practical peak)."""
    a = torch.randn(size, size, device=device)
    b = torch.randn(size, size, device=device)
    a @ b
    _sync(device)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return 2 * size ** 3 / best


def training_flops(device: torch.device, steps: int) -> dict:
    """Achieved FLOP/s of forward+backward+SGD on the 28x28 configuration, and its share of the
    matmul peak measured right after. FLOPs per step are counted by torch's FlopCounterMode."""
    data = load_data("digits", image_size=THROUGHPUT_IMAGE, device=device)
    model = build_model(THROUGHPUT_MODEL, data).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = data.x_train[:64], data.y_train[:64]

    def step():
        loss = torch.nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    flops_per_step = _step_flops(THROUGHPUT_MODEL, data, batch=len(y))
    for _ in range(3):
        step()
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    seconds = (time.perf_counter() - start) / steps
    peak = matmul_flops(device)
    return {"train_flops_per_s": flops_per_step / seconds, "matmul_flops_per_s": peak,
            "train_fraction_of_matmul_peak": flops_per_step / seconds / peak,
            "train_ms_per_step_28x28": 1000 * seconds, "flops_per_step_28x28": flops_per_step}


def gpu_speedup(steps: int) -> dict:
    """Steps per second of the 28x28 configuration on the GPU over the CPU (only with CUDA)."""
    if not torch.cuda.is_available():
        return {}
    data = load_data("digits", image_size=THROUGHPUT_IMAGE)
    config = TrainConfig(steps=steps, eval_every=steps)
    times = {}
    for name in ("cpu", "cuda"):
        train(THROUGHPUT_MODEL, TrainConfig(steps=5), data, device=name, progress=False)
        times[name] = train(THROUGHPUT_MODEL, config, data, device=name, progress=False).seconds
    return {"gpu_speedup": times["cpu"] / times["cuda"], "gpu_name": describe_device(torch.device("cuda"))}


def book_build_seconds() -> dict:
    """Wall time of a clean ``make book`` (no build folder, no run cache). A failed build
    is reported with the end of its output instead of a time."""
    subprocess.run(["make", "clean"], check=True, capture_output=True)
    start = time.perf_counter()
    build = subprocess.run(["make", "book"], capture_output=True, text=True)
    if build.returncode != 0:
        return {"book_build_error": (build.stdout + build.stderr)[-2000:]}
    return {"book_build_s": time.perf_counter() - start}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# The figures the benchmark exists for: ``main`` fails when one is missing.
REQUIRED = ("slider_roundtrip_median_s", "slider_roundtrip_p90_s", "slider_first_view_median_s",
            "monitor_overhead_ratio", "sweep_speedup_8", "sweep_per_model_s_8", "train_fraction_of_matmul_peak")


def missing_figures(results: dict, cores: int | None = None, gpu: bool | None = None) -> list[str]:
    """The required figures absent from ``results``: those in ``REQUIRED``, the all-cores sweep
    on a machine with more than one core, and the GPU speed-up where CUDA is present."""
    cores = (os.cpu_count() or 1) if cores is None else cores
    gpu = torch.cuda.is_available() if gpu is None else gpu
    required = list(REQUIRED) + ["sweep_speedup_8_all_cores"] * (cores > 1) + ["gpu_speedup"] * gpu
    return [key for key in required if key not in results]


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="run each measurement briefly (CI check)")
    parser.add_argument("--book", action="store_true", help="also time a clean book build")
    parser.add_argument("--output", default=str(DEFAULT_OUTPUT), help="where to write bench.json")
    args = parser.parse_args(argv)
    repeats, steps = (2, 20) if args.quick else (11, 200)
    device = pick_device()
    results: dict = {
        "date": time.strftime("%Y-%m-%d"), "machine": platform.platform(), "processor": platform.processor(),
        "cpu_threads": torch.get_num_threads(), "torch": torch.__version__, "gradcourse": __version__,
        "device": describe_device(device), "quick": args.quick,
    }
    results.update(slider_roundtrip(3 if args.quick else 12))
    results.update(monitor_overhead(2 if args.quick else 21, steps))
    # Best of 5 for the slider's configuration (about 5 s a round): on this shared host a slow
    # spell can last several seconds, and the best of 3 sometimes caught one variant in it.
    slider_repeats, sweep_repeats, sweep_steps = (1, 1, 20) if args.quick else (5, 3, None)
    results.update(sweep_speedup(slider_repeats, sweep_steps))
    if (os.cpu_count() or 1) > 1:
        results.update(sweep_speedup(slider_repeats, sweep_steps, threads=os.cpu_count()))
    # The unpooled 6-layer default (200 steps): its convolutions already run near their best
    # rate in a single run, which bounds what training together can gain (BENCHMARKS.md).
    unpooled = {"model": CNNConfig(), "train_config": TrainConfig(), "name": "_unpooled"}
    results.update(sweep_speedup(sweep_repeats, sweep_steps, **unpooled))
    if (os.cpu_count() or 1) > 1:
        results.update(sweep_speedup(sweep_repeats, sweep_steps, threads=os.cpu_count(), **unpooled))
    results.update(sweep_scaling(1 if args.quick else 3, steps=20 if args.quick else None))
    results.update(training_flops(device, 5 if args.quick else 30))
    results.update(gpu_speedup(20 if args.quick else 200))
    if args.book:
        results.update(book_build_seconds())
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(results, indent=2))
    width = max(len(k) for k in results)
    for key, value in results.items():
        shown = f"{value:.3g}" if isinstance(value, float) else str(value)
        print(f"{key:<{width}}  {shown}")
    print(f"written to {output}")
    if "book_build_error" in results:
        print("the book build failed: see book_build_error above", file=sys.stderr)
        return {}
    missing = missing_figures(results)
    if missing:
        print(f"bench.json lacks {missing}", file=sys.stderr)
        return {}
    return results


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
