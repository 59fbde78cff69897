#!/usr/bin/env python
"""The whole pipeline offline on a CPU in minutes: synthetic tasks -> tiny pre-trained CLIP -> per-task fine-tuning
-> every merge method -> absolute / normalized accuracy table and chart (results/demo/).

    python demo.py                    # the full demo (what `make demo` runs)
    python demo.py --analyses         # also every analysis of docs/analysis.md on the demo checkpoints
    python demo.py --quick            # a reduced run (4 tasks, few steps): a smoke test
    python demo.py --methods sum TSVM --force

Re-running reuses what is cached (data, pre-trained weights, checkpoints, result files). See docs/demo.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def build_parser() -> argparse.ArgumentParser:
    from tsvmerge.demo import DEFAULT_ANALYSES, DEFAULT_METHODS

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--model", default="demo", help="model config (config/model/<name>.yaml) with `benchmark: synthetic`")
    add("--num-tasks", type=int, help="the first N synthetic tasks (default 8; --quick: 4)")
    add("--methods", nargs="+", default=list(DEFAULT_METHODS), metavar="METHOD",
        help=f"merge methods (config/method/<name>.yaml; default: {' '.join(DEFAULT_METHODS)})")
    add("--analyses", nargs="*", metavar="ANALYSIS",
        help=f"run analyses after the merges (no names: all of {' '.join(DEFAULT_ANALYSES)})")
    add("--quick", action="store_true", help="reduced run: 4 tasks, short pre-training and fine-tuning")
    add("--pretrain-steps", type=int, help="contrastive pre-training steps (default 600; --quick: 60)")
    add("--finetune-epochs", type=int, help="epochs per task (default: the model config's)")
    add("--finetune-max-steps", type=int, help="cap on optimizer steps per task (--quick: 20)")
    add("--n-eval-points", type=int, help="α grid points (default 31; --quick: 6)")
    add("--data-location", type=Path, default=Path("data"))
    add("--model-location", type=Path, default=Path("models/checkpoints"))
    add("--results-dir", type=Path, default=Path("results/demo"))
    add("--pretrained", type=Path, help="pre-trained weights file (default: the model config's `pretrained`)")
    add("--force", action="store_true", help="re-run evaluations and merges even when their results are fresh")
    add("--no-progress", action="store_true")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from tsvmerge.demo import DEFAULT_ANALYSES, DemoPlan, PretrainSettings, run_demo

    quick = args.quick
    steps = args.pretrain_steps or (60 if quick else PretrainSettings.steps)
    analyses = () if args.analyses is None else tuple(args.analyses or DEFAULT_ANALYSES)
    plan = DemoPlan(
        model=args.model, num_tasks=args.num_tasks or (4 if quick else 8), methods=tuple(args.methods),
        analyses=analyses,
        data_location=args.data_location, model_location=args.model_location, results_dir=args.results_dir,
        pretrained=args.pretrained, pretrain=PretrainSettings(steps=steps, warmup_steps=min(30, steps // 5)),
        finetune_epochs=args.finetune_epochs, finetune_max_steps=args.finetune_max_steps or (20 if quick else None),
        n_eval_points=args.n_eval_points or (6 if quick else 31), force=args.force, progress=not args.no_progress,
    )
    from tsvmerge.config import ConfigError

    try:
        run_demo(plan)
    except (RuntimeError, ConfigError) as exc:
        print(f"demo.py: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
