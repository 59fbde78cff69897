"""``tsvmerge merge``: merge checkpoint files, or Hugging Face model folders, without any dataset.

    tsvmerge merge --method TSVM --pretrained zs.pt --finetuned a.pt b.pt --out merged.pt
    tsvmerge merge --method esm --model ViT-B-32 --calibration images.pt --pretrained zs.pt --finetuned a.pt b.pt ...
    tsvmerge merge --method regmean --calibration-text texts.jsonl --pretrained ./base --finetuned ./ft-a ./ft-b ...
    tsvmerge merge --method TSVM --pretrained meta-llama/Llama-3.2-1B --finetuned org/ft-a ./ft-b --out merged/
    torchrun --nproc_per_node=4 -m tsvmerge merge ...

Reads top to bottom: the command line (:func:`add_parser`); the checks before any work (the method and its
settings, the inputs, the outputs: nothing is written when one fails); :func:`run`, the merge itself, in one
process or several, after the calibration pass of the data-aware methods (ESM, RegMean: each task's model run on
the samples of ``--calibration`` / ``--calibration-text``); writing the outputs (a state dict, per-task files, or
model folders).

Model folders are written shard by shard, in one process or split over several (``torchrun``). The merged model is never whole in memory: entries stream from the inputs through the method and each merged
tensor is appended to its shard file at once (the shard's safetensors header is written first, from the plan), so
memory holds the entries being merged, not a shard. Each process merges and writes its own contiguous run of
shards (planned from the entries' sizes, identically on every process); the first process then writes the index
and the base model's config and tokenizer files, and moves the folder into place. The output is complete or
absent, and its tensors do not depend on the number of processes.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import re
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from tqdm.auto import tqdm

from ..checkpoints import open_state_dict, save_state_dict
from ..checkpoints.hf_folder import SAFETENSORS_INDEX, HFModelFolder, is_weight_file, model_files
from ..checkpoints.output_folders import (
    MANIFEST_NAME,
    OutputRecord,
    check_output_folder,
    input_identity,
    owned_directory,
    remove_stale_temporaries,
)
from ..utils.files import OutputPathError, check_output_path, same_file, write_json
from ..checkpoints.peft_adapter import ADAPTER_FILES, is_adapter_folder, read_adapter_config
from ..checkpoints.safetensors_stream import SafetensorsStreamWriter
from ..checkpoints.sharded import ShardPlan, copy_model_files, parse_size, plan_shards, write_index
from ..checkpoints.sources import resolve_source
from ..checkpoints.tall_mask_files import save_tall_masks
from ..merging import (
    MergeMethod,
    TaskVectors,
    apply_task_vector,
    available_methods,
    build_method,
    flat_task_masks,
    merge,
    method_parameters,
)
from ..merging.engine import stream_merged_entries
from ..merging.collective import Collective, ProcessGroupCollective, SingleProcess
from ..merging.entry_rules import check_rules_match, rules_for
from ..merging.svd import SVD_MODES
from ..utils.device import activate_device, resolve_device
from ..utils.memory import MemoryMonitor

if TYPE_CHECKING:
    from ..merging.method_config import MethodChoice

PROG = "tsvmerge"
STATE_DICT_SUFFIXES = {".pt", ".safetensors", ".pth", ".bin"}
_TASK_FILE = re.compile(r"task\d+\.pt")
_IN_TASK_FOLDER = re.compile(r"task\d+/(?P<name>[^/]+)")
#: Besides UserError, what a merge reports as the user's: bad method parameters (ValueError, ConfigError included)
#: and an unavailable device (RuntimeError).
USER_ERRORS = (ValueError, RuntimeError)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
def _parse_assignments(items: Sequence[str]) -> dict[str, str]:
    params = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set expects KEY=VALUE, got {item!r}")
        params[key.strip()] = value.strip()
    return params


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``tsvmerge merge`` (``set_defaults(run=run)``)."""
    m = sub.add_parser("merge", help="merge fine-tuned checkpoints into one model (or per-task models)")
    m.add_argument("--method", required=True, help=f"one of: {', '.join(available_methods())}")
    m.add_argument("--pretrained", default=None,
                   help="pre-trained model θ0: a state dict (.pt, .bin, .safetensors), a Hugging Face model folder "
                        "or a hub id org/name[@revision] (with LoRA adapters, default: their base_model_name_or_path)")
    m.add_argument("--finetuned", required=True, nargs="+",
                   help="fine-tuned models θ1..θT (same kinds), or PEFT LoRA adapter folders / hub ids of adapters")
    m.add_argument("--out", required=True, type=Path,
                   help="output state dict (.pt or .safetensors), or a model folder when θ0 is one; for "
                        "task-specific methods a folder of task<i>.pt (task<i>/ model folders)")
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
    m.add_argument("--dtype", choices=sorted(DTYPES), default=None,
                   help="dtype of the merged weights (default: θ0's: bfloat16 stays bfloat16); computed in float32")
    m.add_argument("--max-shard-size", default=None,
                   help="model-folder output: largest shard file, e.g. 5GB (default, as transformers), 500MB, 2GiB")
    m.add_argument("--svd-keys", default=None, metavar="REGEX",
                   help="SVD-based methods: exactly the matrices whose name matches go through the SVD "
                        "(default: per model family, see docs/hf_models.md)")
    m.add_argument("--average-keys", default=None, metavar="REGEX",
                   help="SVD-based methods: entries whose name matches are averaged (wins over --svd-keys)")
    m.add_argument("--calibration", type=Path, metavar="FILE",
                   help="data-aware methods (esm, regmean): a .safetensors / .pt file of inputs per task, keyed by "
                        "the position of its --finetuned checkpoint ('0', '1', ...): preprocessed images [N, 3, H, W] "
                        "for CLIP checkpoints (with --model), token ids [N, L] (and optional '<i>.attention_mask') "
                        "for model folders")
    m.add_argument("--calibration-text", type=Path, metavar="FILE.jsonl",
                   help="data-aware methods on model folders: lines {\"task\": i, \"text\": \"...\"}, tokenized with "
                        "the pre-trained folder's tokenizer")
    m.add_argument("--calibration-max-length", type=int, default=512, metavar="N",
                   help="--calibration-text: tokens kept per text (default 512)")
    m.add_argument("--model", default=None, metavar="NAME",
                   help="with --calibration on CLIP checkpoints: the architecture, a config/model/<NAME>.yaml "
                        "(ViT-B-32, ViT-B-16, ViT-L-14, demo) or a path to such a file")
    m.add_argument("--max-rank", type=int, default=None, metavar="R",
                   help="LoRA adapters: cap each merged module's rank at R (best approximation by the exact SVD of "
                        "the result; the relative error is printed); also makes methods without a low-rank result "
                        "write an adapter")
    m.add_argument("--merge-into-base", action="store_true",
                   help="LoRA adapters: write a full model folder θ0 + α·τMT instead of a merged adapter")
    m.add_argument("--quiet", action="store_true", help="no progress bars")
    m.set_defaults(run=run)
    return m


# ------------------------------------------------------------------------------------ checks before any work

def _build_method(args: argparse.Namespace, choice: MethodChoice) -> MergeMethod:
    """The method configured the way every entry point configures one (:func:`_method_choice`), then checked by the
    method itself."""
    # The checkpoints' model is unknown here: settings published per model (CART's) must be given explicitly.
    return build_method(choice.name, choice.params).for_benchmark(None, len(args.finetuned))


def _entry_rule_overrides(args: argparse.Namespace, choice: MethodChoice,
                          method: MergeMethod) -> tuple[str | None, str | None]:
    """``--svd-keys`` / ``--average-keys``, or the same given as method settings (``--set svd_keys=...``)."""
    overrides = []
    for flag, given, configured in (("--svd-keys", args.svd_keys, choice.svd_keys),
                                    ("--average-keys", args.average_keys, choice.average_keys)):
        if given is not None and configured is not None:
            raise ValueError(f"{flag} and --set {flag[2:].replace('-', '_')}=... both given; give one")
        value = given if given is not None else configured
        if value is not None and not method.uses_entry_rules:
            raise ValueError(f"{flag} applies to the SVD-based methods (which choose the matrices they decompose); "
                             f"{method.name!r} does not use it")
        overrides.append(value)
    return overrides[0], overrides[1]


def _method_choice(args: argparse.Namespace) -> MethodChoice:
    """The ``--set`` assignments (plus ``--svd`` / ``--report-sti``) checked against the method's schema."""
    from ..merging.method_config import method_choice

    params = _parse_assignments(args.params)
    available = method_parameters(args.method) if args.method in available_methods() else {}
    if args.svd is not None:
        if "svd" not in available:
            raise ValueError(f"--svd applies to SVD-based methods; {args.method!r} does not use an SVD")
        params["svd"] = args.svd
    if args.report_sti:
        if "report_sti" not in available:
            raise ValueError(f"--report-sti applies to the TSV-M methods, not {args.method!r}")
        params["report_sti"] = "true"
    return method_choice(args.method, [f"{key}={value}" for key, value in params.items()])


def _check_options(args: argparse.Namespace, method: MergeMethod) -> None:
    """Every option must apply to ``method`` and hold a usable value."""
    if not math.isfinite(args.alpha):
        raise ValueError(f"--alpha {args.alpha} is not a finite number; give e.g. --alpha 1.0")
    if args.sti_out is not None and not args.report_sti:
        raise ValueError("--sti-out writes the interference report: add --report-sti (TSV-M methods)")
    has_masks = method.task_specific and bool(method.mask_labels())
    if args.save_masks is not None and not has_masks:
        raise ValueError(f"--save-masks applies to the mask methods (tall_mask, mag_masking), not {method.name!r}")
    if args.tall_lambda is not None:
        _mask_choice(method.mask_labels(), args.tall_lambda, method.name)
    if args.names is not None:
        if len(args.names) != len(args.finetuned):
            raise ValueError(f"--names gives {len(args.names)} names for {len(args.finetuned)} fine-tuned "
                             "checkpoints; give one name per --finetuned file")
        repeated = sorted({n for n in args.names if args.names.count(n) > 1})
        if repeated:
            raise ValueError(f"--names: {', '.join(repeated)} given more than once; each task needs its own name")


def _check_calibration_options(args: argparse.Namespace, method: MergeMethod) -> None:
    """A data-aware method needs exactly one calibration source; a data-free one takes none (it would be ignored)."""
    given = [flag for flag, value in (("--calibration", args.calibration), ("--calibration-text",
                                                                          args.calibration_text)) if value]
    if method.calibration is None:
        if given:
            raise ValueError(f"{given[0]} applies to the data-aware methods (esm, regmean); {method.name!r} merges "
                             "without data and would ignore it")
        if args.model is not None:
            raise ValueError(f"--model names the CLIP architecture for --calibration; {method.name!r} needs none")
        return
    if not given:
        raise ValueError(f"{method.name!r} merges with data: give --calibration FILE (inputs per task) or, for model "
                         "folders, --calibration-text FILE.jsonl")
    if len(given) > 1:
        raise ValueError("give --calibration or --calibration-text, not both")
    if args.calibration_max_length < 1:
        raise ValueError(f"--calibration-max-length must be at least 1, got {args.calibration_max_length}")
    for path in (args.calibration, args.calibration_text):
        if path is not None and not path.is_file():
            raise ValueError(f"calibration file {str(path)!r} does not exist")


def _model_spec(name: str):
    """The CLIP architecture of ``--model``: config/model/<name>.yaml, or a YAML file given by path."""
    import yaml

    from ..config.settings import Problems
    from ..models.model_config import model_spec
    from .doctor import main_config_dir

    path = Path(name)
    if not (path.suffix in {".yaml", ".yml"} and path.is_file()):
        path = main_config_dir() / "model" / f"{name}.yaml"
        if not path.is_file():
            known = sorted(p.stem for p in path.parent.glob("*.yaml"))
            raise ValueError(f"--model {name!r}: no {path}; known models: {', '.join(known)}")
    section = yaml.safe_load(path.read_text()) or {}
    problems = Problems()
    spec = model_spec(section, problems)
    problems.raise_if_any()
    return spec


def _calibrate(args: argparse.Namespace, method: MergeMethod, tasks: TaskVectors, inputs: list[Path],
               folder_base: bool, device: torch.device):
    """The calibration pass of a data-aware method: CLIP checkpoints with ``--model`` and preprocessed images, or a
    model folder's own architecture with token ids or texts. One model in memory, freed afterwards."""
    from ..calibration.clip import calibrate_from_file

    if not folder_base:
        if args.calibration_text is not None:
            raise ValueError("--calibration-text applies to model folders; give CLIP checkpoints --calibration "
                             "with preprocessed images")
        if args.model is None:
            raise ValueError("--calibration on checkpoint files needs --model NAME: the CLIP architecture that runs "
                             "the calibration images (e.g. --model ViT-B-32)")
        from ..models.encoder import build_image_encoder

        encoder, _ = build_image_encoder(_model_spec(args.model), tasks.pretrained, inputs[0])
        return calibrate_from_file(method, tasks, encoder.to(device), args.calibration, progress=not args.quiet)
    return _calibrate_folder(args, method, tasks, inputs[0], device)


def _calibrate_folder(args: argparse.Namespace, method: MergeMethod, tasks: TaskVectors, base: Path,
                      device: torch.device):
    from ..calibration import hf
    from ..calibration.passes import CalibrationRecord, calibrate
    from ..calibration.samples import given_indices

    spec = method.calibration
    assert spec is not None
    started = time.perf_counter()
    if args.calibration is not None:
        data = hf.read_token_file(args.calibration, tasks.num_tasks)
        source = str(args.calibration)
    else:
        data = hf.read_text_file(args.calibration_text, tasks.num_tasks, base, args.calibration_max_length)
        source = str(args.calibration_text)
    model = hf.load_calibration_model(base).to(device)
    vocab = int(model.config.vocab_size)
    batches, counts = {}, {}
    for task, (ids, mask) in data.items():
        name = tasks.names[task]
        keep = given_indices(spec, ids.shape[0], name)
        batches[task] = hf.token_batches(ids[keep], None if mask is None else mask[keep], spec.batch_size,
                                         vocab_size=vocab, task=name)
        counts[name] = int(keep.numel())
    keys = calibrate(method, tasks, model, lambda task: batches[task], hf.hf_forward, progress=not args.quiet)
    del model
    return CalibrationRecord(samples=counts, seed=spec.seed if spec.draw == "choice" else None, split="given",
                             source=source, statistic=spec.statistic, keys=len(keys),
                             seconds=time.perf_counter() - started)


def _check_inputs(pretrained: Path, finetuned: list[Path]) -> list[Path]:
    """Each input once: a checkpoint given twice (or as θ0 and a θi) would silently weigh double."""
    for i, path in enumerate(finetuned):
        if same_file(path, pretrained):
            raise ValueError(f"fine-tuned checkpoint {str(path)!r} is the pre-trained checkpoint "
                             f"{str(pretrained)!r}; its task vector would be zero. Give each task's own file.")
        for earlier in finetuned[:i]:
            if same_file(path, earlier):
                raise ValueError(f"fine-tuned checkpoint {str(path)!r} is given twice (also as {str(earlier)!r}); "
                                 "give each task's checkpoint once")
    return [pretrained, *finetuned]


def _check_adapter_options(args: argparse.Namespace, method: MergeMethod, finetuned: list[Path]) -> bool:
    """Whether the fine-tuned inputs are LoRA adapters (all or none), with ``--pretrained`` defaulting to their
    base model; the adapter-only options refused otherwise."""
    kinds = [is_adapter_folder(path) for path in finetuned]
    if any(kinds) and not all(kinds):
        adapter = finetuned[kinds.index(True)]
        full = finetuned[kinds.index(False)]
        raise ValueError(f"--finetuned mixes a LoRA adapter ({adapter}) with a full fine-tuned model ({full}); merge "
                         "the adapters alone, or write each one into its base first (tsvmerge merge --method sum "
                         "--finetuned ADAPTER --merge-into-base --out FOLDER) and merge full models")
    adapters = all(kinds)
    if not adapters:
        for flag, given in (("--max-rank", args.max_rank is not None), ("--merge-into-base", args.merge_into_base)):
            if given:
                raise ValueError(f"{flag} applies to LoRA adapter inputs (PEFT folders holding adapter_config.json)")
        if args.pretrained is None:
            raise ValueError("--pretrained is required: the pre-trained model θ0 the fine-tuned models start from")
        return False
    if args.max_rank is not None and args.max_rank < 1:
        raise ValueError(f"--max-rank must be at least 1, got {args.max_rank}")
    if args.max_rank is not None and args.merge_into_base:
        raise ValueError("--max-rank shapes a merged adapter; --merge-into-base writes a full model: give one")
    bases = {}
    for path in finetuned:
        config = read_adapter_config(path)
        if config.get("base_model_name_or_path"):
            bases.setdefault(str(config["base_model_name_or_path"]), path)
    if len(bases) > 1:
        listed = "; ".join(f"{path}: {base}" for base, path in bases.items())
        raise ValueError(f"the adapters were trained on different base models ({listed}); merge adapters of one "
                         "base model")
    if args.pretrained is None:
        if not bases:
            raise ValueError("the adapters do not name their base model (base_model_name_or_path): give --pretrained")
        args.pretrained = next(iter(bases))
    return True


def _writes_adapter(args: argparse.Namespace, method: MergeMethod) -> bool:
    """Adapters in: an adapter out when the method's result is exactly low-rank, or ``--max-rank`` asks for one."""
    if args.merge_into_base or method.task_specific:
        return False
    return method.merges_factors() or args.max_rank is not None


def _check_adapter_output(args: argparse.Namespace, inputs: list[Path]) -> None:
    if args.out.suffix in STATE_DICT_SUFFIXES:
        raise OutputPathError(f"the merged adapter is a PEFT adapter folder: --out must be a folder, not {args.out}")
    for flag, given in (("--save-masks", args.save_masks), ("--sti-out", args.sti_out),
                        ("--max-shard-size", args.max_shard_size)):
        if given is not None:
            raise ValueError(f"{flag} does not apply to a merged adapter")
    check_output_path(args.out, label="--out", inputs=inputs, folder=True)
    check_output_folder(args.out, may_write=lambda name: name in ADAPTER_FILES or name == MANIFEST_NAME)


def _open_adapters(paths: Sequence[Path], base) -> list:
    from ..checkpoints.peft_adapter import PeftAdapter

    return [PeftAdapter(path, base) for path in paths]


def _check_outputs(args: argparse.Namespace, method: MergeMethod, inputs: list[Path], folder_base: bool) -> None:
    """Every output path is writable, harms no input, no other output and no file tsvmerge did not write; done
    before the merge starts."""
    if folder_base:
        if args.out.suffix in STATE_DICT_SUFFIXES:
            raise OutputPathError(f"θ0 is a model folder, so the merged model is one too: --out must be a folder, "
                                  f"not {args.out}")
        if args.save_masks is not None or args.sti_out is not None or args.report_sti:
            raise ValueError("--save-masks / --report-sti apply to state-dict files, not model-folder merges")
        base_files = {path.name for path in model_files(inputs[0])}

        def model_file(name: str) -> bool:
            return is_weight_file(name) or name in base_files or name == MANIFEST_NAME

        def may_write(name: str) -> bool:
            if not method.task_specific:
                return model_file(name)
            inside = _IN_TASK_FOLDER.fullmatch(name)
            return name == MANIFEST_NAME or (inside is not None and model_file(inside["name"]))

        check_output_path(args.out, label="--out", inputs=inputs, folder=True)
        check_output_folder(args.out, may_write=may_write)
        return
    if args.max_shard_size is not None:
        raise ValueError("--max-shard-size applies to model-folder outputs (θ0 given as a model folder or hub id)")
    if method.task_specific and args.out.suffix in STATE_DICT_SUFFIXES:
        raise OutputPathError(f"{method.name} gives one model per task: --out must be a folder, not {args.out}")
    check_output_path(args.out, label="--out", inputs=inputs, folder=method.task_specific)
    if method.task_specific:
        check_output_folder(args.out, may_write=lambda name: bool(_TASK_FILE.fullmatch(name)) or name == MANIFEST_NAME)
    written = [args.out]
    for label, path in (("--save-masks", args.save_masks), ("--sti-out", args.sti_out)):
        if path is None:
            continue
        if method.task_specific and args.out.resolve() in path.resolve().parents:
            raise OutputPathError(f"{label} {str(path)!r} lies inside the --out folder, which tsvmerge manages as a "
                                  "whole; write it elsewhere")
        check_output_path(path, label=label, inputs=[*inputs, *written])
        written.append(path)


def _record(args: argparse.Namespace, inputs: list[Path]) -> OutputRecord:
    """What the output folders' manifests say about this run: its command line and its inputs."""
    arguments = [args.pretrained, *args.finetuned]
    return OutputRecord(command=args.argv, inputs=[input_identity(arg, path) for arg, path in zip(arguments, inputs,
                                                                                                   strict=True)])


# ------------------------------------------------------------------------------------------------- the merge

@contextlib.contextmanager
def _processes(choice: str) -> Iterator[tuple[torch.device, Collective]]:
    """This process's device and the collective of the merge: one process, or the torchrun-launched group.

    When a process of the group fails, only the first to fail reports its error; the others (lost peer, stopped by
    torchrun, temporary folder gone) raise PeerFailed, which exits quietly with that process's status. The failure
    is settled before the group is torn down, so that the peers' errors come after it is recorded.
    """
    import signal

    from ..training.distributed import detect_launch, process_group
    from ..utils.entry_point import PeerFailed, exit_status

    launch = detect_launch()
    if launch is None or launch.world_size == 1:
        yield activate_device(resolve_device(choice)), SingleProcess()  # cuda:k current: no context on GPU 0
        return
    with process_group(launch, choice) as context:
        where = context.device if context.backend == "nccl" else torch.device("cpu")  # gloo reduces on the CPU
        collective = ProcessGroupCollective(where)
        try:
            yield context.device, collective
        except BaseException as error:
            # This process is on its way out: torchrun's SIGTERM (sent once a peer exited) must not interrupt the
            # settling or add a message; run_main restores the handler it found.
            with contextlib.suppress(ValueError):  # not the main thread
                signal.signal(signal.SIGTERM, signal.SIG_IGN)
            status = exit_status(error, USER_ERRORS)
            first = collective.first_failure(error, status)
            if first is not None:
                raise PeerFailed(first[1], first[0]) from None
            raise


def _open(path: Path):
    """A lazy state dict over a model folder or a state-dict file."""
    return HFModelFolder(path) if path.is_dir() else open_state_dict(path)


def run(args: argparse.Namespace) -> int:
    choice = _method_choice(args)
    method = _build_method(args, choice)
    svd_keys, average_keys = _entry_rule_overrides(args, choice, method)
    _check_options(args, method)
    _check_calibration_options(args, method)
    dtype = DTYPES[args.dtype] if args.dtype else None
    max_shard_bytes = parse_size(args.max_shard_size or "5GB")
    finetuned_paths = [resolve_source(arg) for arg in args.finetuned]
    adapters = _check_adapter_options(args, method, finetuned_paths)
    pretrained_path = resolve_source(args.pretrained)
    inputs = _check_inputs(pretrained_path, finetuned_paths)
    folder_base = pretrained_path.is_dir()
    if adapters and not folder_base:
        raise ValueError(f"LoRA adapters are merged onto a model folder: --pretrained {args.pretrained} is a file; "
                         "give the base model's folder or hub id")
    adapter_out = adapters and _writes_adapter(args, method)
    if adapter_out:
        _check_adapter_output(args, inputs)
    else:
        if adapters and not args.merge_into_base:
            print(f"{method.name} has no exact low-rank result: writing a full model folder (θ0 + α·τMT); "
                  "--max-rank R writes a rank-R adapter instead")
        _check_outputs(args, method, inputs, folder_base)

    with _processes(args.device) as (device, collective), MemoryMonitor(device=device) as monitor:
        if collective.world_size > 1 and not folder_base:
            raise ValueError("a merge split over several processes writes a model folder: give θ0 as a model "
                             "folder or hub id (or run a single process)")
        pretrained = _open(inputs[0])
        finetuned = _open_adapters(inputs[1:], pretrained) if adapters else [_open(path) for path in inputs[1:]]
        config = pretrained.config if isinstance(pretrained, HFModelFolder) else None
        rules = rules_for(pretrained, config, svd_keys=svd_keys, average_keys=average_keys)
        check_rules_match(rules, {key: pretrained.shape(key) for key in pretrained})
        if collective.rank == 0 and (folder_base or method.task_specific):
            remove_stale_temporaries(args.out)
        if adapter_out and collective.world_size > 1:
            raise ValueError("a merged adapter is written by one process (its factored merge takes seconds): run "
                             "without torchrun, or add --merge-into-base for a model folder")
        if method.calibration is not None and collective.world_size > 1:
            raise ValueError(f"{method.name} calibrates on whole models: run it in a single process")
        calibration = None
        if folder_base:
            assert isinstance(pretrained, HFModelFolder)
            tasks = _folder_tasks(pretrained, finetuned, args, device, rules, collective)
            if method.calibration is not None:
                calibration = _calibrate(args, method, tasks, inputs, folder_base, device)
            started = time.perf_counter()
            if adapter_out:
                written = write_merged_adapter(method, tasks, finetuned, args.out, alpha=args.alpha, dtype=dtype,
                                               max_rank=args.max_rank, progress=not args.quiet,
                                               record=_record(args, inputs))
            else:
                written = write_merged_folders(
                    method, tasks, pretrained, args.out, alpha=args.alpha, dtype=dtype,
                    max_shard_bytes=max_shard_bytes,
                    choice=_mask_choice(method.mask_labels(), args.tall_lambda, method.name),
                    progress=not args.quiet and collective.rank == 0, record=_record(args, inputs))
            stats = {"seconds": time.perf_counter() - started, **method.finalize(tasks)}
        else:
            tasks = TaskVectors(pretrained, finetuned, names=args.names, device=device, rules=rules)
            if method.calibration is not None:
                calibration = _calibrate(args, method, tasks, inputs, folder_base, device)
            result = merge(method, tasks, progress=not args.quiet)
            written = _write_outputs(args, result, pretrained, tasks, dtype, _record(args, inputs))
            stats = result.stats
    if collective.rank != 0:
        return 0
    where = f"{collective.world_size} processes" if collective.world_size > 1 else str(device)
    print(f"merged {tasks.num_tasks} tasks with {method.name} on {where} in {stats['seconds']:.1f} s; "
          f"{monitor.report.summary()}")
    if calibration is not None:
        per_task = sorted(set(calibration.samples.values()))
        print(f"  calibration: {'/'.join(map(str, per_task))} samples per task from {calibration.source}, "
              f"{calibration.keys} linear maps, {calibration.seconds:.1f} s")
    for path in written:
        print(f"  wrote {path}")
    if "storage" in stats:
        storage = stats["storage"]
        print(f"  storage: {storage['numbers_per_task']:,} numbers per task, {storage['numbers_total']:,} in total "
              f"({storage['compression_ratio']:.1f}x smaller than a full task vector each)")
    if "sti" in stats:
        _print_interference(stats)
        if args.sti_out:
            write_json(args.sti_out, {"per_entry": stats["sti"], "per_block": stats["sti_per_block"]})
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


def _folder_tasks(pretrained: HFModelFolder, finetuned: list, args: argparse.Namespace, device: torch.device,
                  rules, collective: Collective) -> TaskVectors:
    """The task vectors of a model-folder merge; each process streams only the entries of its own shards."""
    tasks = TaskVectors(pretrained, finetuned, names=args.names, device=device, rules=rules, collective=collective)
    if collective.world_size == 1:
        return tasks
    dtype = DTYPES[args.dtype] if args.dtype else None
    plan = plan_for(tasks, parse_size(args.max_shard_size or "5GB"), dtype, tied_entries(tasks))
    own = [key for index in plan.owned_by(collective.rank) for key in plan.shards[index]]
    return TaskVectors(pretrained, finetuned, names=args.names, device=device, rules=rules, own_keys=own,
                       collective=collective)


def _cast(state: dict, dtype: torch.dtype | None) -> dict:
    if dtype is None:
        return state
    return {key: value.to(dtype) if value.is_floating_point() else value for key, value in state.items()}


def _write_outputs(args: argparse.Namespace, result, pretrained, tasks: TaskVectors,
                   dtype: torch.dtype | None = None, record: OutputRecord | None = None) -> list[Path]:
    """The merged model, or the folder of per-task models (complete or absent, never half-written)."""
    if not result.method.task_specific:
        merged = apply_task_vector(pretrained, result.task_vector, args.alpha, inplace=True,
                                   scaled=result.method.alpha_scaled)
        save_state_dict(_cast(merged, dtype), args.out)
        return [args.out]
    choice = _mask_choice(result.mask_labels, args.tall_lambda, result.method.name)
    written = []
    planned = [f"task{task}.pt" for task in range(tasks.num_tasks)]
    with owned_directory(args.out, record or OutputRecord(), planned) as folder:
        for task in range(tasks.num_tasks):
            merged = apply_task_vector(pretrained, result.task_specific_vector(task, choice), args.alpha,
                                       inplace=True)
            save_state_dict(_cast(merged, dtype), folder / f"task{task}.pt")
            written.append(args.out / f"task{task}.pt")
            del merged
        if args.save_masks:
            save_tall_masks(args.save_masks, flat_task_masks(result, tasks, [choice] * tasks.num_tasks))
            written.append(args.save_masks)
    return written


def _mask_choice(labels: Sequence, tall_lambda: float | None, method: str) -> int:
    """Index of the mask choice ``--lambda`` names (default: λ = 0.4 where the method has it, else the first)."""
    if tall_lambda is None:
        return list(labels).index(0.4) if 0.4 in labels else 0
    lambdas = [label for label in labels if isinstance(label, int | float) and not isinstance(label, bool)]
    if not lambdas:
        raise ValueError(f"--lambda applies to tall_mask building its masks (a λ grid); {method!r} has no λ to "
                         "choose")
    if tall_lambda not in lambdas:
        raise ValueError(f"--lambda {tall_lambda:g} is not among this method's mask choices "
                         f"{', '.join(f'{x:g}' for x in lambdas)}")
    return list(labels).index(tall_lambda)



# ------------------------------------------------------------------------------------------- model folders

_INPUT_EMBEDDING = re.compile(r"(^|\.)(embed_tokens|wte|word_embeddings|embed_in)\.weight$")
_OUTPUT_HEAD = re.compile(r"(^|\.)(lm_head|embed_out)\.weight$")


def tied_entries(tasks: TaskVectors) -> dict[str, str]:
    """``{output head: input embedding}`` for heads stored in every input as an exact copy of the embedding.

    Such weights are tied in the model (``tie_word_embeddings``) but saved twice; merging both copies gives the
    same values only if the method is deterministic, so the head is written as a copy of the merged embedding.
    A head absent from the checkpoint (the usual tied save) is not invented.
    """
    embeddings = [key for key in tasks.keys if _INPUT_EMBEDDING.search(key)]
    tied = {}
    for head in (key for key in tasks.keys if _OUTPUT_HEAD.search(key)):
        for embedding in embeddings:
            if tasks.shape(head) != tasks.shape(embedding) or tasks.dtype(head) != tasks.dtype(embedding):
                continue
            inputs = [tasks.pretrained, *tasks.finetuned]
            if all(torch.equal(state[head], state[embedding]) for state in inputs):
                tied[head] = embedding
                break
    return tied


def output_folders(method: MergeMethod, num_tasks: int) -> list[str]:
    """Sub-folders of ``--out``: the folder itself, or ``task<i>`` per task for task-specific methods."""
    return [f"task{task}" for task in range(num_tasks)] if method.task_specific else ["."]


def plan_for(tasks: TaskVectors, max_shard_bytes: int, dtype: torch.dtype | None, tied: dict[str, str]) -> ShardPlan:
    """The shard layout of the merged model: entries in key order, written in ``dtype`` (default each entry's)."""
    sizes = {}
    for key in tasks.keys:
        sizes[key] = tasks.shape(key).numel() * _output_dtype(tasks, key, dtype).itemsize
    # A tied head goes right after its embedding, in the same shard.
    groups = [[embedding, head] for head, embedding in tied.items()]
    return plan_shards(sizes, max_shard_bytes, tasks.collective.world_size, groups)


def planned_files(plan: ShardPlan, base: HFModelFolder, subfolders: Sequence[str]) -> list[str]:
    """Every file the merge writes below ``--out`` (relative paths): what its manifest will claim."""
    names = [*plan.names, *([SAFETENSORS_INDEX] if len(plan.shards) > 1 else []),
             *(path.name for path in model_files(base.path))]
    files = []
    for sub in subfolders:
        prefix = "" if sub == "." else f"{sub}/"
        files += [prefix + name for name in names] + ([prefix + MANIFEST_NAME] if prefix else [])
    return files


def write_merged_folders(method: MergeMethod, tasks: TaskVectors, base: HFModelFolder, out: Path, *, alpha: float,
                         dtype: torch.dtype | None = None, max_shard_bytes: int, choice: int = 0,
                         progress: bool = False, workers: int | None = None,
                         record: OutputRecord | None = None) -> list[Path]:
    """Prepare ``method``, merge this process's shards into ``out`` and return the folders written; ``record``
    (the command and its inputs) goes into the folders' manifests (:mod:`tsvmerge.checkpoints.output_folders`)."""
    collective = tasks.collective
    method.prepare(tasks, progress=progress, workers=workers)
    tied = tied_entries(tasks)
    plan = plan_for(tasks, max_shard_bytes, dtype, tied)
    subfolders = output_folders(method, tasks.num_tasks)
    if collective.rank == 0:
        with owned_directory(out, record or OutputRecord(), planned_files(plan, base, subfolders)) as tmp:
            collective.broadcast_text(str(tmp))
            _write_own_shards(method, tasks, plan, tied, tmp, subfolders, alpha=alpha, dtype=dtype, choice=choice,
                              progress=progress, workers=workers)
            collective.barrier()  # every process has written its shards
            for sub in subfolders:
                write_index(tmp / sub, plan)
                copy_model_files(base.path, tmp / sub, _dtype_name(dtype))
        collective.barrier()  # the folder is in place
    else:
        tmp = Path(collective.broadcast_text(None))
        _write_own_shards(method, tasks, plan, tied, tmp, subfolders, alpha=alpha, dtype=dtype, choice=choice,
                          progress=False, workers=workers)
        collective.barrier()
        collective.barrier()
    return [out / sub if sub != "." else out for sub in subfolders]


def write_merged_adapter(method: MergeMethod, tasks: TaskVectors, adapters: Sequence, out: Path, *, alpha: float,
                         dtype: torch.dtype | None = None, max_rank: int | None = None, progress: bool = False,
                         record: OutputRecord | None = None) -> list[Path]:
    """Merge LoRA adapters into one PEFT adapter folder ``out``: each targeted module's τMT as new factors
    (B = U·diag(α·s), A = Vᵀ, scale 1, rank as computed or capped by ``max_rank``), each entry the adapters save whole
    as θ0 + α·τMT in ``modules_to_save``; prints the ranks (and what a cap cost)."""
    from ..checkpoints.peft_adapter import adapter_config_for, adapter_tensors, peft_key, write_adapter
    from ..merging.engine import apply_entry
    from ..merging.lora import merge_adapter_entries

    method.prepare(tasks, progress=progress)
    layout: dict[str, str] = {}
    factor_dtype = None
    for adapter in adapters:
        for key in adapter.targeted:
            layout.setdefault(key, adapter.layout[key])
            factor_dtype = factor_dtype or adapter.factors(key).B.dtype
    factor_dtype = dtype or factor_dtype or torch.float32
    tensors: dict[str, torch.Tensor] = {}
    ranks: dict[str, int] = {}
    errors: dict[str, float] = {}
    saved: list[str] = []
    changed = sorted({key for adapter in adapters for key in (*adapter.targeted, *adapter.saved)})
    keys = tqdm(changed, desc=f"merge ({method.name}, adapters)", disable=not progress, unit="entry", leave=False)
    for merged in merge_adapter_entries(method, tasks, list(keys), set(layout), max_rank=max_rank):
        coefficient = alpha if method.alpha_scaled(merged.key) else 1.0
        if merged.factors is not None:
            factors = merged.factors
            if factors.s.numel() == 0:
                continue
            B = (factors.U * (factors.s * coefficient)).to(factor_dtype)
            tensors.update(adapter_tensors(merged.key, layout[merged.key], B, factors.V.mT.to(factor_dtype)))
            ranks[merged.key] = factors.s.numel()
            errors[merged.key] = merged.error
        else:
            tensors[peft_key(merged.key)] = apply_entry(tasks.pretrained[merged.key], merged.tau, coefficient,
                                                        merged.key, dtype=dtype)
            saved.append(merged.key)
    if not tensors:
        raise ValueError("the merged update is zero (no adapter changes anything): there is no adapter to write")
    config = adapter_config_for(adapters, ranks, saved)
    with owned_directory(out, record or OutputRecord(), ADAPTER_FILES) as tmp:
        write_adapter(tmp, tensors, config)
    _print_ranks(ranks, errors, max_rank)
    return [out]


def _print_ranks(ranks: dict[str, int], errors: dict[str, float], max_rank: int | None) -> None:
    """The merged adapter's rank per module type (block numbers folded), and the worst error of a rank cap."""
    groups: dict[str, list[str]] = {}
    for key in ranks:
        groups.setdefault(re.sub(r"\.\d+\.", ".*.", key), []).append(key)
    for group, keys in sorted(groups.items()):
        values = sorted(ranks[key] for key in keys)
        shown = str(values[0]) if values[0] == values[-1] else f"{values[0]}-{values[-1]}"
        line = f"  rank {shown:>9s}  {group}" + (f" ({len(keys)} modules)" if len(keys) > 1 else "")
        if max_rank is not None:
            worst = max(keys, key=lambda key: errors[key])
            line += f"; rank cap {max_rank}: relative error up to {errors[worst]:.3g}"
        print(line)


def _write_own_shards(method: MergeMethod, tasks: TaskVectors, plan: ShardPlan, tied: dict[str, str], folder: Path,
                      subfolders: Sequence[str], *, alpha: float, dtype: torch.dtype | None, choice: int,
                      progress: bool, workers: int | None) -> None:
    """Merge the entries of this process's shards in order, appending each merged tensor to its shard file at once."""
    for sub in subfolders:
        # Never the temporary folder itself: rank 0 made it, and removes it when the merge fails on any process.
        (folder / sub).mkdir(exist_ok=True)
    own = plan.owned_by(tasks.collective.rank)
    keys = [key for index in own for key in plan.shards[index] if key not in tied]
    stream = stream_merged_entries(method, tasks, keys, alpha=alpha, dtype=dtype, choice=choice, workers=workers,
                                   progress=progress)
    embeddings = set(tied.values())
    for index in own:
        shard_keys = plan.shards[index]
        layout = [(key, tuple(tasks.shape(key)), _output_dtype(tasks, key, dtype)) for key in shard_keys]
        with contextlib.ExitStack() as files:
            writers = [files.enter_context(SafetensorsStreamWriter(folder / sub / plan.names[index], layout,
                                                                   {"format": "pt"})) for sub in subfolders]
            kept: dict[str, list[torch.Tensor]] = {}  # merged embeddings whose tied head comes next
            for key in shard_keys:
                if key in tied:
                    values = kept.pop(tied[key])
                else:
                    streamed, values = next(stream)
                    assert streamed == key, (streamed, key)
                    if key in embeddings:
                        kept[key] = values
                for writer, value in zip(writers, values, strict=True):
                    writer.write(key, value)
                del values


def _output_dtype(tasks: TaskVectors, key: str, dtype: torch.dtype | None) -> torch.dtype:
    """The dtype an entry is written in: ``dtype`` for merged (floating) entries when given, else θ0's."""
    return dtype if dtype is not None and tasks.is_mergeable(key) else tasks.dtype(key)


def _dtype_name(dtype: torch.dtype | None) -> str | None:
    return None if dtype is None else str(dtype).removeprefix("torch.")
