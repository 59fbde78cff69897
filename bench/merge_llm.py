"""Merge benchmark on synthetic Llama-layout model folders (random bfloat16 weights, sharded safetensors).

    python bench/merge_llm.py --hidden 2048 --layers 16 --vocab 32000 --tasks 3 --method sum ties TSVM
    python bench/merge_llm.py --hidden 256 --layers 4 --vocab 1000 --method sum --device cuda
    python bench/merge_llm.py ... --mergekit /work/mkvenv/bin/mergekit-yaml   # also mergekit's task_arithmetic
    python bench/merge_llm.py --hidden 1024 --layers 8 --method TSVM esm regmean   # 32 texts × 128 tokens per task

θ0 and its fine-tunes are built once into a cache folder, laid out as ``save_pretrained`` writes a Llama model
(config.json, model-0000k-of-0000n.safetensors, model.safetensors.index.json); each fine-tune moves every matrix by
a low-rank-plus-noise delta and every vector by noise. Each merge runs as a fresh ``tsvmerge merge`` process (or
``mergekit-yaml``) whose wall time, peak RSS and peak anonymous memory (RssAnon: what it allocates, the
memory-mapped inputs excluded) are sampled from /proc; input GB/s is (T + 1) × model bytes / wall time.
The data-aware methods (esm, regmean) get ``--calibration`` with ``--calibration-texts`` sequences of
``--calibration-tokens`` random token ids per task (seeded), so their time includes the calibration pass.

With TSVM among the methods of a CPU run, the same run then times the plain algorithm (``reference_tsvm.py``: a full
float32 SVD per task matrix and two for the Procrustes factors, as SPEC.md states it and its authors run it) on
every matrix the merge decomposes, reading excluded, and prints the ratio of its merge time to our whole process;
and it measures both against the float64 definition, matrix by matrix (``--accuracy-keys`` restricts that check to
the matching entries, ``--no-plain`` skips the baseline).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

import torch

from tsvmerge.checkpoints.sharded import parse_size, plan_shards, write_index, write_shard

DEFAULT_CACHE = Path(os.environ.get("TSVMERGE_BENCH_CACHE", Path(__file__).resolve().parent.parent / ".bench_cache"))


def llama_shapes(hidden: int, layers: int, vocab: int, intermediate: int, kv_heads: int,
                 heads: int) -> dict[str, tuple[int, ...]]:
    """Entry names and shapes of a LlamaForCausalLM state dict (untied head)."""
    kv = hidden // heads * kv_heads
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (vocab, hidden),
                                          "lm_head.weight": (vocab, hidden), "model.norm.weight": (hidden,)}
    for i in range(layers):
        p = f"model.layers.{i}."
        shapes.update({p + "self_attn.q_proj.weight": (hidden, hidden), p + "self_attn.k_proj.weight": (kv, hidden),
                       p + "self_attn.v_proj.weight": (kv, hidden), p + "self_attn.o_proj.weight": (hidden, hidden),
                       p + "mlp.gate_proj.weight": (intermediate, hidden),
                       p + "mlp.up_proj.weight": (intermediate, hidden),
                       p + "mlp.down_proj.weight": (hidden, intermediate), p + "input_layernorm.weight": (hidden,),
                       p + "post_attention_layernorm.weight": (hidden,)})
    return shapes


def config_json(args: argparse.Namespace) -> dict:
    return {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": args.hidden,
            "intermediate_size": args.intermediate, "num_hidden_layers": args.layers,
            "num_attention_heads": args.heads, "num_key_value_heads": args.kv_heads, "vocab_size": args.vocab,
            "max_position_embeddings": 4096, "rms_norm_eps": 1e-5, "tie_word_embeddings": False,
            "torch_dtype": "bfloat16", "hidden_act": "silu", "rope_theta": 10000.0}


def write_folder(folder: Path, shapes: dict, config: dict, tensor, shard_bytes: int) -> None:
    """One model folder, written shard by shard (``tensor(key, shape)`` makes each entry)."""
    tmp = folder.with_name(folder.name + ".partial")
    tmp.mkdir(parents=True, exist_ok=True)
    sizes = {key: torch.Size(shape).numel() * 2 for key, shape in shapes.items()}
    plan = plan_shards(sizes, shard_bytes)
    for keys, name in zip(plan.shards, plan.names):
        write_shard(tmp / name, {key: tensor(key, shapes[key]) for key in keys})
    write_index(tmp, plan)
    (tmp / "config.json").write_text(json.dumps(config, indent=2))
    tmp.rename(folder)


def build(args: argparse.Namespace) -> tuple[Path, list[Path]]:
    """θ0 and the fine-tunes in the cache (built once per configuration)."""
    # fine-tune i depends only on the shape and i: runs with 2, 3 or 4 tasks share the folders
    tag = f"llama_h{args.hidden}_l{args.layers}_v{args.vocab}_i{args.intermediate}"
    root = args.cache / tag
    shapes = llama_shapes(args.hidden, args.layers, args.vocab, args.intermediate, args.kv_heads, args.heads)
    config = config_json(args)
    shard_bytes = parse_size(args.input_shard_size)

    def base(key: str, shape: tuple[int, ...]) -> torch.Tensor:
        g = torch.Generator().manual_seed(zlib.crc32(key.encode()))
        if len(shape) == 1:
            return torch.ones(shape, dtype=torch.bfloat16)
        return (0.02 * torch.randn(shape, generator=g)).to(torch.bfloat16)

    pre = root / "base"
    if not pre.is_dir():
        write_folder(pre, shapes, config, base, shard_bytes)
    fts = []
    for task in range(args.tasks):
        folder = root / f"ft{task}"
        if not folder.is_dir():
            def tuned(key: str, shape: tuple[int, ...], task: int = task) -> torch.Tensor:
                g = torch.Generator().manual_seed(zlib.crc32(f"{key}/{task}".encode()))
                value = base(key, shape).float()
                if len(shape) == 2:
                    a = torch.randn(shape[0], 16, generator=g)
                    b = torch.randn(16, shape[1], generator=g)
                    delta = 1e-3 * (a @ b) / 16 + 1e-4 * torch.randn(shape, generator=g)
                else:
                    delta = 1e-4 * torch.randn(shape, generator=g)
                return (value + delta).to(torch.bfloat16)
            write_folder(folder, shapes, config, tuned, shard_bytes)
        fts.append(folder)
    return pre, fts


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.glob("*.safetensors"))


def measured(command: list[str], env: dict | None = None) -> dict:
    """Run ``command``, sampling its VmRSS / RssAnon every 20 ms; wall time and peaks."""
    started = time.perf_counter()
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak_rss = peak_anon = 0
    while process.poll() is None:
        try:
            status = Path(f"/proc/{process.pid}/status").read_text()
        except OSError:
            break
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        peak_rss = max(peak_rss, int(fields.get("VmRSS", "0 kB").split()[0]) * 1024)
        peak_anon = max(peak_anon, int(fields.get("RssAnon", "0 kB").split()[0]) * 1024)
        time.sleep(0.02)
    output = process.communicate()[0]
    seconds = time.perf_counter() - started
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({process.returncode}):\n{output[-3000:]}")
    return {"seconds": seconds, "peak_rss_gib": peak_rss / 2**30, "peak_anon_gib": peak_anon / 2**30}


def run_tsvmerge(method: str, pre: Path, fts: list[Path], out: Path, device: str, extra: list[str]) -> dict:
    command = [sys.executable, "-m", "tsvmerge", "merge", "--quiet", "--method", method, "--pretrained", str(pre),
               "--finetuned", *map(str, fts), "--out", str(out), "--device", device, *extra]
    return measured(command)


def calibration_file(folder: Path, tasks: int, texts: int, tokens: int, vocab: int) -> Path:
    """Random token ids [texts, tokens] per task, keyed '0', '1', ... as ``tsvmerge merge --calibration`` reads them."""
    generator = torch.Generator().manual_seed(0)
    path = folder / "calibration.pt"
    torch.save({str(t): torch.randint(0, vocab, (texts, tokens), generator=generator) for t in range(tasks)}, path)
    return path


def run_mergekit(executable: str, pre: Path, fts: list[Path], out: Path, device: str) -> dict:
    """mergekit's task_arithmetic (weight 1 per task, no normalization) on the same folders."""
    lines = ["merge_method: task_arithmetic", f"base_model: {pre}", "dtype: bfloat16", "parameters:",
             "  normalize: false", "models:"]
    for ft in fts:
        lines += [f"  - model: {ft}", "    parameters:", "      weight: 1.0"]
    config = out.with_suffix(".yml")
    config.write_text("\n".join(lines) + "\n")
    command = [executable, str(config), str(out), "--lazy-unpickle", "--out-shard-size", "5B"]
    if device.startswith("cuda"):
        command.append("--cuda")
    return measured(command)


def plain_comparison(pre: Path, fts: list[Path], svd: str | None, accuracy_keys: str | None):
    """The plain float32 baseline and the accuracy of both, on the folders' task vectors (``compare_tsvm.py``)."""
    from compare_tsvm import plain_comparison as compare_on

    from tsvmerge.checkpoints.hf_folder import HFModelFolder
    from tsvmerge.merging import TaskVectors
    from tsvmerge.merging.entry_rules import rules_for

    pretrained = HFModelFolder(pre)
    rules = rules_for(pretrained.keys(), pretrained.config)
    tasks = TaskVectors(pretrained, [HFModelFolder(ft) for ft in fts], device="cpu", rules=rules)
    return compare_on(tasks, svd, accuracy_keys)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hidden", type=int, default=2048)
    parser.add_argument("--layers", type=int, default=16)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--intermediate", type=int, default=None, help="default: 2.6875 × hidden (Llama ratio)")
    parser.add_argument("--heads", type=int, default=None, help="default: hidden / 64")
    parser.add_argument("--kv-heads", type=int, default=None, help="default: heads / 4")
    parser.add_argument("--tasks", type=int, default=3)
    parser.add_argument("--method", nargs="+", default=["sum", "ties", "TSVM"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--svd", default=None, help="SVD solver of TSVM (exact, randomized...)")
    parser.add_argument("--input-shard-size", default="1GB", help="shard size of the synthetic inputs")
    parser.add_argument("--mergekit", default=None, help="path of mergekit-yaml (its own venv) to compare with")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--calibration-texts", type=int, default=32, help="data-aware methods: sequences per task")
    parser.add_argument("--calibration-tokens", type=int, default=128, help="data-aware methods: tokens each")
    parser.add_argument("--no-plain", action="store_true", help="skip the plain TSV-M baseline and accuracy check")
    parser.add_argument("--accuracy-keys", default=None,
                        help="regular expression: check accuracy on the matching matrices only (default: all)")
    args = parser.parse_args()
    args.heads = args.heads or max(1, args.hidden // 64)
    args.kv_heads = args.kv_heads or max(1, args.heads // 4)
    args.intermediate = args.intermediate or int(args.hidden * 2.6875)

    pre, fts = build(args)
    read_bytes = folder_bytes(pre) + sum(folder_bytes(ft) for ft in fts)
    print(f"model: {folder_bytes(pre) / 1e9:.2f} GB bf16, {args.tasks} fine-tunes; reading {read_bytes / 1e9:.2f} GB "
          f"per merge on {args.device}")
    results = []
    from tsvmerge.merging.registry import method_class

    with tempfile.TemporaryDirectory(dir=args.cache) as scratch:
        calibration = calibration_file(Path(scratch), args.tasks, args.calibration_texts, args.calibration_tokens,
                                       args.vocab)

        def extra(method: str) -> list[str]:
            options = ["--svd", args.svd] if args.svd and method.startswith("TSVM") else []
            if method_class(method).calibration is not None:
                options += ["--calibration", str(calibration)]
            return options

        runs = [(m, lambda out, m=m: run_tsvmerge(m, pre, fts, out, args.device, extra(m))) for m in args.method]
        if args.mergekit:
            runs.append(("mergekit task_arithmetic", lambda out: run_mergekit(args.mergekit, pre, fts, out,
                                                                               args.device)))
        for label, run in runs:
            out = Path(scratch) / label.replace(" ", "_")
            result = {"method": label, **run(out), "input_gb_per_s": read_bytes / 1e9}
            result["input_gb_per_s"] /= result["seconds"]
            results.append(result)
            print(f"{label:28s} {result['seconds']:8.1f} s  peak anon {result['peak_anon_gib']:6.2f} GiB  "
                  f"peak RSS {result['peak_rss_gib']:6.2f} GiB  {result['input_gb_per_s']:7.3f} GB/s in", flush=True)
    tsvm = next((r for r in results if r["method"] == "TSVM"), None)
    if tsvm is not None and not args.no_plain and args.device == "cpu":  # the baseline runs on the CPU
        comparison = plain_comparison(pre, fts, args.svd, args.accuracy_keys)
        ratio = comparison.plain_seconds / tsvm["seconds"]
        print(f"plain TSV-M (float32, full SVDs), merge alone: {comparison.plain_seconds:.1f} s; "
              f"TSVM whole process {tsvm['seconds']:.1f} s: {ratio:.2f}x")
        print(comparison.summary())
        for key, shape, ours, plain in comparison.failures:
            print(f"  outside the contract: {key} {shape}: ours {ours:.2e}, plain {plain:.2e}")
        results.append({"method": "plain TSV-M (reference)", "seconds": comparison.plain_seconds,
                        "ratio_to_tsvm_process": ratio, "accuracy": [
                            {"key": k, "shape": s, "ours": o, "plain": p} for k, s, o, p in comparison.rows]})
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
