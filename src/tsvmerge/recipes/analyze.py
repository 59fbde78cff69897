"""``analyze.py``: the paper's analyses as commands, ``python analyze.py analysis=<name> ...``
(``config/analysis/<name>.yaml``).

Reads top to bottom: :class:`Workspace` (main.py's settings of the run, and the merges and evaluations an analysis
asks for), each analysis' runner (``run_<name>``), then the command line (:func:`check_analysis_config`,
:func:`run_from_hydra`). Each analysis validates its parameters (a dataclass per analysis: unknown keys are rejected with the valid ones),
computes its numbers, writes them (JSON / CSV / Markdown) and its figures (PNG with the numbers beside them) to
``<results_dir>/analysis/<model>/<analysis>/`` (or ``analysis.out_dir``), and returns the files written.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf

from ..analysis.common import EvalSession, open_task_vectors, tasks_tag
from ..analysis.params import (
    ANALYSIS_PARAMS,
    AblationParams,
    AlphaHeatmapParams,
    CompressionParams,
    MergedSpectraParams,
    ProcrustesParams,
    SpectraParams,
    StiAccuracyParams,
    StiParams,
    TruncationParams,
)
from ..config import ConfigError, ConfigSource, compose_config
from ..data import benchmark_tasks
from ..evaluation.run_inputs import settings_result_path
from ..evaluation.run_settings import RunSettings, settings_from_config
from ..utils.files import write_json
from ..utils.errors import UserError
from . import merge_and_evaluate

if TYPE_CHECKING:
    from ..merging import MergeMethod

__all__ = ["ANALYSES", "Workspace", "check_analysis_config", "parse_params", "run_analysis", "run_from_hydra"]

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------------- workspace

class Workspace:
    """The validated ``main.py`` part of an analysis configuration, and what derives from it.

    ``cfg`` is the composed configuration (``analysis`` and ``hydra`` sections are ignored); ``source`` is where
    the entry point's YAML files are: the method configs of other runs (the ablation's methods, say) are composed
    from it by Hydra, exactly as ``main.py method=<name>`` would.
    """

    def __init__(self, cfg: DictConfig | Mapping[str, Any], source: ConfigSource) -> None:
        container = cfg if isinstance(cfg, DictConfig) else OmegaConf.create(dict(cfg))
        plain = OmegaConf.to_container(container, resolve=False, enum_to_str=True)
        assert isinstance(plain, dict)
        plain.pop("analysis", None)
        plain.pop("hydra", None)
        self._raw: dict[str, Any] = plain
        self.source = source
        self.settings = settings_from_config(OmegaConf.create(plain))

    @property
    def datasets(self) -> list[str]:
        return list(self.settings.datasets)

    @property
    def model_name(self) -> str:
        return self.settings.model.name

    def output_dir(self, analysis: str, out_dir: str | Path | None = None) -> Path:
        """``<results_dir>/analysis/<model>/<analysis>/`` (or ``out_dir``), created."""
        path = Path(out_dir) if out_dir else self.settings.results_dir / "analysis" / self.model_name / analysis
        path.mkdir(parents=True, exist_ok=True)
        return path

    def method_section(self, method: str) -> dict[str, Any]:
        """``config/method/<method>.yaml`` as Hydra composes it (``method=<method>``)."""
        section = compose_config(self.source, "config", [f"method={method}"])["method"]
        return OmegaConf.to_container(section, resolve=False, enum_to_str=True)  # type: ignore[return-value]

    def _raw_for(self, method: str | None, datasets: Sequence[str] | None, overrides: Mapping[str, Any]) -> dict:
        raw = json.loads(json.dumps(self._raw))  # deep copy, interpolations kept
        if method is not None:
            raw["method"] = self.method_section(method)
        if datasets is not None:
            datasets = list(datasets)
            if tuple(datasets) == benchmark_tasks(self.settings.model.benchmark)[: len(datasets)]:
                raw["num_tasks"], raw["DATASETS"] = len(datasets), None
            else:
                raw["DATASETS"] = datasets
        raw.update(overrides)
        return raw

    def run_settings(self, method: str | None = None, datasets: Sequence[str] | None = None,
                     **overrides: Any) -> RunSettings:
        """``main.py``'s settings for ``method`` (its ``config/method/<method>.yaml``) on ``datasets``.

        A dataset list equal to the first T benchmark tasks is given as ``num_tasks=T`` so that result files get
        the benchmark name (``<model>_<T>tasks_<method>_..._valbest.json``), exactly as ``main.py num_tasks=T``.
        """
        return settings_from_config(OmegaConf.create(self._raw_for(method, datasets, overrides)))

    def merge_result(self, method: str, datasets: Sequence[str] | None = None, *, recompute: bool = False,
                     **overrides: Any) -> tuple[dict[str, Any], Path, bool]:
        """The result file of ``python main.py method=<method>`` on ``datasets``: read if it exists (unless
        ``recompute``), else produced by running ``main.py``'s recipe. Returns ``(payload, path, ran)``.

        Runs write the usual result file (``<results_dir>/<save_subfolder>/...json``), so ``report.py`` sees them.
        """
        raw = self._raw_for(method, datasets, overrides)
        settings = settings_from_config(OmegaConf.create(raw))
        path = settings_result_path(settings)
        if path.is_file() and not recompute:
            log.info("reusing %s", path)
            return json.loads(path.read_text()), path, False
        resolved = OmegaConf.to_container(OmegaConf.create(raw), resolve=True)
        outcome = merge_and_evaluate.run(settings, None, resolved)  # type: ignore[arg-type]
        print(outcome.table)
        return outcome.payload, outcome.path, True


# --------------------------------------------------------------------------------------------------- parameters

def parse_params(name: str, section: Mapping[str, Any]) -> Any:
    """The analysis' parameter dataclass from its config section (``name`` plus the dataclass' fields): key names
    and types checked against its schema, allowed values by the dataclass itself."""
    from ..config.compose import section_values
    from ..config.store import analysis_schema

    if name not in ANALYSIS_PARAMS:
        raise ConfigError(f"unknown analysis {name!r}; available: {', '.join(ANALYSIS_PARAMS)}")
    cls = ANALYSIS_PARAMS[name]
    try:
        values, unknown = section_values(analysis_schema(name, cls), section)
    except ConfigError as exc:
        raise ConfigError(f"analysis.{exc}") from None
    if unknown:
        valid = ["name", *(f.name for f in dataclasses.fields(cls))]
        raise ConfigError(f"unknown key{'s' if len(unknown) > 1 else ''} {', '.join(unknown)} for analysis={name}; "
                          f"valid keys: {', '.join(valid)}")
    values.pop("name", None)
    try:
        return cls(**values)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(str(exc)) from None


# ------------------------------------------------------------------------------------------------------ helpers

def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_")


def _title(ws: Workspace, datasets: Sequence[str] | None = None) -> str:
    datasets = ws.datasets if datasets is None else datasets
    tag = tasks_tag(datasets)
    return f"{ws.model_name}, {tag.replace('tasks', ' tasks') if tag.endswith('tasks') else tag}"


def _progress(ws: Workspace) -> bool:
    return ws.settings.progress


# ------------------------------------------------------------------------------------------------------- runners

def run_sti(ws: Workspace, p: StiParams) -> list[Path]:
    from ..plotting.interference import plot_gram_heatmap, plot_sti_layers
    from ..plotting.style import write_csv
    from ..analysis.interference import VARIANTS, gram_data, interference_table, select_layer

    out, tag = ws.output_dir("sti", p.out_dir), tasks_tag(ws.datasets)
    tasks = open_task_vectors(ws.settings)
    table = interference_table(tasks, full_rank=p.full_rank, chunk_size=p.chunk_size, progress=_progress(ws))
    files = [plot_sti_layers(table, out / f"sti_layers_{tag}.png", title=_title(ws), yscale=p.yscale)]
    rows = [{"layer": key, **table["entries"][key], "shape": "x".join(map(str, table["entries"][key]["shape"])),
             **values} for key, values in table["per_entry"].items()]
    files.append(write_csv(out / f"sti_per_entry_{tag}.csv", rows))
    print(f"total STI ({_title(ws)}): " + ", ".join(f"{v}={table['total'][v]:.4g}" for v in VARIANTS
                                                  if v in table["total"]))
    if p.heatmap and table["per_entry"]:
        key = select_layer(list(table["per_entry"]), p.layer)
        gram = gram_data(tasks, key, rank=p.heatmap_rank, chunk_size=p.chunk_size)
        png = plot_gram_heatmap(gram, out / f"gram_{p.heatmap_rank}_{tag}_{_slug(key.removeprefix('model.'))}.png",
                                title=f"{_title(ws)}: {key.removeprefix('model.')}")
        files += [png, png.with_suffix(".npz")]
    return files


def run_sti_accuracy(ws: Workspace, p: StiAccuracyParams) -> list[Path]:
    import json

    from ..plotting.interference import plot_sti_vs_accuracy
    from ..analysis.alpha_heatmap import resolve_subsets
    from ..analysis.interference import interference_table, sti_accuracy_points

    out = ws.output_dir("sti_accuracy", p.out_dir)
    full_rank = any(v.startswith("full_rank") for v in p.methods.values())
    task_sets = resolve_subsets(p.task_sets, ws.settings.model.benchmark)
    totals, accuracies = {}, {}
    for label, datasets in task_sets:
        tasks = open_task_vectors(ws.settings, datasets)
        totals[label] = interference_table(tasks, full_rank=full_rank, chunk_size=p.chunk_size,
                                           progress=_progress(ws))["total"]
        for method in p.methods:
            path = settings_result_path(ws.run_settings(method, datasets))
            if path.is_file():
                accuracies[(method, label)] = {**json.loads(path.read_text()), "_path": str(path)}
            elif p.run_missing:
                payload, path, _ = ws.merge_result(method, datasets)
                accuracies[(method, label)] = {**payload, "_path": str(path)}
            else:
                log.warning("no result file %s: the point (%s, %s) has no accuracy", path, method, label)
    points = sti_accuracy_points(totals, accuracies, p.methods, {label: len(d) for label, d in task_sets})
    name = "-".join(_slug(label.replace(" tasks", "")) for label, _ in task_sets)
    name = name if len(name) <= 40 else f"{len(task_sets)}sets"
    return [plot_sti_vs_accuracy(points, out / f"sti_vs_accuracy_{name}.png", title=ws.model_name)]


def default_layers(per_entry: Mapping[str, Any], max_panels: int) -> list[str]:
    """First, middle and last transformer block: attention input projection and MLP input (``max_panels``)."""
    keys = list(per_entry)
    blocks = sorted({e["block_index"] for e in per_entry.values() if e["block_index"] is not None})
    if not blocks:
        return keys[:max_panels]
    chosen_blocks = list(dict.fromkeys([blocks[0], blocks[len(blocks) // 2], blocks[-1]]))
    chosen = []
    for b in chosen_blocks:
        in_block = [k for k in keys if per_entry[k]["block_index"] == b]
        preferred = [k for k in in_block if "in_proj" in k or "c_fc" in k] or in_block[:2]
        chosen += preferred[:2]
    return chosen[:max_panels]


def select_layers(per_entry: Mapping[str, Any], patterns: Sequence[str] | None, max_panels: int) -> list[str]:
    """The entries of ``patterns`` (exact keys, else regular expressions; every match, in order), or
    :func:`default_layers` when none are given."""
    if not patterns:
        return default_layers(per_entry, max_panels)
    keys: list[str] = []
    for pattern in patterns:
        found = [k for k in per_entry if k == pattern] or [k for k in per_entry if re.search(pattern, k)]
        if not found:
            raise ConfigError(f"analysis.layers: no 2-D entry matches {pattern!r}")
        keys += [k for k in found if k not in keys]
    return keys


def run_spectra(ws: Workspace, p: SpectraParams) -> list[Path]:
    from ..plotting.lowrank import plot_energy, plot_spectra
    from ..plotting.style import write_csv
    from ..analysis.spectra import ENERGY_LEVELS, layer_spectra

    out, tag = ws.output_dir("spectra", p.out_dir), tasks_tag(ws.datasets)
    tasks = open_task_vectors(ws.settings)
    spectra = layer_spectra(tasks, progress=_progress(ws))
    per_entry = spectra["per_entry"]
    keys = select_layers(per_entry, p.layers, p.max_panels)
    title = _title(ws)
    files = [plot_spectra(spectra, keys, out / f"spectra_{tag}.png", num_tasks=len(ws.datasets), title=title),
             plot_energy(spectra, out / f"energy_{tag}.png", num_tasks=len(ws.datasets), title=title)]
    rows = [{"layer": key, "label": e["label"], "task": task, "rank": min(e["shape"]),
             **{f"components_for_{level:g}_energy": e["rank_for_energy"][task][str(level)] for level in ENERGY_LEVELS}}
            for key, e in per_entry.items() for task in e["singular_values"]]
    files.append(write_csv(out / f"rank_for_energy_{tag}.csv", rows))
    files.append(write_json(out / f"spectra_{tag}.json", spectra))
    return files


def run_merged_spectra(ws: Workspace, p: MergedSpectraParams) -> list[Path]:
    from ..utils.files import atomic_write
    from ..plotting.lowrank import plot_merged_spectra
    from ..merging import method_label
    from ..plotting.style import write_csv
    from ..analysis.merged_spectra import merged_spectra, merged_spectra_markdown, method_overview, summary_rows

    methods = {name: _configured_method(ws, name) for name in p.methods}  # every config checked before any work
    out, tag = ws.output_dir("merged_spectra", p.out_dir), tasks_tag(ws.datasets)
    from ..analysis.common import calibrate_if_needed

    tasks = open_task_vectors(ws.settings)
    spectra = merged_spectra(tasks, methods, progress=_progress(ws),
                             calibrate=lambda method: calibrate_if_needed(method, tasks, ws.settings, ws.datasets))
    spectra["overview"] = method_overview(spectra)
    keys = select_layers(spectra["per_entry"], p.layers, p.max_panels)
    labels = {m: method_label(m) for m in p.methods}
    md = merged_spectra_markdown(spectra, keys, labels, f"Spectra of the merged task vector: {_title(ws)}")
    print(md)
    return [plot_merged_spectra(spectra, keys, out / f"merged_spectra_{tag}.png", normalize=p.normalize,
                                title=f"Singular values of τMT: {_title(ws)}"),
            atomic_write(out / f"merged_spectra_{tag}.md", lambda tmp: tmp.write_text(md)),
            write_csv(out / f"merged_spectra_{tag}_summary.csv", summary_rows(spectra)),
            write_json(out / f"merged_spectra_{tag}_all.json", spectra)]


def _configured_method(ws: Workspace, name: str) -> MergeMethod:
    """Method ``name`` as ``main.py method=<name>`` configures it: ``config/method/<name>.yaml`` composed by
    Hydra, with the defaults that depend on the model and number of tasks filled in."""
    from ..merging import build_method

    try:
        settings = ws.run_settings(name)
        return build_method(settings.method, settings.method_params).for_benchmark(ws.model_name, len(ws.datasets))
    except (ConfigError, ValueError) as exc:
        raise ConfigError(f"analysis.methods: method {name} takes its parameters from config/method/{name}.yaml: "
                          f"{exc}") from None


def run_procrustes(ws: Workspace, p: ProcrustesParams) -> list[Path]:
    from ..plotting.lowrank import plot_procrustes
    from ..analysis.procrustes import procrustes_table

    out, tag = ws.output_dir("procrustes", p.out_dir), tasks_tag(ws.datasets)
    table = procrustes_table(open_task_vectors(ws.settings), progress=_progress(ws))
    return [plot_procrustes(table, out / f"procrustes_{tag}.png", title=_title(ws), log=p.log_scale)]


def run_truncation(ws: Workspace, p: TruncationParams) -> list[Path]:
    from ..plotting.lowrank import plot_truncation
    from ..analysis.truncation import truncation_curves

    out, tag = ws.output_dir("truncation", p.out_dir), tasks_tag(ws.datasets)
    session = EvalSession.open(ws.settings, ws.datasets, p.split)
    curves = truncation_curves(session, [float(f) for f in p.fractions], include_zeroshot=p.include_zeroshot,
                               progress=_progress(ws))
    curves["model"] = ws.model_name
    return [plot_truncation(curves, out / f"truncation_{p.split}_{tag}.png", title=f"{_title(ws)} ({p.split})")]


def run_ablation(ws: Workspace, p: AblationParams) -> list[Path]:
    from ..utils.files import atomic_write
    from ..plotting.evaluation import plot_ablation
    from ..plotting.style import write_csv
    from ..analysis.ablation import ablation_markdown, ablation_rows

    out, tag = ws.output_dir("ablation", p.out_dir), tasks_tag(ws.datasets)
    payloads = {}
    for method in p.methods:
        payload, path, _ = ws.merge_result(method, recompute=p.recompute)
        payloads[method] = {**payload, "_path": str(path)}
    rows = ablation_rows(payloads, ws.datasets)
    md = ablation_markdown(rows, f"Ablation (Table 4): {_title(ws)}")
    print(md)
    md_path = atomic_write(out / f"ablation_{tag}.md", lambda tmp: tmp.write_text(md))
    return [plot_ablation(rows, out / f"ablation_{tag}.png", title=_title(ws)), md_path,
            write_csv(out / f"ablation_{tag}_table.csv", rows)]


def run_alpha_heatmap(ws: Workspace, p: AlphaHeatmapParams) -> list[Path]:
    from ..plotting.evaluation import plot_alpha_heatmap
    from ..analysis.alpha_heatmap import alpha_sweep, resolve_subsets

    out = ws.output_dir("alpha_heatmap", p.out_dir)
    subsets = resolve_subsets(p.subsets, ws.settings.model.benchmark)
    union = list(dict.fromkeys(d for _, datasets in subsets for d in datasets))
    methods = {m: ws.run_settings(m).method_params for m in p.methods}
    session = EvalSession.open(ws.settings, union, p.split)
    sweep = alpha_sweep(session, subsets, methods, alphas=p.alphas, n_eval_points=ws.settings.n_eval_points,
                        progress=_progress(ws))
    sweep["model"] = ws.model_name
    name = "-".join(_slug(label.replace(" tasks", "")) for label, _ in subsets)
    name = name if len(name) <= 40 else f"{len(subsets)}subsets"
    return [plot_alpha_heatmap(sweep, out / f"alpha_heatmap_{p.split}_{name}.png", title=ws.model_name)]


def run_compression(ws: Workspace, p: CompressionParams) -> list[Path]:
    from ..utils.files import atomic_write
    from ..evaluation.metrics import AccuracyFileError, load_ft_accuracies
    from ..merging import method_label
    from ..plotting.evaluation import plot_compression
    from ..plotting.style import write_csv
    from ..analysis.compression import compared_methods, storage_table

    out, tag = ws.output_dir("compression", p.out_dir), tasks_tag(ws.datasets)
    tasks = open_task_vectors(ws.settings)
    storage = storage_table(tasks, svd=p.svd, progress=_progress(ws))
    accuracy: dict[str, dict[str, Any]] = {}
    try:
        ft = load_ft_accuracies(ws.settings.ft_accuracies, ws.datasets)
        accuracy["finetuned"] = {"avg_top1": sum(ft[d] for d in ws.datasets) / len(ws.datasets),
                                 "avg_normalized_top1": 1.0, "result_file": str(ws.settings.ft_accuracies)}
    except AccuracyFileError as exc:
        log.warning("no fine-tuned reference accuracy: %s", exc)
    if p.evaluate:
        for method in compared_methods():
            payload, path, _ = ws.merge_result(method, recompute=p.recompute)
            accuracy[method] = {"avg_top1": payload["test"]["avg_top1"],
                                "avg_normalized_top1": payload["test"]["avg_normalized_top1"],
                                "result_file": str(path)}
    rows = []
    for method, s in storage["methods"].items():
        acc = accuracy.get(method, {})
        rows.append({
            "method": method, "label": "fine-tuned (T models)" if method == "finetuned" else method_label(method),
            "shared_bytes": s["shared"],
            "per_task_bytes_total": sum(s["per_task"]), "total_bytes": s["total"],
            "total_MiB": s["total"] / 2**20, "relative_to_individual": s["relative_to_individual"],
            **{f"bytes_{name}": b for name, b in zip(ws.datasets, s["per_task"], strict=True)},
            "avg_top1": acc.get("avg_top1"), "avg_normalized_top1": acc.get("avg_normalized_top1"),
            "result_file": acc.get("result_file"),
        })
    md = _compression_markdown(rows, ws.datasets, f"Compression (Table 3): {_title(ws)}")
    print(md)
    md_path = atomic_write(out / f"compression_{tag}.md", lambda tmp: tmp.write_text(md))
    return [plot_compression(rows, out / f"compression_{tag}.png", title=_title(ws)), md_path,
            write_csv(out / f"compression_{tag}_table.csv", rows)]


def human_bytes(n: float) -> str:
    """``1536`` -> ``1.50 KiB`` (binary units)."""
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return f"{int(n)} B"


def _compression_markdown(rows: Sequence[Mapping[str, Any]], datasets: Sequence[str], title: str) -> str:
    def pct(v: float | None) -> str:
        return "" if v is None else f"{100 * v:.1f}"

    lines = [f"### {title}", "",
             "| method | accuracy (normalized) | shared | per task (mean) | total | × individual |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        acc = "" if r["avg_top1"] is None else f"{pct(r['avg_top1'])} ({pct(r['avg_normalized_top1'])})"
        per_task = r["per_task_bytes_total"] / max(1, len(datasets))
        lines.append(f"| {r['label']} | {acc} | {human_bytes(r['shared_bytes'])} | {human_bytes(per_task)} "
                     f"| {human_bytes(r['total_bytes'])} | {r['relative_to_individual']:.3f} |")
    lines += ["", "Bytes per task:", ""]
    lines += [f"- {r['label']}: " + ", ".join(f"{d} {r[f'bytes_{d}']}" for d in datasets) for r in rows]
    return "\n".join(lines) + "\n"


#: name -> (parameter dataclass, runner)
ANALYSES: dict[str, tuple[type, Callable[[Workspace, Any], list[Path]]]] = {
    name: (ANALYSIS_PARAMS[name], runner) for name, runner in {
        "sti": run_sti, "sti_accuracy": run_sti_accuracy, "spectra": run_spectra, "procrustes": run_procrustes,
        "truncation": run_truncation, "ablation": run_ablation, "alpha_heatmap": run_alpha_heatmap,
        "compression": run_compression, "merged_spectra": run_merged_spectra,
    }.items()
}


def run_analysis(name: str, workspace: Workspace, params: Any | Mapping[str, Any] | None = None) -> list[Path]:
    """Run analysis ``name`` (``params``: its dataclass, or a mapping of its config keys); returns the files."""
    if not isinstance(params, tuple(cls for cls, _ in ANALYSES.values())):
        params = parse_params(name, dict(params or {}))
    return ANALYSES[name][1](workspace, params)


# ------------------------------------------------------------------------------------------------- command line

def check_analysis_config(cfg: DictConfig) -> Any:
    """Everything ``analyze.py`` checks before any work: main.py's configuration, the analysis' parameters (returned,
    as their dataclass) and its output folder."""
    from ..evaluation.preflight import output_folder_problem

    settings = settings_from_config(cfg)
    section = cfg.get("analysis")
    if not isinstance(section, DictConfig) or "name" not in section:
        raise ConfigError("the analysis config needs a name (config/analysis/<name>.yaml)")
    params = parse_params(str(section["name"]), section)
    out_dir = getattr(params, "out_dir", None)
    folder = Path(out_dir) if out_dir else settings.results_dir / "analysis"
    problem = output_folder_problem(folder)
    if problem:
        key = "analysis.out_dir" if out_dir else "results_dir"
        raise ConfigError(f"{key}={str(out_dir or settings.results_dir)!r}: {problem}; choose a writable folder")
    return params


def run_from_hydra(cfg: DictConfig, source: ConfigSource) -> list[Path]:
    """Body of ``analyze.py``: validate, run, list the files; user errors exit with status 2 and a message."""
    try:
        params = check_analysis_config(cfg)
        name = str(cfg.analysis.name)
        files = run_analysis(name, Workspace(cfg, source), params)
    except UserError as exc:  # ConfigError included
        print(f"analyze.py: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    print(f"{name}: {len(files)} files written")
    for f in files:
        print(f"  {f}")
    return files
