"""GPU check: the CUDA tests (``tests/gpu``, marker ``gpu``) and a merge benchmark on the GPU, with a short report.

    python bench/gpu_check.py                      # what `make gpu-check` runs
    python bench/gpu_check.py --skip-bench -- -k merging

Without a CUDA device it says so and exits 0 (the CUDA tests would all be skipped). Exits 1 when a stage fails.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


@dataclass
class Stage:
    name: str
    command: list[str]
    timeout: float
    code: int | None = None
    seconds: float = 0.0
    tail: str = ""

    def run(self) -> bool:
        print(f"\n== {self.name}: {' '.join(self.command)}", flush=True)
        started = time.perf_counter()
        try:
            done = subprocess.run(self.command, cwd=REPO, capture_output=True, text=True, timeout=self.timeout)
            self.code, output = done.returncode, done.stdout + done.stderr
        except subprocess.TimeoutExpired as exc:
            self.code, output = 124, f"{exc.stdout or ''}{exc.stderr or ''}\n(timed out after {self.timeout:.0f} s)"
            output = output if isinstance(output, str) else output.decode(errors="replace")
        self.seconds = time.perf_counter() - started
        self.tail = "\n".join(output.strip().splitlines()[-25:])
        print(self.tail, flush=True)
        return self.code == 0


def describe_gpus() -> list[str]:
    import torch

    lines = [f"torch {torch.__version__}, CUDA {torch.version.cuda}, {torch.cuda.device_count()} GPU(s)"]
    for index in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(index)
        major, minor = props.major, props.minor
        bf16 = "native bf16" if major >= 8 else "no native bf16 (bf16 runs fall back to fp16)"
        lines.append(f"  cuda:{index} {props.name}, {props.total_memory / 2**30:.0f} GiB, sm_{major}{minor}, {bf16}")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--skip-bench", action="store_true", help="only the CUDA tests")
    parser.add_argument("--bench-model", default="ViT-S-32", help="open_clip architecture of the benchmark")
    parser.add_argument("--bench-tasks", type=int, default=4)
    parser.add_argument("--bench-methods", nargs="+", default=["TSVM", "TSVM_2", "ties", "TSVC"])
    parser.add_argument("--timeout", type=float, default=900, help="seconds allowed to each stage")
    parser.add_argument("pytest_args", nargs="*", help="extra pytest arguments (after --)")
    args = parser.parse_args()

    import torch

    if not torch.cuda.is_available():
        print(f"gpu-check: no CUDA device is present (torch {torch.__version__}, built with CUDA "
              f"{torch.version.cuda or 'none'}): nothing to check; the CUDA tests are skipped on this machine.")
        return 0
    header = describe_gpus()
    print("\n".join(header), flush=True)

    python = sys.executable
    tests = [python, "-m", "pytest", "tests/gpu", "-m", "gpu", "-q", "-rs", "-p", "no:cacheprovider", *args.pytest_args]
    stages = [Stage("CUDA tests", tests, args.timeout)]
    if not args.skip_bench:
        stages.append(Stage("merge benchmark", [python, "bench/merge.py", "--model", args.bench_model, "--tasks",
                                                str(args.bench_tasks), "--device", "cuda", "--method",
                                                *args.bench_methods], args.timeout))
        stages.append(Stage("merge benchmark, randomized SVD", [
            python, "bench/merge.py", "--model", args.bench_model, "--tasks", str(args.bench_tasks), "--device",
            "cuda", "--method", "TSVM", "--svd", "randomized"], args.timeout))
    results = [stage.run() for stage in stages]

    print("\n== gpu-check report")
    print("\n".join(header))
    for stage, ok in zip(stages, results, strict=True):
        last = stage.tail.splitlines()[-1] if stage.tail else ""
        print(f"  {'ok  ' if ok else 'FAIL'} {stage.name:34s} {stage.seconds:7.1f} s  {last[:100]}")
    return 0 if all(results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
