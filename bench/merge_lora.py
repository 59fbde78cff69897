"""LoRA adapter merge benchmark: TSV-M on factors (``tsvmerge merge``) against PEFT's ``add_weighted_adapter``.

    python bench/merge_lora.py                                   # 3 rank-16 adapters, hidden 1024, 8 layers
    python bench/merge_lora.py --peft-python /tmp/peftvenv/bin/python --json results/merge_lora.json
    python bench/merge_lora.py --layers 2                         # a smaller run

Synthetic inputs, built once into the cache folder (``--cache``, env TSVMERGE_BENCH_CACHE, as bench/merge_llm.py):
the Llama-layout base model (random bfloat16, sharded safetensors; bench/merge_llm.py's builder) and ``--tasks``
PEFT LoRA adapter folders written directly in PEFT's format (``adapter_model.safetensors`` with float32
``base_model.model.<module>.lora_A.weight`` [r, in] / ``….lora_B.weight`` [out, r], random seeded factors, and the
``adapter_config.json`` PEFT 0.22 writes: r, lora_alpha, target_modules q/k/v/o/gate/up/down_proj, task_type
CAUSAL_LM, ...), without instantiating the model.

Ours: ``tsvmerge merge --method TSVM`` and ``--method sum`` (adapter in, adapter out; T·r = 48 per module), each a
fresh process timed and sampled for peak RSS / peak anonymous memory by bench/merge_llm.py's ``measured``; the
seconds are the whole process (interpreter start, imports, reading, merge, writing); the merge's own time (what
``tsvmerge merge`` prints) is in the notes.

PEFT: a separate process per combination type, ``--peft-python`` (default: this interpreter). The intended use is a
separate environment with peft installed, so that PEFT is no dependency of the package, e.g.

    python -m venv /tmp/peftvenv && /tmp/peftvenv/bin/pip install torch==2.14.1 transformers peft

(torch pinned to the version of the main environment). It loads the base with ``LlamaForCausalLM.from_pretrained``
in ``--peft-dtype`` (default float32; PEFT keeps the loaded adapters' weights float32 either way, but with a
bfloat16 base the new ``cat`` adapter's tensors are bfloat16, so that its ΔW is off by ~2e-3), the adapters with
``PeftModel.from_pretrained`` + ``load_adapter``, and times only ``add_weighted_adapter(adapters, weights=[1]*T,
combination_type="svd", svd_rank=T·r)`` (PEFT's defaults otherwise: full_matrices=True) or ``combination_type="cat"``,
then saves the merged adapter for the checks. Its peak anonymous memory is the whole child process (load included).

Checks (float64, ΔW = scale·B·A per module, the scale read from each adapter_config.json with rank_pattern /
alpha_pattern): our ``sum`` against PEFT's ``cat`` (max relative Frobenius difference over modules, ≤ 1e-5), our
``sum`` and PEFT's ``svd`` against the exact sum of the inputs, and our TSVM against a dense TSV-M of the materialized
updates (per-task SVD, k = min(m, n) // T components, numerically zero ones dropped, Procrustes polar factors) on a
few modules.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import tempfile
import time
import zlib
from pathlib import Path

import torch

DEFAULT_CACHE = Path(os.environ.get("TSVMERGE_BENCH_CACHE", Path(__file__).resolve().parent.parent / ".bench_cache"))
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
PREFIX = "base_model.model."


# ------------------------------------------------------------------------------------------------ PEFT side
# (runs under --peft-python: imports torch, transformers and peft only, never tsvmerge or merge_llm)

def peft_child(argv: list[str]) -> None:
    """Load the base and the adapters, time one ``add_weighted_adapter`` call, save the merged adapter."""
    parser = argparse.ArgumentParser(prog="merge_lora.py --peft-child")
    parser.add_argument("--base", required=True)
    parser.add_argument("--adapters", nargs="+", required=True)
    parser.add_argument("--combination", required=True, choices=["svd", "cat"])
    parser.add_argument("--svd-rank", type=int, required=True)
    parser.add_argument("--dtype", default="float32", choices=["bfloat16", "float32"])
    parser.add_argument("--out", required=True)
    parser.add_argument("--result", required=True)
    args = parser.parse_args(argv)

    import peft
    import transformers
    from peft import PeftModel
    from transformers import LlamaForCausalLM

    dtype = getattr(torch, args.dtype)
    started = time.perf_counter()
    new_api = tuple(int(part) for part in re.findall(r"\d+", transformers.__version__)[:2]) >= (4, 56)
    model = LlamaForCausalLM.from_pretrained(args.base, **({"dtype": dtype} if new_api else {"torch_dtype": dtype}))
    names = [f"task{index}" for index in range(len(args.adapters))]
    model = PeftModel.from_pretrained(model, args.adapters[0], adapter_name=names[0])
    for name, folder in zip(names[1:], args.adapters[1:]):
        model.load_adapter(folder, adapter_name=name)
    load_seconds = time.perf_counter() - started

    merged = f"merged_{args.combination}"
    options = {"svd_rank": args.svd_rank} if args.combination == "svd" else {}
    started = time.perf_counter()
    model.add_weighted_adapter(names, [1.0] * len(names), adapter_name=merged, combination_type=args.combination,
                               **options)
    seconds = time.perf_counter() - started
    model.save_pretrained(args.out, selected_adapters=[merged])
    found = sorted(Path(args.out).rglob("adapter_config.json"))
    if len(found) != 1:
        raise RuntimeError(f"PEFT saved {len(found)} adapter configs under {args.out}, expected one")
    Path(args.result).write_text(json.dumps({
        "combination": args.combination, "seconds": seconds, "load_seconds": load_seconds,
        "folder": str(found[0].parent), "dtype": args.dtype, "threads": torch.get_num_threads(),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "peft": peft.__version__}}))


# ------------------------------------------------------------------------------------------------ inputs

def adapter_config(args: argparse.Namespace, base: Path) -> dict:
    """``adapter_config.json`` as PEFT 0.22 writes it for LoraConfig(r, lora_alpha, target_modules,
    task_type="CAUSAL_LM") (its ``peft_version`` stamp left out)."""
    return {
        "alora_invocation_tokens": None, "alpha_pattern": {}, "arrow_config": None, "astra_config": None,
        "auto_mapping": None, "base_model_name_or_path": str(base), "bias": "none", "corda_config": None,
        "ensure_weight_tying": False, "eva_config": None, "exclude_modules": None, "fan_in_fan_out": False,
        "inference_mode": True, "init_lora_weights": True, "kasa_config": None, "layer_replication": None,
        "layers_pattern": None, "layers_to_transform": None, "loftq_config": {}, "lora_alpha": args.alpha,
        "lora_bias": False, "lora_dropout": 0.0, "lora_ga_config": None, "megatron_config": None,
        "megatron_core": "megatron.core", "modules_to_save": None, "monteclora_config": None, "peft_type": "LORA",
        "qalora_group_size": 16, "r": args.rank, "rank_pattern": {}, "revision": None,
        "target_modules": list(PROJECTIONS), "target_parameters": None, "task_type": "CAUSAL_LM",
        "trainable_token_indices": None, "use_bdlora": None, "use_dora": False, "use_qalora": False,
        "use_rslora": False, "velora_config": None}


def target_shapes(shapes: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, int]]:
    """The targeted modules (``model.layers.i.self_attn.q_proj``...) and their weights' [out, in] shapes."""
    return {key[: -len(".weight")]: shape for key, shape in shapes.items()
            if len(shape) == 2 and key.endswith(".weight") and key.rsplit(".", 2)[-2] in PROJECTIONS}


def build_inputs(args: argparse.Namespace) -> tuple[Path, list[Path], dict[str, tuple[int, int]]]:
    """The base folder (bench/merge_llm.py's builder, no fine-tunes) and the adapter folders, in the cache."""
    from merge_llm import build, llama_shapes
    from safetensors.torch import save_file

    base_args = argparse.Namespace(**{**vars(args), "tasks": 0})
    base, _ = build(base_args)
    modules = target_shapes(llama_shapes(args.hidden, args.layers, args.vocab, args.intermediate, args.kv_heads,
                                         args.heads))
    root = args.cache / (f"lora_h{args.hidden}_l{args.layers}_v{args.vocab}_i{args.intermediate}_r{args.rank}"
                         f"_a{args.alpha}_t{args.tasks}")
    adapters = []
    for task in range(args.tasks):
        folder = root / f"adapter{task}"
        if not folder.is_dir():
            tensors = {}
            for module, (rows, cols) in modules.items():
                g = torch.Generator().manual_seed(zlib.crc32(f"{module}/lora{task}".encode()))
                tensors[f"{PREFIX}{module}.lora_A.weight"] = torch.randn(args.rank, cols, generator=g) / math.sqrt(cols)
                tensors[f"{PREFIX}{module}.lora_B.weight"] = 0.01 * torch.randn(rows, args.rank, generator=g)
            tmp = folder.with_name(folder.name + ".partial")
            tmp.mkdir(parents=True, exist_ok=True)
            save_file(tensors, str(tmp / "adapter_model.safetensors"), metadata={"format": "pt"})
            (tmp / "adapter_config.json").write_text(json.dumps(adapter_config(args, base), indent=2, sort_keys=True))
            tmp.rename(folder)
        adapters.append(folder)
    return base, adapters, modules


# ------------------------------------------------------------------------------------------------ reading ΔW

def _pattern(patterns: dict, module: str, default):
    """PEFT's rule for rank_pattern / alpha_pattern: the first pattern matching the end of the module name."""
    for pattern, value in (patterns or {}).items():
        if re.match(rf"(.*\.)?({pattern})$", module):
            return value
    return default


class Adapter:
    """A saved PEFT LoRA adapter folder: ΔW = scale·B·A per module (linear layers, no fan_in_fan_out)."""

    def __init__(self, folder: Path) -> None:
        from safetensors.torch import load_file

        self.folder = folder
        self.config = json.loads((folder / "adapter_config.json").read_text())
        if self.config.get("fan_in_fan_out") or self.config.get("use_dora"):
            raise ValueError(f"{folder}: fan_in_fan_out / DoRA adapters are not compared here")
        weights = load_file(str(folder / "adapter_model.safetensors"))
        self.factors: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        for key, tensor in weights.items():
            if key.endswith(".lora_A.weight"):
                module = key[len(PREFIX): -len(".lora_A.weight")]
                self.factors[module] = (weights[f"{PREFIX}{module}.lora_B.weight"], tensor)

    def scale(self, module: str) -> float:
        _, A = self.factors[module]
        rank = _pattern(self.config.get("rank_pattern"), module, self.config["r"])
        alpha = _pattern(self.config.get("alpha_pattern"), module, self.config["lora_alpha"])
        if rank != A.shape[0]:
            raise ValueError(f"{self.folder}: {module} has rank {A.shape[0]}, its config says {rank}")
        return alpha / (math.sqrt(rank) if self.config.get("use_rslora") else rank)

    def rank(self, module: str) -> str:
        _, A = self.factors[module]
        return f"{A.shape[0]} {str(A.dtype).removeprefix('torch.')}"

    def delta(self, module: str) -> torch.Tensor:
        B, A = self.factors[module]
        return self.scale(module) * (B.double() @ A.double())


def relative(x: torch.Tensor, reference: torch.Tensor) -> float:
    return float(torch.linalg.matrix_norm(x - reference) / torch.linalg.matrix_norm(reference))


def polar(X: torch.Tensor) -> torch.Tensor:
    P, _, Qh = torch.linalg.svd(X, full_matrices=False)
    return P @ Qh


def dense_tsvm(deltas: list[torch.Tensor]) -> torch.Tensor:
    """TSV-M (Algorithm 1) on dense float64 task matrices: per task the top k = min(m, n) // T singular components
    (numerically zero ones dropped), concatenated, U and V replaced by their Procrustes polar factors."""
    rows, cols = deltas[0].shape
    k = min(rows, cols) // len(deltas)
    Us, ss, Vs = [], [], []
    for delta in deltas:
        U, s, Vh = torch.linalg.svd(delta, full_matrices=False)
        keep = (s > s[0] * max(rows, cols) * torch.finfo(s.dtype).eps).nonzero().flatten()[:k]
        Us.append(U[:, keep])
        ss.append(s[keep])
        Vs.append(Vh[keep].mT)
    U, s, V = polar(torch.cat(Us, 1)), torch.cat(ss), polar(torch.cat(Vs, 1))
    return (U * s) @ V.mT


# ------------------------------------------------------------------------------------------------ running

def run_ours(method: str, base: Path, adapters: list[Path], out: Path, device: str) -> dict:
    """A fresh ``tsvmerge merge`` process (its output kept in a log: ``exec`` keeps the sampled pid)."""
    from merge_llm import measured

    log = out.with_suffix(".log")
    argv = ["merge", "--quiet", "--method", method, "--pretrained", str(base), "--finetuned", *map(str, adapters),
            "--out", str(out), "--device", device]
    # the command run in-process after the imports, so that the work (read, merge, write) is timed on its own
    timed = ("import sys, time; from tsvmerge.cli import main; started = time.perf_counter(); "
             "status = main(sys.argv[1:]); print(f'work seconds {time.perf_counter() - started:.3f}'); "
             "sys.exit(status)")
    result = measured(["sh", "-c", 'exec "$@" > "$0" 2>&1', str(log), sys.executable, "-c", timed, *argv])
    text = log.read_text()
    found = re.search(r"merged \d+ tasks with \S+ on \S+ in ([\d.]+) s", text)
    work = re.search(r"^work seconds ([\d.]+)$", text, flags=re.M)
    ranks = sorted(set(re.findall(r"^\s+rank\s+(\S+)\s", text, flags=re.M)))
    result.update(merge_seconds=float(found[1]) if found else None, work_seconds=float(work[1]) if work else None,
                  ranks="/".join(ranks), log=text)
    return result


def run_peft(args: argparse.Namespace, combination: str, base: Path, adapters: list[Path], scratch: Path) -> dict:
    from merge_llm import measured

    out, result = scratch / f"peft_{combination}", scratch / f"peft_{combination}.json"
    command = [args.peft_python, str(Path(__file__).resolve()), "--peft-child", "--base", str(base), "--adapters",
               *map(str, adapters), "--combination", combination, "--svd-rank", str(args.svd_rank), "--dtype",
               args.peft_dtype, "--out", str(out), "--result", str(result)]
    env = {**os.environ, "TRANSFORMERS_VERBOSITY": "error", "HF_HUB_OFFLINE": "1"}
    measured_result = measured(command, env=env)
    return {**measured_result, **json.loads(result.read_text())}


def compare(args: argparse.Namespace, adapters: list[Path], modules: dict, folders: dict[str, Path]) -> dict:
    """The accuracy checks, in float64."""
    inputs = [Adapter(folder) for folder in adapters]
    ours_sum, ours_tsvm = Adapter(folders["sum"]), Adapter(folders["TSVM"])
    peft_cat, peft_svd = Adapter(folders["peft cat"]), Adapter(folders["peft svd"])
    worst = {"sum_vs_cat": 0.0, "sum_vs_exact": 0.0, "cat_vs_exact": 0.0, "peft_svd_vs_exact": 0.0}
    for module in modules:
        exact = sum(adapter.delta(module) for adapter in inputs)
        mine, theirs = ours_sum.delta(module), peft_cat.delta(module)
        for name, value in (("sum_vs_cat", relative(mine, theirs)), ("sum_vs_exact", relative(mine, exact)),
                            ("cat_vs_exact", relative(theirs, exact)),
                            ("peft_svd_vs_exact", relative(peft_svd.delta(module), exact))):
            worst[name] = max(worst[name], value)
    ranks = {name: sorted({adapter.rank(module) for module in modules})
             for name, adapter in (("sum", ours_sum), ("TSVM", ours_tsvm), ("peft cat", peft_cat),
                                   ("peft svd", peft_svd))}
    last = args.layers - 1
    checked = ["model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.v_proj",
               f"model.layers.{last}.mlp.gate_proj", f"model.layers.{last}.mlp.down_proj"]
    tsvm = {}
    for module in checked:
        reference = dense_tsvm([adapter.delta(module) for adapter in inputs])
        tsvm[module] = relative(ours_tsvm.delta(module), reference)
    return {**worst, "ranks": ranks, "tsvm_vs_dense": tsvm}


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--peft-child":
        peft_child(sys.argv[2:])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--intermediate", type=int, default=2816)
    parser.add_argument("--heads", type=int, default=None, help="default: hidden / 64")
    parser.add_argument("--kv-heads", type=int, default=None, help="default: heads / 4")
    parser.add_argument("--rank", type=int, default=16, help="LoRA rank r of every adapter")
    parser.add_argument("--alpha", type=int, default=32, help="lora_alpha of every adapter")
    parser.add_argument("--tasks", type=int, default=3)
    parser.add_argument("--svd-rank", type=int, default=None, help="PEFT svd's rank (default: tasks × rank)")
    parser.add_argument("--device", default="cpu", help="device of tsvmerge merge (PEFT runs on the CPU)")
    parser.add_argument("--peft-python", default=sys.executable,
                        help="interpreter of an environment with peft (default: this one)")
    parser.add_argument("--peft-dtype", default="float32", choices=["bfloat16", "float32"],
                        help="dtype PEFT loads the base model in (bfloat16: its cat adapter comes out bfloat16)")
    parser.add_argument("--input-shard-size", default="1GB", help="shard size of the synthetic base model")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--json", type=Path, default=None, help="append the result rows to this JSON list")
    args = parser.parse_args()
    args.heads = args.heads or max(1, args.hidden // 64)
    args.kv_heads = args.kv_heads or max(1, args.heads // 4)
    args.svd_rank = args.svd_rank or args.tasks * args.rank
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from merge_llm import folder_bytes

    base, adapters, modules = build_inputs(args)
    base_gib = folder_bytes(base) / 2**30
    print(f"base model: {base_gib:.3f} GiB bf16 (hidden {args.hidden}, intermediate {args.intermediate}, "
          f"{args.layers} layers, vocab {args.vocab}); {args.tasks} LoRA adapters r={args.rank} "
          f"alpha={args.alpha} on {len(modules)} modules ({', '.join(PROJECTIONS)}); torch threads "
          f"{torch.get_num_threads()}", flush=True)
    rows = []
    args.cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=args.cache) as tmp:
        scratch = Path(tmp)
        folders = {}
        from merge_llm import measured

        # what a process that only imports tsvmerge (and torch) costs: the floor under our rows
        floor = measured([sys.executable, "-m", "tsvmerge", "merge", "--help"])
        rows.append({"method": "import floor", "seconds": floor["seconds"], "peak_anon_gib": floor["peak_anon_gib"],
                     "peak_rss_gib": floor["peak_rss_gib"],
                     "notes": "python -m tsvmerge merge --help: interpreter + imports only"})
        for method in ("TSVM", "sum"):
            out = scratch / f"ours_{method}"
            result = run_ours(method, base, adapters, out, args.device)
            folders[method] = out
            rows.append({"method": f"tsvmerge {method}", "seconds": result["seconds"],
                         "peak_anon_gib": result["peak_anon_gib"], "peak_rss_gib": result["peak_rss_gib"],
                         "merge_seconds": result["merge_seconds"], "work_seconds": result["work_seconds"],
                         "notes": f"fresh process; read + merge + write {result['work_seconds']:.2f} s (merge "
                                  f"{result['merge_seconds']} s); rank {result['ranks']}"})
            print(f"  {rows[-1]['method']}: {result['seconds']:.2f} s", flush=True)
        for combination in ("svd", "cat"):
            result = run_peft(args, combination, base, adapters, scratch)
            folders[f"peft {combination}"] = Path(result["folder"])
            rank = f"svd_rank {args.svd_rank}" if combination == "svd" else f"rank {args.tasks * args.rank}"
            rows.append({"method": f"PEFT {combination}", "seconds": result["seconds"],
                         "peak_anon_gib": result["peak_anon_gib"], "peak_rss_gib": result["peak_rss_gib"],
                         "load_seconds": result["load_seconds"], "versions": result["versions"],
                         "notes": f"add_weighted_adapter only ({rank}); load {result['load_seconds']:.1f} s "
                                  f"({result['dtype']} base), peak anon = whole process"})
            print(f"  {rows[-1]['method']}: {result['seconds']:.2f} s", flush=True)
        checks = compare(args, adapters, modules, folders)

    print(f"\n{'method':16s} | {'seconds':>8s} | {'peak anon GiB':>13s} | notes")
    print("-" * 17 + "+" + "-" * 10 + "+" + "-" * 15 + "+" + "-" * 60)
    for row in rows:
        print(f"{row['method']:16s} | {row['seconds']:8.2f} | {row['peak_anon_gib']:13.3f} | {row['notes']}")
    by = {row["method"]: row for row in rows}
    svd, ours = by["PEFT svd"], by["tsvmerge TSVM"]
    # PEFT's figure is its add_weighted_adapter call alone (no interpreter start, imports or model load); ours after
    # the imports is reading the adapters, merging and writing: the same work plus the I/O.
    print(f"\nPEFT svd seconds / ours TSVM seconds: {svd['seconds'] / ours['work_seconds']:.1f}x (our command after "
          f"its imports: read, merge, write), {svd['seconds'] / ours['seconds']:.1f}x (our whole process, "
          "interpreter start and imports included)")
    floor = by["import floor"]["peak_anon_gib"]
    print(f"base model {base_gib:.3f} GiB bf16; peak anonymous memory: TSVM {ours['peak_anon_gib']:.3f} GiB "
          f"({ours['peak_anon_gib'] / base_gib:.2f}x the base), sum {by['tsvmerge sum']['peak_anon_gib']:.3f} GiB; "
          f"above the import floor ({floor:.3f} GiB): TSVM {ours['peak_anon_gib'] - floor:.3f} GiB, "
          f"sum {by['tsvmerge sum']['peak_anon_gib'] - floor:.3f} GiB")
    print("ranks per module: " + ", ".join(f"{name} {'/'.join(map(str, ranks))}"
                                             for name, ranks in checks["ranks"].items()))
    print(f"ours sum vs PEFT cat: max relative Frobenius difference {checks['sum_vs_cat']:.3g} over {len(modules)} "
          f"modules ({'ok' if checks['sum_vs_cat'] <= 1e-5 else 'ABOVE 1e-5'}); vs the exact float64 sum: ours sum "
          f"{checks['sum_vs_exact']:.3g}, PEFT cat {checks['cat_vs_exact']:.3g}, PEFT svd (rank {args.svd_rank}) "
          f"{checks['peft_svd_vs_exact']:.3g}")
    print("ours TSVM vs dense float64 TSV-M (relative Frobenius): "
          + ", ".join(f"{module} {error:.3g}" for module, error in checks["tsvm_vs_dense"].items()))
    if args.json:
        previous = json.loads(args.json.read_text()) if args.json.is_file() else []
        setting = {key: getattr(args, key) for key in ("hidden", "layers", "vocab", "intermediate", "rank", "alpha",
                                                       "tasks", "svd_rank", "peft_dtype")}
        previous += [{**row, **setting, "base_gib": base_gib, "checks": checks} for row in rows]
        args.json.write_text(json.dumps(previous, indent=2))


if __name__ == "__main__":
    main()
