"""Calibration of Hugging Face language models: θ0's model, its forward pass, and the token samples of each task.

The samples come from ``tsvmerge merge --calibration FILE`` (token ids per task, keyed by the position of the task's
fine-tuned folder on the command line, with optional attention masks) or ``--calibration-text FILE.jsonl`` (texts
tokenized with θ0's tokenizer). Each bad input is one :class:`~tsvmerge.merging.calibration.CalibrationError`
naming the file, the task and the problem; calling :func:`token_batches` for every task before the calibration pass
runs all the checks before any model does. Padding is right
padding, marked 0 in the attention mask; it is run through the model but never enters a statistic
(:attr:`Batch.row_mask`).

transformers is imported inside the functions: it is an optional dependency.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..checkpoints import open_state_dict
from ..checkpoints.hf_folder import HFModelFolder
from ..merging.calibration import CalibrationError
from ..utils.errors import UserError
from .passes import Batch

__all__ = ["hf_forward", "load_calibration_model", "read_text_file", "read_token_file", "token_batches"]

_MASK_KEY = re.compile(r"(?P<task>\d+)\.attention_mask")
#: A task's token ids [N, L] and its attention mask [N, L] (None: no padding).
TokenSamples = tuple[Tensor, Tensor | None]


# ------------------------------------------------------------------------------------------------------ the model

def load_calibration_model(folder: Path) -> nn.Module:
    """θ0's model of a Hugging Face folder, in float32 (SPEC_ESM E8, SPEC_REGMEAN R6), eval mode, on the CPU.

    The calibration pass (:func:`~tsvmerge.calibration.passes.calibrate`) loads each θi into this one model, task by
    task, by state-dict key, so those keys must be the folder's: ``AutoModelForCausalLM`` first (Llama:
    ``model.layers.0...``, ``lm_head.weight``), ``AutoModel`` when the folder is no causal LM or names its tensors
    as a bare model (``layers.0...``). A folder that neither can hold is refused: θi would silently not reach the
    tensors the model does not share with it.
    """
    import transformers

    folder = Path(folder)
    with HFModelFolder(folder) as weights:
        folder_keys = [key for key in weights if key.endswith(".weight")]
    tried: list[str] = []
    for auto in (transformers.AutoModelForCausalLM, transformers.AutoModel):
        try:
            model = auto.from_pretrained(folder, dtype=torch.float32)
        except (OSError, ValueError) as exc:  # no config.json, or a config this auto class maps to no model
            tried.append(f"{auto.__name__}: {(str(exc).strip().splitlines() or [type(exc).__name__])[0]}")
            continue
        state = model.state_dict()
        foreign = [key for key in folder_keys if key not in state]
        if not foreign:
            return model.float().eval().to("cpu")
        tried.append(f"{type(model).__name__} has no {', '.join(foreign[:3])}")
    raise CalibrationError(f"{str(folder)!r}: transformers builds no model whose tensors are the folder's, so θi "
                           f"could not be loaded into it for the calibration ({'; '.join(tried)})")


def hf_forward(module: nn.Module, inputs: dict[str, Tensor]) -> None:
    """One forward pass of ``inputs`` (``input_ids``, ``attention_mask``) for the input hooks, without a key-value
    cache (nothing would use it; the calibration pass already runs without autograd)."""
    module(**inputs, use_cache=False)


# ------------------------------------------------------------------------------------------------------ batches

def token_batches(ids: Tensor, attention_mask: Tensor | None, batch_size: int | None, *, vocab_size: int,
                  task: str) -> list[Batch]:
    """One task's samples as forward passes of ``batch_size`` samples (None: all in one, as ESM needs).

    Each batch's ``row_mask`` is its attention mask flattened over batch × length, so that padding never enters a
    statistic; without a mask every token is real. Ids outside the model's vocabulary are refused here, where
    ``vocab_size`` is known (an embedding lookup would fail with an index error, or read another row on a GPU).
    """
    _check_ids(ids, f"task {task!r}")
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= vocab_size):
        raise CalibrationError(f"task {task!r}: token ids must lie in 0..{vocab_size - 1} (the model's vocabulary); "
                               f"found {int(ids.min())}..{int(ids.max())}")
    mask = torch.ones_like(ids) if attention_mask is None else attention_mask
    _check_mask(mask, ids, f"task {task!r}")
    ids, mask = ids.long(), mask.long()
    if batch_size is not None and batch_size < 1:
        raise CalibrationError(f"task {task!r}: the calibration batch size must be at least 1, got {batch_size}")
    step = ids.shape[0] if batch_size is None else batch_size
    return [Batch(inputs={"input_ids": ids[i:i + step], "attention_mask": mask[i:i + step]},
                  row_mask=mask[i:i + step].bool().flatten())
            for i in range(0, ids.shape[0], step)]


# ------------------------------------------------------------------------------------------ --calibration FILE

def read_token_file(path: Path, num_tasks: int) -> dict[int, TokenSamples]:
    """Task → (token ids [N, L], attention mask [N, L] or None) from a ``.safetensors`` or ``torch.save`` file.

    Keys: ``'0'`` .. ``'T-1'`` (the position of each fine-tuned folder on the command line) and, optionally,
    ``'<i>.attention_mask'``; nothing else, so that a file made for other checkpoints is not half used.
    """
    path = Path(path)
    tensors = _load_tensors(path)
    expected = {str(t) for t in range(num_tasks)}
    extra = sorted(key for key in tensors
                   if key not in expected and not ((m := _MASK_KEY.fullmatch(key)) and m["task"] in expected))
    if extra:
        raise CalibrationError(f"{path}: unexpected key(s) {', '.join(map(repr, extra[:5]))}; a calibration file "
                               f"holds one token-id tensor per task, keyed '0'..'{num_tasks - 1}' (the position of "
                               "its fine-tuned checkpoint on the command line), and optional '<i>.attention_mask'")
    missing = sorted(expected - set(tensors), key=int)
    if missing:
        raise CalibrationError(f"{path}: no samples for task(s) {', '.join(map(repr, missing))}; it needs one "
                               f"token-id tensor per fine-tuned checkpoint, keyed '0'..'{num_tasks - 1}'")
    samples: dict[int, TokenSamples] = {}
    for task in range(num_tasks):
        ids, mask = tensors[str(task)], tensors.get(f"{task}.attention_mask")
        where = f"{path}: task {task} (key '{task}')"
        _check_finite(ids, where)
        _check_ids(ids, where)
        if mask is not None:
            mask_where = f"{path}: key '{task}.attention_mask'"
            _check_finite(mask, mask_where)
            _check_mask(mask, ids, mask_where)
        samples[task] = (ids, mask)
    return samples


def _load_tensors(path: Path) -> dict[str, Tensor]:
    """``{key: tensor}`` of the file: safetensors by extension, anything else ``torch.load(weights_only=True)``."""
    if not path.is_file():
        raise CalibrationError(f"calibration file {str(path)!r} does not exist")
    try:
        if path.suffix == ".safetensors":
            with open_state_dict(path) as state:
                obj: Any = {key: state[key] for key in state}
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except UserError as exc:
        raise CalibrationError(f"calibration file {str(path)!r} cannot be read: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - pickle, zip and safetensors errors: the file is not a tensor file
        raise CalibrationError(f"calibration file {str(path)!r} cannot be read as a .safetensors or torch.save "
                               f"file of tensors: {exc}") from None
    if not isinstance(obj, dict) or not all(isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items()):
        raise CalibrationError(f"calibration file {str(path)!r} must hold a dict {{str: tensor}}, got "
                               f"{type(obj).__name__}")
    return obj


def _check_finite(tensor: Tensor, where: str) -> None:
    if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
        raise CalibrationError(f"{where} holds NaN or infinite values")


def _check_ids(ids: Tensor, where: str) -> None:
    """Token ids: an integer tensor [N, L] with at least one sample and one position."""
    if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
        raise CalibrationError(f"{where}: token ids must be an integer tensor [N, L], got dtype {ids.dtype}")
    if ids.ndim != 2:
        raise CalibrationError(f"{where}: token ids must be a tensor [N, L] (samples × length), got shape "
                               f"{list(ids.shape)}")
    if ids.shape[0] == 0:
        raise CalibrationError(f"{where} has zero samples")
    if ids.shape[1] == 0:
        raise CalibrationError(f"{where}: its samples have no tokens (length 0)")


def _check_mask(mask: Tensor, ids: Tensor, where: str) -> None:
    """An attention mask: the ids' shape, only 0 / 1, at least one real token per sample (a sample of padding only
    would attend to nothing)."""
    if mask.shape != ids.shape:
        raise CalibrationError(f"{where}: the attention mask has shape {list(mask.shape)}, the token ids "
                               f"{list(ids.shape)}; they must be equal")
    if mask.is_complex() or not bool(((mask == 0) | (mask == 1)).all()):
        raise CalibrationError(f"{where}: the attention mask must hold only 0 (padding) and 1 (real token)")
    empty = (mask != 0).sum(dim=1) == 0
    if bool(empty.any()):
        rows = empty.nonzero().flatten().tolist()
        raise CalibrationError(f"{where}: attention-mask row(s) {', '.join(map(str, rows[:5]))} have no real token "
                               "(all 0); every sample needs at least one")


# --------------------------------------------------------------------------------- --calibration-text FILE.jsonl

def read_text_file(path: Path, num_tasks: int, tokenizer_folder: Path, max_length: int = 512
                   ) -> dict[int, tuple[Tensor, Tensor]]:
    """Task → (token ids [N, L], attention mask [N, L]) from JSONL lines ``{"task": i, "text": "..."}``.

    Each task's texts are tokenized together with θ0's tokenizer (``tokenizer_folder``), truncated to
    ``max_length`` tokens and right-padded to the task's longest (so that, under a causal mask, padding changes no
    real token's activations); a tokenizer without a pad token pads with its end-of-sequence token, which the mask
    still marks 0.
    """
    path = Path(path)
    if max_length < 1:
        raise CalibrationError(f"--calibration-max-length must be at least 1, got {max_length}")
    texts = _read_texts(path, num_tasks)
    tokenizer = _load_tokenizer(Path(tokenizer_folder))
    samples: dict[int, tuple[Tensor, Tensor]] = {}
    for task in range(num_tasks):
        encoded = tokenizer(texts[task], padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        ids, mask = encoded["input_ids"], encoded["attention_mask"]
        where = f"{path}: task {task}"
        _check_ids(ids, where)
        _check_mask(mask, ids, where)  # a text of no token at all
        samples[task] = (ids, mask)
    return samples


def _read_texts(path: Path, num_tasks: int) -> list[list[str]]:
    if not path.is_file():
        raise CalibrationError(f"calibration text file {str(path)!r} does not exist")
    texts: list[list[str]] = [[] for _ in range(num_tasks)]
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise CalibrationError(f"calibration text file {str(path)!r} cannot be read as UTF-8 text: {exc}") from None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path}, line {number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise CalibrationError(f"{where} is not valid JSON ({exc.msg}); each line must be "
                                   '{"task": i, "text": "..."}') from None
        if not isinstance(record, dict):
            raise CalibrationError(f"{where} is not a JSON object; each line must be {{\"task\": i, \"text\": "
                                   "\"...\"}")
        task = record.get("task")
        if isinstance(task, bool) or not isinstance(task, int) or not 0 <= task < num_tasks:
            raise CalibrationError(f"{where}: unknown task {task!r}; \"task\" must be an integer in "
                                   f"0..{num_tasks - 1} (the position of the task's fine-tuned checkpoint on the "
                                   "command line)")
        text = record.get("text")
        if not isinstance(text, str) or not text.strip():
            problem = "has no \"text\"" if "text" not in record else (
                "has an empty \"text\"" if isinstance(text, str) else f"has a \"text\" that is not a string ({text!r})")
            raise CalibrationError(f"{where} {problem}; each line must be {{\"task\": i, \"text\": \"...\"}}")
        texts[task].append(text)
    missing = [str(t) for t in range(num_tasks) if not texts[t]]
    if missing:
        raise CalibrationError(f"{path}: no line for task(s) {', '.join(missing)}; every task needs at least one "
                               "text")
    return texts


def _load_tokenizer(folder: Path) -> Any:
    """θ0's tokenizer, set to pad on the right, with a pad token."""
    import transformers

    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    except Exception as exc:  # noqa: BLE001 - transformers raises OSError, ValueError, KeyError... for no tokenizer
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise CalibrationError(f"{str(folder)!r} has no tokenizer files (transformers could not load a tokenizer "
                               f"from it: {reason}); give token ids instead with --calibration FILE") from None
    tokenizer.padding_side = "right"
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise CalibrationError(f"{str(folder)!r}: its tokenizer has neither a pad nor an end-of-sequence token "
                                   "to pad with; give token ids with --calibration FILE")
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer

