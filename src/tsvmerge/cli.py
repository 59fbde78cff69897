"""``tsvmerge`` console entry point: one sub-command per recipe of :mod:`tsvmerge.recipes`.

    tsvmerge merge --method TSVM --pretrained zs.pt --finetuned a.pt b.pt --out merged.pt
    tsvmerge merge --method TSVM --pretrained meta-llama/Llama-3.2-1B --finetuned org/ft-a ./ft-b --out merged/
    torchrun --nproc_per_node=4 -m tsvmerge merge ...
    tsvmerge methods
    tsvmerge download checkpoints --model ViT-B-32 --tasks 8       # published checkpoints into models/checkpoints
    tsvmerge download data --benchmark 8 --to data                 # the datasets from hub mirrors into data/
    tsvmerge doctor model=ViT-B-32 num_tasks=8                     # what a main.py run still lacks

Inputs are state-dict files, Hugging Face model folders or hub ids; a model-folder base gives a model folder out,
written shard by shard (see docs/hf_models.md).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .merging import available_methods, method_parameters
from .recipes import doctor as doctor_recipe
from .recipes import download as download_recipe
from .recipes import merge as merge_recipe
from .utils.entry_point import run_main

PROG = "tsvmerge"


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    merge_recipe.add_parser(sub)

    sub.add_parser("methods", help="list merge methods and their parameters")

    download_recipe.add_parser(sub, with_kinds=command in (None, "download"))
    doctor_recipe.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((arg for arg in argv if not arg.startswith("-")), None)
    args = build_parser(command).parse_args(argv)
    args.argv = [PROG, *argv]
    if args.command == "methods":
        from .merging.registry import build_method, method_class, method_label

        # Per method: name, label and reference, then its parameters with their defaults.
        for name in available_methods():
            reference = method_class(name).reference
            params = ", ".join(f"{k}={v!r}" for k, v in method_parameters(name).items()) or "-"
            print(f"{name:26s} {method_label(name)}" + (f" — {reference}" if reference else ""))
            print(f"{'':26s} {params}")
            if build_method(name).merges_factors():
                print(f"{'':26s} LoRA adapters: merged exactly from their factors, written as an adapter")
            needs = method_class(name).calibration
            if needs is not None:
                print(f"{'':26s} data: {needs.samples} unlabeled samples per task ({needs.split} split, seed "
                      f"{needs.seed}); tsvmerge merge --calibration / --calibration-text")
        return 0
    if args.command in ("download", "doctor"):
        return run_main(PROG, lambda: args.run(args), user_errors=(ValueError,))  # bad arguments
    return run_main(PROG, lambda: args.run(args), user_errors=merge_recipe.USER_ERRORS)


if __name__ == "__main__":
    raise SystemExit(main())
