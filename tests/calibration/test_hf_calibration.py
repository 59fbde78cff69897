"""Calibration of Hugging Face language-model folders: token and text files, padding, and ESM / RegMean end to end.

Everything is built offline: a tiny Llama θ0 with two fine-tunes, and a character-level tokenizer saved beside θ0.
"""

from __future__ import annotations

import json
import re

import pytest
import torch
from torch import nn

from tests.support.hf_models import finetune, save, tiny_llama
from tsvmerge.calibration import InputCapture, calibrate, linear_inputs
from tsvmerge.checkpoints.hf_folder import HFModelFolder
from tsvmerge.merging import TaskVectors, build_method, merge
from tsvmerge.merging.calibration import CalibrationError
from tsvmerge.merging.entry_rules import rules_for
from tsvmerge.utils.errors import UserError

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")
safetensors_torch = pytest.importorskip("safetensors.torch")

from tsvmerge.calibration.hf import (  # noqa: E402
    hf_forward,
    load_calibration_model,
    read_text_file,
    read_token_file,
    token_batches,
)

VOCAB = 128
MAX_LENGTH = 48  # the tiny Llama has 64 positions
TEXTS = {
    0: ["the quick brown fox jumps over the lazy dog", "a cat", "merging models in their essential subspace",
        "tiny texts, short and long ones. " * 3],
    1: ["regression mean merges linear maps", "padding never enters a statistic", "ok",
        "hello world, this is task one speaking."],
}


def _tokenizer(pad: bool = True, padding_side: str = "right"):
    """A character-level tokenizer (vocabulary of 33 < 128), built without the hub."""
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3}
    for char in "abcdefghijklmnopqrstuvwxyz .,":
        vocab[char] = len(vocab)
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Split("", "isolated")
    specials = {"eos_token": "</s>", "bos_token": "<s>", "unk_token": "<unk>"}
    if pad:
        specials["pad_token"] = "<pad>"
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, padding_side=padding_side, **specials)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf_calibration")
    base = tiny_llama()
    pre = save(base, root / "base")
    _tokenizer().save_pretrained(pre)
    fts = [save(finetune(base, t), root / f"ft{t}") for t in range(2)]
    return pre, fts


@pytest.fixture(scope="module")
def model(folders):
    return load_calibration_model(folders[0])


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("texts") / "calibration.jsonl"
    lines = [json.dumps({"task": task, "text": text}) for task, texts in TEXTS.items() for text in texts]
    path.write_text("\n".join(lines) + "\n\n")  # a trailing blank line is allowed
    return path


def _write_jsonl(path, lines):
    path.write_text("\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n")
    return path


# ------------------------------------------------------------------------------------------------ the model

def test_the_model_is_theta0_in_float32_with_the_folders_keys(folders, model):
    pre, _ = folders
    assert isinstance(model, transformers.LlamaForCausalLM) and not model.training
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    assert {p.device.type for p in model.parameters()} == {"cpu"}
    with HFModelFolder(pre) as weights:
        state = model.state_dict()
        assert set(state) == set(weights)
        for key in ("model.layers.0.self_attn.q_proj.weight", "lm_head.weight"):
            torch.testing.assert_close(state[key], weights[key].float(), rtol=0, atol=0)


def test_a_bfloat16_folder_is_loaded_in_float32(tmp_path):
    folder = save(tiny_llama(torch.bfloat16), tmp_path / "bf16")
    loaded = load_calibration_model(folder)
    assert {p.dtype for p in loaded.parameters()} == {torch.float32}


def test_a_bare_model_folder_is_loaded_with_its_own_keys(tmp_path):
    config = tiny_llama().config
    torch.manual_seed(0)
    folder = save(transformers.LlamaModel(config), tmp_path / "bare")
    loaded = load_calibration_model(folder)
    with HFModelFolder(folder) as weights:
        assert set(loaded.state_dict()) == set(weights)
    assert "layers.0.mlp.down_proj.weight" in linear_inputs(loaded)


# ---------------------------------------------------------------------------------- padding never enters a statistic

def _grams(model, batches):
    """Σ xᵀx (float64) and row count of every linear map's input over ``batches``, captured directly."""
    sums, counts = {}, {}

    def sink(key, rows):
        rows = rows.double()
        sums[key] = sums.get(key, 0) + rows.mT @ rows
        counts[key] = counts.get(key, 0) + rows.shape[0]

    with InputCapture(model, linear_inputs(model), sink) as capture:
        for batch in batches:
            capture.row_mask = batch.row_mask
            hf_forward(model, batch.inputs)
    return {key: sums[key] / counts[key] for key in sums}, counts


def test_padding_never_enters_a_statistic(folders, model, text_file):
    ids, mask = read_text_file(text_file, 2, folders[0], max_length=MAX_LENGTH)[0]
    lengths = mask.sum(dim=1)
    assert len(set(lengths.tolist())) > 1 and bool((mask[:, 0] == 1).all())  # padded, on the right
    padded, padded_counts = _grams(model, token_batches(ids, mask, None, vocab_size=VOCAB, task="t0"))
    alone_batches = [token_batches(ids[i:i + 1, :n], None, None, vocab_size=VOCAB, task="t0")[0]
                     for i, n in enumerate(lengths.tolist())]
    alone, alone_counts = _grams(model, alone_batches)
    assert set(padded) == set(linear_inputs(model)) == set(alone)
    assert padded_counts == alone_counts and set(padded_counts.values()) == {int(lengths.sum())}
    for key in alone:
        torch.testing.assert_close(padded[key], alone[key], rtol=1e-5, atol=1e-5, msg=key)
    # Without the row mask the padding rows would be counted: the check above can fail.
    unmasked = token_batches(ids, mask, None, vocab_size=VOCAB, task="t0")[0]
    unmasked.row_mask = None
    with_padding, _ = _grams(model, [unmasked])
    key = "model.layers.1.mlp.down_proj.weight"
    assert not torch.allclose(with_padding[key], alone[key], rtol=1e-5, atol=1e-5)


def test_token_batches_split_the_samples_and_mask_the_padding():
    ids = torch.arange(15).reshape(5, 3)
    mask = torch.tensor([[1, 1, 1], [1, 1, 0], [1, 0, 0], [1, 1, 1], [1, 1, 0]])
    batches = token_batches(ids, mask, 2, vocab_size=VOCAB, task="t")
    assert [b.inputs["input_ids"].shape[0] for b in batches] == [2, 2, 1]
    assert set(batches[0].inputs) == {"input_ids", "attention_mask"}
    torch.testing.assert_close(torch.cat([b.inputs["input_ids"] for b in batches]), ids)
    assert torch.equal(torch.cat([b.row_mask for b in batches]), mask.bool().flatten())
    assert batches[2].row_mask.dtype == torch.bool and batches[2].row_mask.shape == (3,)
    whole = token_batches(ids.int(), None, None, vocab_size=VOCAB, task="t")
    assert len(whole) == 1 and bool(whole[0].row_mask.all()) and whole[0].inputs["input_ids"].dtype == torch.long
    assert torch.equal(whole[0].inputs["attention_mask"], torch.ones(5, 3, dtype=torch.long))


@pytest.mark.parametrize("ids, problem", [
    (torch.tensor([[1, 128]]), "0..127"),
    (torch.tensor([[-1, 5]]), "0..127"),
    (torch.ones(2, 3), "integer tensor"),
    (torch.ones(2, 3, 1, dtype=torch.long), r"\[N, L\]"),
    (torch.ones(0, 3, dtype=torch.long), "zero samples"),
])
def test_token_batches_refuse_ids_the_model_cannot_take(ids, problem):
    with pytest.raises(CalibrationError, match=f"task 'mine'.*{problem}"):
        token_batches(ids, None, None, vocab_size=VOCAB, task="mine")


# ---------------------------------------------------------------------------------------------- --calibration FILE

IDS = torch.tensor([[1, 5, 6, 7], [1, 8, 9, 0]])
MASK = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])


def _save(tensors, path):
    if path.suffix == ".safetensors":
        safetensors_torch.save_file({k: v.clone().contiguous() for k, v in tensors.items()}, path)
    else:
        torch.save(tensors, path)
    return path


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_token_file(tmp_path, suffix):
    path = _save({"0": IDS, "1": IDS[:1, :3].int(), "0.attention_mask": MASK}, tmp_path / f"cal{suffix}")
    samples = read_token_file(path, 2)
    assert set(samples) == {0, 1}
    assert torch.equal(samples[0][0], IDS) and torch.equal(samples[0][1], MASK)
    assert torch.equal(samples[1][0], IDS[:1, :3].int()) and samples[1][1] is None


def test_token_file_masks_may_be_bool_or_float(tmp_path):
    path = _save({"0": IDS, "0.attention_mask": MASK.bool(), "1": IDS, "1.attention_mask": MASK.float()},
                 tmp_path / "cal.pt")
    samples = read_token_file(path, 2)
    batches = token_batches(*samples[1], None, vocab_size=VOCAB, task="1")
    assert torch.equal(batches[0].row_mask, MASK.bool().flatten())
    assert batches[0].inputs["attention_mask"].dtype == torch.long


BAD_TOKEN_FILES = {
    "missing task": ({"0": IDS}, r"no samples for task\(s\) '1'"),
    "extra task": ({"0": IDS, "1": IDS, "2": IDS}, r"unexpected key\(s\) '2'"),
    "extra mask": ({"0": IDS, "1": IDS, "2.attention_mask": MASK}, r"unexpected key\(s\) '2.attention_mask'"),
    "unrelated key": ({"0": IDS, "1": IDS, "images": IDS}, r"unexpected key\(s\) 'images'"),
    "rank 1": ({"0": IDS, "1": IDS[0]}, r"task 1 .*\[N, L\].*shape \[4\]"),
    "rank 3": ({"0": IDS[None], "1": IDS}, r"task 0 .*\[N, L\].*shape \[1, 2, 4\]"),
    "float ids": ({"0": IDS, "1": IDS.float()}, r"task 1 .*integer tensor.*float32"),
    "bool ids": ({"0": IDS, "1": IDS.bool()}, r"task 1 .*integer tensor.*bool"),
    "NaN ids": ({"0": torch.full((2, 4), float("nan")), "1": IDS}, "task 0 .*NaN or infinite"),
    "Inf mask": ({"0": IDS, "1": IDS, "1.attention_mask": MASK.float().index_fill(1, torch.tensor([0]),
                                                                                   float("inf"))},
                 "'1.attention_mask' holds NaN or infinite"),
    "zero samples": ({"0": IDS, "1": torch.zeros(0, 4, dtype=torch.long)}, "task 1 .*zero samples"),
    "zero length": ({"0": torch.zeros(2, 0, dtype=torch.long), "1": IDS}, "task 0 .*no tokens"),
    "mask shape": ({"0": IDS, "1": IDS, "0.attention_mask": MASK[:, :3]},
                   r"'0.attention_mask'.*shape \[2, 3\].*\[2, 4\]"),
    "mask values": ({"0": IDS, "1": IDS, "0.attention_mask": MASK * 2}, "only 0 .* and 1"),
    "mask empty row": ({"0": IDS, "1": IDS, "1.attention_mask": torch.tensor([[1, 1, 0, 0], [0, 0, 0, 0]])},
                       r"'1.attention_mask'.*row\(s\) 1 have no real token"),
}


@pytest.mark.parametrize("case", list(BAD_TOKEN_FILES))
@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_bad_token_files_are_refused(tmp_path, case, suffix):
    tensors, problem = BAD_TOKEN_FILES[case]
    path = _save(tensors, tmp_path / f"cal{suffix}")
    with pytest.raises(CalibrationError, match=problem) as caught:
        read_token_file(path, 2)
    assert isinstance(caught.value, UserError) and str(path) in str(caught.value)


def test_unusable_token_files_are_refused(tmp_path):
    with pytest.raises(CalibrationError, match="does not exist"):
        read_token_file(tmp_path / "absent.pt", 2)
    torch.save(IDS, tmp_path / "tensor.pt")
    with pytest.raises(CalibrationError, match=r"dict \{str: tensor\}, got Tensor"):
        read_token_file(tmp_path / "tensor.pt", 2)
    (tmp_path / "garbage.pt").write_bytes(b"not a torch file")
    with pytest.raises(CalibrationError, match="cannot be read"):
        read_token_file(tmp_path / "garbage.pt", 2)
    (tmp_path / "garbage.safetensors").write_bytes(b"\x00" * 3)
    with pytest.raises(CalibrationError, match="cannot be read"):
        read_token_file(tmp_path / "garbage.safetensors", 2)


# --------------------------------------------------------------------------------------- --calibration-text FILE

def test_text_file(folders, text_file):
    samples = read_text_file(text_file, 2, folders[0], max_length=MAX_LENGTH)
    tokenizer = _tokenizer()
    for task, texts in TEXTS.items():
        ids, mask = samples[task]
        assert ids.shape == mask.shape and ids.shape[0] == len(texts)
        assert ids.shape[1] == min(MAX_LENGTH, max(map(len, texts)))  # truncated, padded to the longest
        for row, text in enumerate(texts):
            n = int(mask[row].sum())
            assert ids[row, :n].tolist() == tokenizer(text)["input_ids"][:MAX_LENGTH]
            assert bool((mask[row, :n] == 1).all()) and bool((ids[row, n:] == 0).all())  # right padding, <pad>


def test_text_file_without_pad_token_pads_with_eos_on_the_right(tmp_path):
    folder = tmp_path / "tok"
    _tokenizer(pad=False, padding_side="left").save_pretrained(folder)
    path = _write_jsonl(tmp_path / "t.jsonl", [{"task": 0, "text": "abc"}, {"task": 0, "text": "a"}])
    ids, mask = read_text_file(path, 1, folder)[0]
    assert ids.tolist() == [[4, 5, 6], [4, 2, 2]] and mask.tolist() == [[1, 1, 1], [1, 0, 0]]


BAD_TEXT_LINES = {
    "not json": (['{"task": 0, "text": "abc"}', '{"task": 1, "text": '], "line 2 is not valid JSON"),
    "not an object": (['["abc"]'], "line 1 is not a JSON object"),
    "task too large": ([{"task": 2, "text": "abc"}], "line 1: unknown task 2.*0..1"),
    "negative task": ([{"task": -1, "text": "abc"}], "line 1: unknown task -1"),
    "task as string": ([{"task": "0", "text": "abc"}], "line 1: unknown task '0'"),
    "task as bool": ([{"task": True, "text": "abc"}], "line 1: unknown task True"),
    "task as float": ([{"task": 1.0, "text": "abc"}], "line 1: unknown task 1.0"),
    "no task": ([{"text": "abc"}], "line 1: unknown task None"),
    "no text": ([{"task": 0, "text": "a"}, {"task": 1}], 'line 2 has no "text"'),
    "empty text": ([{"task": 0, "text": ""}], 'line 1 has an empty "text"'),
    "blank text": ([{"task": 0, "text": "  \n"}], 'line 1 has an empty "text"'),
    "text not a string": ([{"task": 0, "text": 5}], 'line 1 has a "text" that is not a string'),
    "task without line": ([{"task": 0, "text": "abc"}], r"no line for task\(s\) 1"),
}


@pytest.mark.parametrize("case", list(BAD_TEXT_LINES))
def test_bad_text_files_are_refused(folders, tmp_path, case):
    lines, problem = BAD_TEXT_LINES[case]
    path = _write_jsonl(tmp_path / "t.jsonl", lines)
    with pytest.raises(CalibrationError, match=problem) as caught:
        read_text_file(path, 2, folders[0])
    assert str(path) in str(caught.value)


def test_text_file_needs_a_tokenizer(folders, tmp_path, text_file):
    with pytest.raises(CalibrationError, match=r"no tokenizer files.*--calibration FILE") as caught:
        read_text_file(text_file, 2, folders[1][0])  # a fine-tuned folder: weights and config only
    assert str(folders[1][0]) in str(caught.value) and "\n" not in str(caught.value)
    with pytest.raises(CalibrationError, match="does not exist"):
        read_text_file(tmp_path / "absent.jsonl", 2, folders[0])


# -------------------------------------------------------------------------------------------------- end to end

def _linear_weights(model: nn.Module) -> set[str]:
    return {f"{name}.weight" for name, m in model.named_modules() if isinstance(m, nn.Linear)}


def _tasks_and_samples(folders, text_file):
    pre_folder, ft_folders = folders
    pre = HFModelFolder(pre_folder)
    tasks = TaskVectors(pre, [HFModelFolder(f) for f in ft_folders], rules=rules_for(pre, pre.config))
    return tasks, read_text_file(text_file, tasks.num_tasks, pre_folder, max_length=MAX_LENGTH)


def _calibrated_merge(name, folders, model, text_file, batch_size):
    tasks, samples = _tasks_and_samples(folders, text_file)
    method = build_method(name)
    size = method.calibration.batch_size if batch_size == "method" else batch_size
    batches = lambda task: token_batches(*samples[task], size, vocab_size=VOCAB,  # noqa: E731
                                         task=tasks.names[task])
    keys = calibrate(method, tasks, model, batches, hf_forward)
    return tasks, keys, merge(method, tasks, progress=False, workers=1)


def test_regmean_end_to_end(folders, model, text_file):
    tasks, keys, result = _calibrated_merge("regmean", folders, model, text_file, "method")
    assert set(keys) == _linear_weights(model) - {"lm_head.weight"}
    assert set(result.task_vector) == set(tasks.keys)
    assert all(bool(torch.isfinite(v).all()) for v in result.task_vector.values())
    with HFModelFolder(folders[0]) as theta0:  # the model is given back with θ0's weights
        torch.testing.assert_close(model.state_dict()["model.layers.0.mlp.up_proj.weight"],
                                   theta0["model.layers.0.mlp.up_proj.weight"], rtol=0, atol=0)
    # Batching changes only round-off: the padding of each batch is left out.
    _, _, two_by_two = _calibrated_merge("regmean", folders, model, text_file, 2)
    for key in keys:
        torch.testing.assert_close(two_by_two.task_vector[key], result.task_vector[key], rtol=1e-4, atol=1e-6)


def test_the_pass_records_no_autograd_graph(folders, model, text_file):
    """The forward passes run without autograd whatever the caller's forward does (a CLIP encoder's parameters
    require gradients: with autograd on, every block's activations would stay alive until the pass ends)."""
    tasks, samples = _tasks_and_samples(folders, text_file)
    grad_enabled: list[bool] = []

    def forward(module, inputs):
        grad_enabled.append(torch.is_grad_enabled())
        return module(**inputs, use_cache=False)

    calibrate(build_method("esm"), tasks, model,
              lambda task: token_batches(*samples[task], None, vocab_size=VOCAB, task=tasks.names[task]), forward)
    assert grad_enabled == [False, False]


def test_esm_end_to_end(folders, model, text_file):
    tasks, keys, result = _calibrated_merge("esm", folders, model, text_file, None)
    projections = re.compile(r"^model\.layers\.\d+\.(self_attn\.[qkvo]_proj|mlp\.(gate|up|down)_proj)\.weight$")
    assert set(keys) == {key for key in tasks.keys if projections.match(key)} and len(keys) == 2 * 7
    assert set(result.task_vector) == set(tasks.keys)
    assert all(bool(torch.isfinite(v).all()) for v in result.task_vector.values())


def test_esm_needs_one_batch_per_task(folders, model, text_file):
    with pytest.raises(CalibrationError, match="one batch"):
        _calibrated_merge("esm", folders, model, text_file, 2)


# --------------------------------------------------------------------------------------- tsvmerge merge (folders)

def _cli(folders, method: str, out, *extra: str) -> int:
    from tsvmerge.cli import main

    pre, fts = folders
    return main(["merge", "--quiet", "--method", method, "--pretrained", str(pre), "--finetuned", *map(str, fts),
                 "--out", str(out), *extra])


@pytest.mark.parametrize("method", ["esm", "regmean"])
def test_merge_command_with_texts_writes_a_loadable_folder(folders, text_file, tmp_path, capsys, method):
    out = tmp_path / method
    assert _cli(folders, method, out, "--calibration-text", str(text_file)) == 0
    printed = capsys.readouterr().out
    assert "calibration: " in printed and "samples per task" in printed
    merged = transformers.AutoModelForCausalLM.from_pretrained(out)
    assert all(bool(torch.isfinite(v).all()) for v in merged.state_dict().values())


def test_merge_command_with_token_ids_equals_the_same_texts(folders, text_file, tmp_path):
    """The token-id file route and the text route give the same merge when they hold the same tokens."""
    data = read_text_file(text_file, 2, folders[0])
    tokens = tmp_path / "tokens.pt"
    torch.save({**{str(t): ids for t, (ids, _) in data.items()},
                **{f"{t}.attention_mask": mask for t, (_, mask) in data.items()}}, tokens)
    assert _cli(folders, "regmean", tmp_path / "a", "--calibration", str(tokens)) == 0
    assert _cli(folders, "regmean", tmp_path / "b", "--calibration-text", str(text_file)) == 0
    a = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "a").state_dict()
    b = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "b").state_dict()
    for key in a:
        torch.testing.assert_close(a[key], b[key])


def test_merge_command_refuses_bad_calibration_inputs(folders, tmp_path, capsys):
    bad = _write_jsonl(tmp_path / "bad.jsonl", [{"task": 5, "text": "hello"}])
    out = tmp_path / "out"
    assert _cli(folders, "esm", out, "--calibration-text", str(bad)) == 2
    err = capsys.readouterr().err
    assert "task" in err and "Traceback" not in err
    assert _cli(folders, "TSVM", out, "--calibration-text", str(bad)) == 2
    assert "would ignore it" in capsys.readouterr().err
    assert _cli(folders, "esm", out) == 2
    assert "merges with data" in capsys.readouterr().err
    assert not out.exists()
