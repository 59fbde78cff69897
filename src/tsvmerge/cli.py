"""``tsvmerge`` console entry point: merge checkpoint files without any dataset.

    tsvmerge merge --method TSVM --pretrained zs.pt --finetuned a.pt b.pt --out merged.pt
    tsvmerge methods

Works on any model's state dicts (nothing here assumes CLIP key names): LLM users point it at
their own ``.pt`` / ``.safetensors`` files.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from .checkpoints import open_state_dict, save_state_dict
from .checkpoints.tall_mask_files import save_tall_masks
from .merging import (
    TaskVectors,
    apply_task_vector,
    available_methods,
    build_method,
    flat_task_masks,
    merge,
    method_parameters,
)
from .merging.svd import SVD_MODES
from .utils.device import resolve_device
from .utils.memory import MemoryMonitor


def _parse_assignments(items: Sequence[str]) -> dict[str, str]:
    params = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"--set expects KEY=VALUE, got {item!r}")
        params[key.strip()] = value.strip()
    return params


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tsvmerge", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    m = sub.add_parser("merge", help="merge fine-tuned checkpoints into one model (or per-task models)")
    m.add_argument("--method", required=True, help=f"one of: {', '.join(available_methods())}")
    m.add_argument("--pretrained", required=True, type=Path, help="pre-trained state dict θ0 (.pt or .safetensors)")
    m.add_argument("--finetuned", required=True, nargs="+", type=Path, help="fine-tuned state dicts θ1..θT")
    m.add_argument("--out", required=True, type=Path,
                   help="output state dict (.pt or .safetensors); a folder of task<i>.pt for task-specific methods")
    m.add_argument("--alpha", type=float, default=1.0, help="scaling coefficient α of θ0 + α·τMT (default 1.0)")
    m.add_argument("--device", default="auto", help="auto | cpu | cuda[:i] (default auto)")
    m.add_argument("--svd", choices=SVD_MODES, default=None,
                   help="SVD solver of the SVD-based methods (default exact; randomized is faster, approximate)")
    m.add_argument("--set", dest="params", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                   help="method parameter, e.g. --set k=20 (see `tsvmerge methods`)")
    m.add_argument("--names", nargs="+", help="task names (default task0..task{T-1}); used in saved TALL masks")
    m.add_argument("--lambda", dest="tall_lambda", type=float, default=None,
                   help="tall_mask: the λ whose masks are applied and saved (no validation data here; default 0.4)")
    m.add_argument("--save-masks", type=Path, help="tall_mask: also write the masks in the published .npy format")
    m.add_argument("--report-sti", action="store_true",
                   help="TSV methods: print Singular Task Interference per transformer block, before/after")
    m.add_argument("--sti-out", type=Path, help="with --report-sti: write the per-entry and per-block STI as JSON")
    m.add_argument("--quiet", action="store_true", help="no progress bars")

    sub.add_parser("methods", help="list merge methods and their parameters")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "methods":
        for name in available_methods():
            params = ", ".join(f"{k}={v!r}" for k, v in method_parameters(name).items()) or "-"
            print(f"{name:26s} {params}")
        return 0
    try:
        return _merge(args)
    except (ValueError, FileNotFoundError, RuntimeError) as error:
        print(f"tsvmerge: error: {error}", file=sys.stderr)
        return 2


def _merge(args: argparse.Namespace) -> int:
    params = _parse_assignments(args.params)
    available = method_parameters(args.method)
    if args.svd is not None:
        if "svd" not in available:
            raise ValueError(f"--svd applies to SVD-based methods; {args.method!r} does not use an SVD")
        params["svd"] = args.svd
    if args.report_sti:
        if "report_sti" not in available:
            raise ValueError(f"--report-sti applies to the TSV-M methods, not {args.method!r}")
        params["report_sti"] = "true"
    method = build_method(args.method, params)
    device = resolve_device(args.device)

    with MemoryMonitor(device=device) as monitor:
        pretrained = open_state_dict(args.pretrained)
        finetuned = [open_state_dict(path) for path in args.finetuned]
        tasks = TaskVectors(pretrained, finetuned, names=args.names, device=device)
        result = merge(method, tasks, progress=not args.quiet)
        written = _write_outputs(args, result, pretrained, tasks)

    print(f"merged {tasks.num_tasks} tasks with {method.name} on {device} in {result.stats['seconds']:.1f} s; "
          f"{monitor.report.summary()}")
    for path in written:
        print(f"  wrote {path}")
    if "storage" in result.stats:
        storage = result.stats["storage"]
        print(f"  storage: {storage['numbers_per_task']:,} numbers per task, {storage['numbers_total']:,} in total "
              f"({storage['compression_ratio']:.1f}x smaller than a full task vector each)")
    if "sti" in result.stats:
        _print_interference(result.stats)
        if args.sti_out:
            args.sti_out.parent.mkdir(parents=True, exist_ok=True)
            args.sti_out.write_text(json.dumps({"per_entry": result.stats["sti"],
                                                "per_block": result.stats["sti_per_block"]}, indent=2))
            print(f"  wrote {args.sti_out}")
    return 0


def _print_interference(stats: dict) -> None:
    """Per-block STI table (blocks in numeric order) and the whole-model totals."""
    def block_order(name: str) -> tuple[str, int]:
        prefix, _, index = name.rpartition(".")
        return prefix, int(index) if index.isdigit() else -1

    print(f"  {'Singular Task Interference':48s} {'before':>12s} {'after':>12s}")
    for block in sorted(stats["sti_per_block"], key=block_order):
        values = stats["sti_per_block"][block]
        print(f"  {block:48s} {values['before']:12.4g} {values['after']:12.4g}")
    before = sum(v["before"] for v in stats["sti"].values())
    after = sum(v["after"] for v in stats["sti"].values())
    print(f"  {'all matrices':48s} {before:12.4g} {after:12.4g}")


def _write_outputs(args: argparse.Namespace, result, pretrained, tasks: TaskVectors) -> list[Path]:
    if not result.method.task_specific:
        merged = apply_task_vector(pretrained, result.task_vector, args.alpha, inplace=True)
        save_state_dict(merged, args.out)
        return [args.out]
    if args.out.suffix in {".pt", ".safetensors", ".pth", ".bin"}:
        raise ValueError(f"{result.method.name} gives one model per task: --out must be a folder, not {args.out}")
    choice = _mask_choice(result, args.tall_lambda)
    args.out.mkdir(parents=True, exist_ok=True)
    written = []
    for task in range(tasks.num_tasks):
        merged = apply_task_vector(pretrained, result.task_specific_vector(task, choice), args.alpha, inplace=True)
        path = args.out / f"task{task}.pt"
        save_state_dict(merged, path)
        written.append(path)
        del merged
    if args.save_masks:
        if result.masks is None:
            raise ValueError(f"--save-masks applies to tall_mask, not {result.method.name}")
        save_tall_masks(args.save_masks, flat_task_masks(result, tasks, [choice] * tasks.num_tasks))
        written.append(args.save_masks)
    return written


def _mask_choice(result, tall_lambda: float | None) -> int:
    labels = result.mask_labels
    if tall_lambda is None:
        return labels.index(0.4) if 0.4 in labels else 0
    if tall_lambda not in labels:
        raise ValueError(f"--lambda {tall_lambda} is not among this method's mask choices {labels}")
    return labels.index(tall_lambda)


if __name__ == "__main__":
    raise SystemExit(main())
