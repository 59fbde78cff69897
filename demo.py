#!/usr/bin/env python
"""The whole pipeline offline on a CPU in minutes: synthetic tasks -> tiny pre-trained CLIP -> per-task fine-tuning
-> every merge method -> absolute / normalized accuracy table and chart (results/demo/).

    python demo.py                    # the full demo (what `make demo` runs)
    python demo.py --analyses         # also every analysis of docs/analysis.md on the demo checkpoints
    python demo.py --quick            # a reduced run (4 tasks, few steps): a smoke test
    python demo.py --methods sum TSVM --force

Re-running reuses what is cached (data, pre-trained weights, checkpoints, result files). Every flag sets a key of
config/demo.yaml (types and defaults: src/tsvmerge/config/schema.py, DemoSchema). See docs/demo.md.
"""

from __future__ import annotations

from pathlib import Path

CONFIG_DIR = Path(__file__).resolve().parent / "config"


def main(argv: list[str] | None = None) -> int:
    from tsvmerge.utils.huge_pages import enable_huge_pages

    enable_huge_pages()  # before torch's first allocation (src/tsvmerge/utils/huge_pages.py)
    from tsvmerge.recipes.demo import DEFAULT_ANALYSES, build_parser, demo_plan, run_demo

    args = build_parser(__doc__.split("\n\n")[0]).parse_args(argv)
    from tsvmerge.config import compose_config
    from tsvmerge.recipes.configs import config_source
    from tsvmerge.config.flags import flag_overrides, quote
    from tsvmerge.utils.entry_point import run_main

    overrides = flag_overrides(args)
    if args.analyses is not None:
        overrides.append(f"analyses={quote(args.analyses or list(DEFAULT_ANALYSES))}")
    source = config_source(CONFIG_DIR)

    def body() -> None:
        run_demo(demo_plan(compose_config(source, "demo", [*overrides, *args.overrides]), source))

    return run_main("demo.py", body)


if __name__ == "__main__":
    raise SystemExit(main())
