"""`tsvmerge merge` on bad inputs: exit 2, one message naming the input, no traceback, nothing written, inputs intact.

Every case builds its inputs in ``ckpts.root`` and writes (or would write) its output in ``tmp_path / "out"``; the
whole ``tmp_path`` is hashed before and after, so a partial, temporary or modified file anywhere fails the case.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import tsvmerge.cli as cli
import tsvmerge.recipes.merge as merge_recipe
from tests.reliability.contract import (
    Checkpoints,
    assert_all_finite,
    assert_rejected,
    malicious_checkpoint,
    no_leftovers,
    snapshot,
)

LN = "model.visual.ln_post.weight"
IN_PROJ = "model.visual.transformer.resblocks.0.attn.in_proj_weight"
TOKENS = "model.token_embedding.weight"

Case = Callable[[Checkpoints, Path], tuple[list[str], list[str]]]


def _with(state: dict, key: str, value: float) -> dict:
    changed = {k: v.clone() for k, v in state.items()}
    changed[key].view(-1)[0] = value
    return changed


# ------------------------------------------------------------------------------------- the cases: argv, names

def nan_finetuned_sum(c: Checkpoints, out: Path):
    bad = c.write("nan.pt", _with(c.fts[0], LN, float("nan")))
    return c.merge_argv("sum", out / "m.pt", finetuned=[bad, *c.finetuned[1:]]), [str(bad), LN]


def inf_finetuned_ties(c: Checkpoints, out: Path):
    bad = c.write("inf.pt", _with(c.fts[1], IN_PROJ, float("inf")))
    return c.merge_argv("ties", out / "m.pt", finetuned=[c.finetuned[0], bad]), [str(bad), IN_PROJ]


def nan_pretrained_untouched_entry(c: Checkpoints, out: Path):
    bad = c.write("zs_nan.pt", _with(c.pre, TOKENS, float("nan")))  # an entry no task changes
    return c.merge_argv("sum", out / "m.pt", pretrained=bad), [str(bad), TOKENS]


def alpha_nan(c: Checkpoints, out: Path):
    return c.merge_argv("sum", out / "m.pt", "--alpha", "nan"), ["--alpha"]


def alpha_inf(c: Checkpoints, out: Path):
    return c.merge_argv("TSVM", out / "m.pt", "--alpha=-inf"), ["--alpha"]


def alpha_overflowing_float16(c: Checkpoints, out: Path):
    half = c.write("zs16.pt", {k: v.half() if v.is_floating_point() else v for k, v in c.pre.items()})
    return c.merge_argv("sum", out / "m.pt", "--alpha", "1e6", pretrained=half), ["α=1e+06", "smaller α"]


def out_is_an_input(c: Checkpoints, out: Path):
    return c.merge_argv("sum", c.finetuned[1]), ["--out", str(c.finetuned[1])]


def out_is_a_symlink_to_an_input(c: Checkpoints, out: Path):
    out.mkdir()
    (out / "link.pt").symlink_to(c.pretrained)
    return c.merge_argv("sum", out / "link.pt"), ["--out", str(out / "link.pt"), str(c.pretrained)]


def out_is_a_hard_link_to_an_input(c: Checkpoints, out: Path):
    out.mkdir()
    os.link(c.finetuned[0], out / "hard.pt")
    return c.merge_argv("ties", out / "hard.pt"), ["--out", str(out / "hard.pt"), str(c.finetuned[0])]


def empty_checkpoint(c: Checkpoints, out: Path):
    bad = c.root / "empty.pt"
    bad.write_bytes(b"")
    return c.merge_argv("sum", out / "m.pt", finetuned=[bad, c.finetuned[0]]), [str(bad), "empty"]


def random_bytes_checkpoint(c: Checkpoints, out: Path):
    bad = c.root / "random.pt"
    bad.write_bytes(bytes(range(7, 256)) * 3)
    return c.merge_argv("sum", out / "m.pt", finetuned=[c.finetuned[0], bad]), [str(bad)]


def truncated_checkpoint(c: Checkpoints, out: Path):
    bad = c.root / "truncated.pt"
    data = c.finetuned[2].read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    return c.merge_argv("TSVM", out / "m.pt", finetuned=[*c.finetuned[:2], bad]), [str(bad), "truncated"]


def corrupt_safetensors_header(c: Checkpoints, out: Path):
    good = c.root / "ft.safetensors"
    save_file({k: v.contiguous() for k, v in c.fts[0].items()}, good)
    bad = c.root / "corrupt.safetensors"
    bad.write_bytes(b"\xff" * 8 + good.read_bytes()[8:])
    return c.merge_argv("sum", out / "m.pt", finetuned=[bad, c.finetuned[1]]), [str(bad)]


def truncated_safetensors(c: Checkpoints, out: Path):
    good = c.root / "ft.safetensors"
    save_file({k: v.contiguous() for k, v in c.fts[0].items()}, good)
    bad = c.root / "short.safetensors"
    bad.write_bytes(good.read_bytes()[:-64])
    return c.merge_argv("sum", out / "m.pt", finetuned=[bad, c.finetuned[1]]), [str(bad)]


def malicious_pickle_zip(c: Checkpoints, out: Path):
    bad = malicious_checkpoint(c.root / "evil.pt", out.parent / "pwned")
    return c.merge_argv("sum", out / "m.pt", finetuned=[bad, c.finetuned[1]]), [str(bad), "refusing"]


def malicious_plain_pickle(c: Checkpoints, out: Path):
    bad = malicious_checkpoint(c.root / "evil.pkl", out.parent / "pwned", writer="pickle.dump")
    return c.merge_argv("TSVM", out / "m.pt", pretrained=bad), [str(bad), "refusing"]


def out_under_a_file(c: Checkpoints, out: Path):
    out.mkdir()
    (out / "plain.txt").write_text("x")
    return c.merge_argv("sum", out / "plain.txt" / "m.pt"), ["--out", str(out / "plain.txt")]


def out_is_an_existing_directory(c: Checkpoints, out: Path):
    out.mkdir()
    return c.merge_argv("sum", out), ["--out", str(out), "directory"]


def out_in_an_unwritable_directory(c: Checkpoints, out: Path):
    if os.geteuid() == 0:  # root writes anywhere; /proc refuses new files even to root
        return c.merge_argv("sum", "/proc/tsvmerge-test/m.pt"), ["--out", "/proc/tsvmerge-test/m.pt"]
    out.mkdir()
    out.chmod(0o500)
    return c.merge_argv("sum", out / "m.pt"), ["--out", str(out / "m.pt")]


def file_out_for_task_specific_method(c: Checkpoints, out: Path):
    return c.merge_argv("TSVC", out / "m.pt"), ["--out", "folder"]


def folder_out_holding_other_files(c: Checkpoints, out: Path):
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    return c.merge_argv("TSVC", out), ["--out", str(out), "notes.txt"]


def folder_out_holding_an_input(c: Checkpoints, out: Path):
    return c.merge_argv("tall_mask", c.root), ["--out", str(c.root)]


def save_masks_with_tsvc(c: Checkpoints, out: Path):
    return c.merge_argv("TSVC", out / "tsvc", "--save-masks", str(out / "m.npy")), ["--save-masks", "TSVC"]


def save_masks_with_sum(c: Checkpoints, out: Path):
    return c.merge_argv("sum", out / "m.pt", "--save-masks", str(out / "m.npy")), ["--save-masks", "sum"]


def save_masks_inside_the_out_folder(c: Checkpoints, out: Path):
    argv = c.merge_argv("tall_mask", out / "tall", "--save-masks", str(out / "tall" / "m.npy"))
    return argv, ["--save-masks", "inside"]


def sti_out_without_report_sti(c: Checkpoints, out: Path):
    return c.merge_argv("TSVM", out / "m.pt", "--sti-out", str(out / "sti.json")), ["--sti-out", "--report-sti"]


def lambda_with_ties(c: Checkpoints, out: Path):
    return c.merge_argv("ties", out / "m.pt", "--lambda", "0.4"), ["--lambda", "ties"]


def lambda_with_mag_masking(c: Checkpoints, out: Path):
    return c.merge_argv("mag_masking", out / "mm", "--lambda", "0.4"), ["--lambda", "mag_masking"]


def lambda_off_the_grid(c: Checkpoints, out: Path):
    return c.merge_argv("tall_mask", out / "tall", "--lambda", "0.33"), ["--lambda 0.33"]


def consensus_threshold_above_task_count(c: Checkpoints, out: Path):
    return c.merge_argv("consensus", out / "m.pt", "--set", "tall_lambda=0.4", "prun_thre_k=4"), ["prun_thre_k=4"]


def consensus_threshold_zero(c: Checkpoints, out: Path):
    return c.merge_argv("consensus", out / "m.pt", "--set", "tall_lambda=0.4", "prun_thre_k=0"), ["prun_thre_k=0"]


def consensus_with_one_model(c: Checkpoints, out: Path):
    argv = c.merge_argv("consensus", out / "m.pt", "--set", "tall_lambda=0.4", finetuned=c.finetuned[:1])
    return argv, ["prun_thre_k=2", "1 fine-tuned"]


def consensus_negative_lambda(c: Checkpoints, out: Path):
    return c.merge_argv("consensus", out / "m.pt", "--set", "tall_lambda=-0.2"), ["tall_lambda=-0.2"]


def consensus_nan_lambda(c: Checkpoints, out: Path):
    return c.merge_argv("consensus", out / "m.pt", "--set", "tall_lambda=nan"), ["tall_lambda=nan"]


def duplicate_finetuned(c: Checkpoints, out: Path):
    argv = c.merge_argv("sum", out / "m.pt", finetuned=[c.finetuned[0], c.finetuned[1], c.finetuned[0]])
    return argv, [str(c.finetuned[0]), "twice"]


def duplicate_finetuned_through_a_link(c: Checkpoints, out: Path):
    link = c.root / "alias.pt"
    link.symlink_to(c.finetuned[1])
    return c.merge_argv("TSVM", out / "m.pt", finetuned=[c.finetuned[1], link]), [str(link), "twice"]


def pretrained_given_as_finetuned(c: Checkpoints, out: Path):
    return c.merge_argv("sum", out / "m.pt", finetuned=[c.pretrained, c.finetuned[0]]), [str(c.pretrained)]


def mismatched_shapes(c: Checkpoints, out: Path):
    other = dict(c.fts[1])
    other[IN_PROJ] = torch.zeros(12, 8)
    bad = c.write("wide.pt", other)
    argv = c.merge_argv("sum", out / "m.pt", finetuned=[c.finetuned[0], bad])
    return argv, [str(bad), str(c.pretrained), IN_PROJ, "[12, 8]", "[24, 8]"]


def mismatched_keys(c: Checkpoints, out: Path):
    other = {k: v for k, v in c.fts[2].items() if k != LN}
    bad = c.write("fewer.pt", other)
    return c.merge_argv("ties", out / "m.pt", finetuned=[bad, c.finetuned[0]]), [str(bad), LN]


def unknown_method_parameter(c: Checkpoints, out: Path):
    return c.merge_argv("ties", out / "m.pt", "--set", "topk=20"), ["topk"]


def malformed_set(c: Checkpoints, out: Path):
    return c.merge_argv("ties", out / "m.pt", "--set", "k"), ["--set", "'k'"]


def names_count_mismatch(c: Checkpoints, out: Path):
    return c.merge_argv("tall_mask", out / "tall", "--names", "A", "B"), ["--names"]


def missing_checkpoint(c: Checkpoints, out: Path):
    gone = c.root / "gone.pt"
    return c.merge_argv("sum", out / "m.pt", finetuned=[gone, c.finetuned[0]]), [str(gone)]


def k_case(method: str, k: str) -> Case:
    def case(c: Checkpoints, out: Path):
        target = out / ("mm" if method == "mag_masking" else "m.pt")
        return c.merge_argv(method, target, "--set", f"k={k}"), [f"k={float(k):g}" if k != "nan" else "k=nan"]
    case.__name__ = f"k_{k}_{method}"
    return case


CASES: list[Case] = [
    nan_finetuned_sum, inf_finetuned_ties, nan_pretrained_untouched_entry, alpha_nan, alpha_inf,
    alpha_overflowing_float16, out_is_an_input, out_is_a_symlink_to_an_input, out_is_a_hard_link_to_an_input,
    empty_checkpoint, random_bytes_checkpoint, truncated_checkpoint, corrupt_safetensors_header, truncated_safetensors,
    malicious_pickle_zip, malicious_plain_pickle, out_under_a_file, out_is_an_existing_directory,
    out_in_an_unwritable_directory, file_out_for_task_specific_method, folder_out_holding_other_files,
    folder_out_holding_an_input, save_masks_with_tsvc, save_masks_with_sum, save_masks_inside_the_out_folder,
    sti_out_without_report_sti, lambda_with_ties, lambda_with_mag_masking, lambda_off_the_grid,
    consensus_threshold_above_task_count, consensus_threshold_zero, consensus_with_one_model,
    consensus_negative_lambda, consensus_nan_lambda, duplicate_finetuned, duplicate_finetuned_through_a_link,
    pretrained_given_as_finetuned, mismatched_shapes, mismatched_keys, unknown_method_parameter, malformed_set,
    names_count_mismatch, missing_checkpoint,
    *(k_case(m, k) for m in ("sum", "average", "ties", "mag_masking") for k in ("0", "150")),
    k_case("ties", "-5.0"), k_case("sum", "nan"),
]

#: Cases found by looking at the command line and the paths alone: no checkpoint is read and no merge starts.
BEFORE_ANY_WORK = {
    alpha_nan, alpha_inf, out_is_an_input, out_is_a_symlink_to_an_input, out_is_a_hard_link_to_an_input,
    out_under_a_file, out_is_an_existing_directory, out_in_an_unwritable_directory, file_out_for_task_specific_method,
    folder_out_holding_other_files, folder_out_holding_an_input, save_masks_with_tsvc, save_masks_with_sum,
    save_masks_inside_the_out_folder, sti_out_without_report_sti, lambda_with_ties, lambda_with_mag_masking,
    lambda_off_the_grid, consensus_threshold_zero, consensus_negative_lambda, consensus_nan_lambda,
    duplicate_finetuned, duplicate_finetuned_through_a_link, pretrained_given_as_finetuned, unknown_method_parameter,
    malformed_set, names_count_mismatch,
}


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.__name__)
def test_bad_input_is_answered_cleanly(case: Case, ckpts: Checkpoints, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "out"
    argv, names = case(ckpts, out)
    if case in BEFORE_ANY_WORK:
        def no_work(*args, **kwargs):
            raise AssertionError("work started although the command line is invalid")
        monkeypatch.setattr(merge_recipe, "open_state_dict", no_work)
        monkeypatch.setattr(merge_recipe, "merge", no_work)
    before = snapshot(tmp_path)
    code = cli.main(argv)
    captured = capsys.readouterr()
    assert_rejected(code, captured.out, captured.err, "tsvmerge", *names)
    assert snapshot(tmp_path) == before, "a file was written, left behind or changed"
    assert not (tmp_path / "pwned").exists(), "the malicious payload ran"


# ------------------------------------------------------------------------------------- failures while writing

@pytest.mark.parametrize("fmt", [".safetensors", ".pt"])
def test_disk_full_while_writing(fmt: str, ckpts: Checkpoints, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                 capsys: pytest.CaptureFixture) -> None:
    """The writer fails half-way (ENOSPC): one line naming --out and the reason, no temporary file left."""
    import tsvmerge.checkpoints.state_dict as state_dict

    def full_disk(_obj, path, *args, **kwargs):
        Path(path).write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    if fmt == ".safetensors":
        monkeypatch.setattr("safetensors.torch.save_file", full_disk)
    else:
        monkeypatch.setattr(state_dict.torch, "save", full_disk)
    out = tmp_path / "out"
    out.mkdir()
    before = snapshot(tmp_path)
    code = cli.main(ckpts.merge_argv("sum", out / f"merged{fmt}"))
    captured = capsys.readouterr()
    line = assert_rejected(code, captured.out, captured.err, "tsvmerge", str(out / f"merged{fmt}"))
    assert "No space left on device" in line and "free some space" in line
    assert snapshot(tmp_path) == before


def test_torch_writer_failure_names_the_output(ckpts: Checkpoints, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture) -> None:
    """torch.save reports a failed write as a RuntimeError; it still ends in one line naming --out."""
    import tsvmerge.checkpoints.state_dict as state_dict

    def broken(_obj, path, *args, **kwargs):
        Path(path).write_bytes(b"partial")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")

    monkeypatch.setattr(state_dict.torch, "save", broken)
    before = snapshot(tmp_path)
    code = cli.main(ckpts.merge_argv("ties", tmp_path / "merged.pt"))
    captured = capsys.readouterr()
    assert_rejected(code, captured.out, captured.err, "tsvmerge", str(tmp_path / "merged.pt"), "writing failed")
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("interruption, status", [(KeyboardInterrupt, 130), (None, 143)])
def test_interrupted_folder_output_appears_complete_or_not_at_all(
        interruption, status: int, ckpts: Checkpoints, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture) -> None:
    """Interrupted after the first task's model: no --out folder, no temporary folder; a previous one is intact."""
    from tsvmerge.utils.entry_point import Terminated

    out = tmp_path / "tsvc"
    assert cli.main(ckpts.merge_argv("TSVC", out, finetuned=ckpts.finetuned[:2])) == 0  # a previous run
    real_save = merge_recipe.save_state_dict
    calls = []

    def interrupted_save(state, path):
        calls.append(path)
        if len(calls) == 2:
            raise (interruption or Terminated)()
        return real_save(state, path)

    monkeypatch.setattr(merge_recipe, "save_state_dict", interrupted_save)
    before = snapshot(tmp_path)
    code = cli.main(ckpts.merge_argv("TSVC", out))
    assert code == status
    assert "Traceback" not in capsys.readouterr().err
    assert snapshot(tmp_path) == before
    assert no_leftovers(tmp_path) == []


# ------------------------------------------------------------------------------------- what must keep working

def test_mixed_precision_inputs_merge_in_float32_and_keep_the_base_dtype(ckpts: Checkpoints, tmp_path: Path) -> None:
    """bfloat16 θ0 with float16 / float32 fine-tuned models: merged in float32, written in θ0's dtypes."""
    bf16 = {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in ckpts.pre.items()}
    half = {k: v.half() if v.is_floating_point() else v for k, v in ckpts.fts[1].items()}
    pre = ckpts.write("zs_bf16.pt", bf16)
    ft1 = ckpts.write("ft1_fp16.pt", half)
    for method in ("sum", "ties", "TSVM"):
        out = tmp_path / f"{method}.safetensors"
        argv = ckpts.merge_argv(method, out, "--alpha", "0.5", pretrained=pre,
                                finetuned=[ckpts.finetuned[0], ft1, ckpts.finetuned[2]])
        assert cli.main(argv) == 0
        assert_all_finite(out)
        from safetensors.torch import load_file

        merged = load_file(out)
        assert {k: v.dtype for k, v in merged.items()} == {k: v.dtype for k, v in bf16.items()}
        if method == "sum":
            taus = [ckpts.fts[0][IN_PROJ] - bf16[IN_PROJ].float(), half[IN_PROJ].float() - bf16[IN_PROJ].float(),
                    ckpts.fts[2][IN_PROJ] - bf16[IN_PROJ].float()]
            expected = (bf16[IN_PROJ].float() + 0.5 * sum(taus)).to(torch.bfloat16)
            assert torch.equal(merged[IN_PROJ], expected)


def test_folder_output_replaces_a_previous_run(ckpts: Checkpoints, tmp_path: Path) -> None:
    out = tmp_path / "tsvc"
    assert cli.main(ckpts.merge_argv("mag_masking", out, finetuned=ckpts.finetuned[:2])) == 0
    assert cli.main(ckpts.merge_argv("TSVC", out)) == 0
    assert sorted(p.name for p in out.iterdir()) == ["task0.pt", "task1.pt", "task2.pt", "tsvmerge_manifest.json"]
    assert_all_finite(out)
    assert no_leftovers(tmp_path) == []
