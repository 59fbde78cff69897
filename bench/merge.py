"""Merge benchmark on synthetic checkpoints in the published format.

    python bench/merge.py --model ViT-B-32 --tasks 8 --method TSVM
    python bench/merge.py --model ViT-B-32 --tasks 20 --method TSVM sum ties --svd randomized
    python bench/merge.py --model ViT-S-32 --tasks 4 --method TSVM ties --device cuda:1
    python bench/merge.py --model ViT-B-32 --tasks 20 --method TSVM iso_c iso_cts dc_merge cart
    python bench/merge.py --model ViT-B-32 --tasks 8 --method TSVM esm regmean      (32 calibration images per task)

Checkpoints are built once into a cache folder: the open_clip architecture with random weights and
the published key layout (an image encoder wrapper with attribute ``model``, text transformer
removed), plus one fine-tuned copy per task whose image-tower matrices move by a low-rank-plus-noise
delta (the text parts stay untouched, as in the published fine-tuning). Each method then runs in a
fresh process, so its wall time and peak memory are its own: peak RSS (memory-mapped checkpoint
pages included) and peak anonymous memory (RssAnon: what the merge really allocates), plus the peak
of CUDA allocations when merging on a GPU (``--device cuda[:i]``).

The data-aware methods (esm, regmean) are timed with their calibration pass included: the image encoder built from
θ0, ``--calibration-samples`` random preprocessed images per task (seeded) pushed through each task's encoder, the
statistics folded into the method, then the merge.

With TSVM among the methods of a CPU run, the same run then times the plain algorithm (``reference_tsvm.py``: a full
float32 SVD per task matrix and two for the Procrustes factors, as SPEC.md states it and its authors run it) on
every matrix TSVM decomposes, reading excluded, prints the ratio of its time to TSVM's, and measures both against
the float64 definition, matrix by matrix (``--accuracy-keys`` restricts that check, ``--no-plain`` skips the
baseline).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from tsvmerge.utils.allocator import cap_heap_retention
from tsvmerge.utils.huge_pages import enable_huge_pages

enable_huge_pages()  # before torch's first allocation (docs: src/tsvmerge/utils/huge_pages.py)
cap_heap_retention()  # as `tsvmerge merge` and main.py (docs: src/tsvmerge/utils/allocator.py)

# isort: split
import torch  # noqa: E402

DEFAULT_CACHE = Path(os.environ.get("TSVMERGE_BENCH_CACHE", Path(__file__).resolve().parent.parent / ".bench_cache"))


def published_state_dict(model_name: str) -> dict[str, torch.Tensor]:
    """θ0 with the published key names: ``model.visual.*``, ``model.token_embedding.weight``, ..."""
    import open_clip

    model = open_clip.create_model(model_name, pretrained=None)
    del model.transformer
    return {f"model.{key}": value.detach().clone() for key, value in model.state_dict().items()}


def task_delta(key: str, value: torch.Tensor, generator: torch.Generator, rank: int = 16,
               scale: float = 1e-3, noise: float = 1e-4) -> torch.Tensor | None:
    """A fine-tuning-like change of one entry: low rank plus noise for matrices, noise elsewhere."""
    if not key.startswith("model.visual.") or not value.is_floating_point():
        return None
    if value.ndim == 2:
        rows, cols = value.shape
        left = torch.randn(rows, rank, generator=generator)
        right = torch.randn(rank, cols, generator=generator)
        low_rank = (left @ right) * (scale / rank**0.5)
        return low_rank + noise * torch.randn(value.shape, generator=generator)
    return noise * torch.randn(value.shape, generator=generator)


def ensure_checkpoints(model: str, tasks: int, cache: Path) -> tuple[Path, list[Path]]:
    """Write θ0 and the first ``tasks`` fine-tuned checkpoints unless the cache already has them."""
    folder = cache / model
    folder.mkdir(parents=True, exist_ok=True)
    zeroshot = folder / "zeroshot.pt"
    finetuned = [folder / f"task{i}.pt" for i in range(tasks)]
    if zeroshot.exists() and all(p.exists() for p in finetuned):
        return zeroshot, finetuned
    torch.manual_seed(0)
    pretrained = published_state_dict(model)
    if not zeroshot.exists():
        torch.save(pretrained, zeroshot)
    for i, path in enumerate(finetuned):
        if path.exists():
            continue
        started = time.perf_counter()
        generator = torch.Generator().manual_seed(1000 + i)
        state = {}
        for key, value in pretrained.items():
            delta = task_delta(key, value, generator)
            state[key] = value if delta is None else value + delta
        tmp = path.with_suffix(".tmp")
        torch.save(state, tmp)
        os.replace(tmp, path)
        print(f"  wrote {path} ({time.perf_counter() - started:.1f} s)", flush=True)
    return zeroshot, finetuned


def calibrate_synthetic(method, tasks, model: str, samples: int, device) -> None:
    """The calibration pass on ``samples`` seeded random images per task (224 px or the model's size)."""
    import open_clip

    from tsvmerge.calibration import Batch, calibrate
    from tsvmerge.models.encoder import ImageEncoder

    clip = open_clip.create_model(model, pretrained=None)
    encoder = ImageEncoder(clip)
    encoder.load_state_dict({key: tasks.pretrained[key] for key in encoder.state_dict()})
    encoder = encoder.to(device).eval()
    size = clip.visual.image_size
    height, width = (size, size) if isinstance(size, int) else size
    generator = torch.Generator().manual_seed(0)
    images = [torch.randn(samples, 3, height, width, generator=generator) for _ in range(tasks.num_tasks)]
    batch = method.calibration.batch_size

    def batches(task: int) -> list:
        return [Batch(x) for x in (images[task].split(batch) if batch else [images[task]])]

    calibrate(method, tasks, encoder, batches, lambda module, x: module(x.to(device)))


def run_one(method: str, model: str, zeroshot: Path, finetuned: list[Path], svd: str | None, device: str,
            params: list[str], calibration_samples: int = 32) -> dict:
    """Merge in this process and report time and memory (the child side of ``main``)."""
    from tsvmerge.checkpoints import open_state_dict
    from tsvmerge.merging import TaskVectors, apply_task_vector, build_method, merge, method_parameters
    from tsvmerge.utils.device import activate_device, resolve_device
    from tsvmerge.utils.memory import MemoryMonitor

    values = dict(item.split("=", 1) for item in params)
    if svd is not None and "svd" in method_parameters(method):
        values["svd"] = svd
    if method == "consensus":
        values.setdefault("tall_lambda", "0.4")
    # Settings published per benchmark (CART's λ and rank ratio for ViT-B-32 × 8/14/20) apply as in main.py.
    built = build_method(method, values).for_benchmark(model, len(finetuned))
    dev = activate_device(resolve_device(device))  # cuda -> cuda:<i>, the current GPU of this process
    with MemoryMonitor(device=dev) as monitor:
        started = time.perf_counter()
        tasks = TaskVectors(open_state_dict(zeroshot), [open_state_dict(p) for p in finetuned], device=dev)
        calibration_seconds = None
        if built.calibration is not None:
            calibrate_synthetic(built, tasks, model, calibration_samples, dev)
            calibration_seconds = time.perf_counter() - started
        result = merge(built, tasks, progress=False)
        if result.task_vector is not None and not built.task_specific:
            apply_task_vector(tasks.pretrained, result.task_vector, 1.0, inplace=True)
        seconds = time.perf_counter() - started
    report = monitor.report
    return {"method": method, "svd": values.get("svd"), "tasks": len(finetuned), "device": str(dev),
            "seconds": seconds, "calibration_seconds": calibration_seconds, "peak_rss_gib": report.peak_rss_bytes / 2**30,
            "peak_anon_gib": (report.peak_rss_anon_bytes or 0) / 2**30,
            "peak_cuda_gib": None if report.peak_cuda_bytes is None else report.peak_cuda_bytes / 2**30}


def plain_comparison(zeroshot: Path, finetuned: list[Path], svd: str | None, accuracy_keys: str | None):
    """The plain float32 baseline and the accuracy of both, on the checkpoints' task vectors (``compare_tsvm.py``)."""
    from compare_tsvm import plain_comparison as compare_on

    from tsvmerge.checkpoints import open_state_dict
    from tsvmerge.merging import TaskVectors

    tasks = TaskVectors(open_state_dict(zeroshot), [open_state_dict(p) for p in finetuned], device="cpu")
    return compare_on(tasks, svd, accuracy_keys)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="ViT-B-32", help="open_clip architecture (ViT-B-32, ViT-B-16, ViT-L-14...)")
    parser.add_argument("--tasks", type=int, default=8)
    parser.add_argument("--method", nargs="+", default=["TSVM"])
    parser.add_argument("--svd", choices=["exact", "full", "randomized"], default=None)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--set", dest="params", nargs="+", default=[], metavar="KEY=VALUE")
    parser.add_argument("--calibration-samples", type=int, default=32,
                        help="data-aware methods: random images per task in the calibration pass (default 32)")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="where synthetic checkpoints are kept")
    parser.add_argument("--json", type=Path, help="also append the results to this JSON-lines file")
    parser.add_argument("--no-plain", action="store_true", help="skip the plain TSV-M baseline and accuracy check")
    parser.add_argument("--accuracy-keys", default=None,
                        help="regular expression: check accuracy on the matching matrices only (default: all)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()

    zeroshot, finetuned = ensure_checkpoints(args.model, args.tasks, args.cache)
    if args.child:
        print(json.dumps(run_one(args.method[0], args.model, zeroshot, finetuned, args.svd, args.device, args.params,
                                 args.calibration_samples)))
        return 0

    tsvm_seconds, tsvm_device = 0.0, None
    print(f"{'method':24s} {'svd':>10s} {'tasks':>5s} {'wall s':>8s} {'calib s':>8s} {'peak RSS':>10s} "
          f"{'peak anon':>10s} {'peak CUDA':>10s} device")
    for method in args.method:
        command = [sys.executable, __file__, "--child", "--model", args.model, "--tasks", str(args.tasks),
                   "--method", method, "--device", args.device, "--cache", str(args.cache),
                   "--calibration-samples", str(args.calibration_samples)]
        if args.svd:
            command += ["--svd", args.svd]
        if args.params:
            command += ["--set", *args.params]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            print(f"{method}: failed\n{done.stderr}", file=sys.stderr)
            return done.returncode
        row = json.loads(done.stdout.strip().splitlines()[-1])
        cuda = "-" if row["peak_cuda_gib"] is None else f"{row['peak_cuda_gib']:8.2f} G"
        calibration = "-" if row["calibration_seconds"] is None else f"{row['calibration_seconds']:.1f}"
        print(f"{row['method']:24s} {row['svd'] or '-':>10s} {row['tasks']:5d} {row['seconds']:8.1f} "
              f"{calibration:>8s} {row['peak_rss_gib']:8.2f} G {row['peak_anon_gib']:8.2f} G {cuda:>10s} {row['device']}", flush=True)
        if args.json:
            with args.json.open("a") as fh:
                fh.write(json.dumps({"model": args.model, **row}) + "\n")
        if row["method"] == "TSVM":
            tsvm_seconds, tsvm_device = row["seconds"], row["device"]
    # the baseline runs on the CPU: compared only with a CPU merge
    if "TSVM" in args.method and not args.no_plain and tsvm_device == "cpu":
        comparison = plain_comparison(zeroshot, finetuned, args.svd, args.accuracy_keys)
        print(f"plain TSV-M (float32, full SVDs): {comparison.plain_seconds:.1f} s; TSVM {tsvm_seconds:.1f} s: "
              f"{comparison.plain_seconds / tsvm_seconds:.2f}x")
        print(comparison.summary())
        for key, shape, ours, plain in comparison.failures:
            print(f"  outside the contract: {key} {shape}: ours {ours:.2e}, plain {plain:.2e}")
        if args.json:
            with args.json.open("a") as fh:
                fh.write(json.dumps({"model": args.model, "method": "plain TSV-M (reference)",
                                     "seconds": comparison.plain_seconds, "accuracy": [
                                         {"key": k, "shape": s, "ours": o, "plain": p}
                                         for k, s, o, p in comparison.rows]}) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
