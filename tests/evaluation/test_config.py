"""Configuration: the Hydra files, and their validation before any work (messages list the valid choices)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from tsvmerge.config import (
    MODEL_KEYS,
    TOP_LEVEL_KEYS,
    WANDB_KEYS,
    ConfigError,
    check_overrides,
    load_model_spec,
    method_config_keys,
    settings_from_config,
)
from tsvmerge.data import BENCHMARK_DATASETS
from tsvmerge.merging import available_methods, method_parameters

CONFIG = Path(__file__).resolve().parents[2] / "config"


def _compose(*overrides: str):
    with initialize_config_dir(config_dir=str(CONFIG), version_base=None):
        return compose(config_name="config", overrides=list(overrides))


def test_config_files_match_the_schema() -> None:
    primary = OmegaConf.load(CONFIG / "config.yaml")
    assert set(primary) - {"defaults", "hydra"} == set(TOP_LEVEL_KEYS) - {"model", "method"}
    assert set(primary["wandb"]) == set(WANDB_KEYS)
    assert primary["wandb"]["mode"] == "disabled"
    assert {p.stem for p in (CONFIG / "method").glob("*.yaml")} == set(available_methods())
    for path in (CONFIG / "method").glob("*.yaml"):
        section = OmegaConf.load(path)
        assert section["name"] == path.stem
        assert set(section) <= set(method_config_keys(path.stem)), path
        assert set(method_parameters(path.stem)) <= set(section), f"{path} lists every engine parameter"
    for path in (CONFIG / "model").glob("*.yaml"):
        assert set(OmegaConf.load(path)) == set(MODEL_KEYS)


def test_defaults() -> None:
    settings = settings_from_config(_compose())
    assert settings.model.name == "ViT-B-32" and settings.model.quick_gelu and settings.model.pretrained == "openai"
    assert settings.method == "sum" and settings.method_params == {"k": 100}
    assert settings.datasets == list(BENCHMARK_DATASETS[:8]) and settings.benchmark_prefix
    assert settings.n_eval_points == 31 and settings.specify_lambda is None
    assert settings.wandb.mode == "disabled" and settings.wandb.group == "ViT-B-32"
    assert settings.ft_accuracies == Path("results/single_task/ViT-B-32/nonlinear_ft_accuracies.json")


@pytest.mark.parametrize("overrides,check", [
    (["num_tasks=14"], lambda s: s.datasets == list(BENCHMARK_DATASETS[:14])),
    (["DATASETS=[MNIST,Cars]"], lambda s: s.datasets == ["MNIST", "Cars"] and not s.benchmark_prefix),
    (["method=TSVM", "specify_lambda=1.0"], lambda s: s.specify_lambda == 1.0 and s.method_full_name == "TSVM"),
    (["method=ties", "method.k=30"], lambda s: s.method_params == {"k": 30, "agg": "mean"}
     and s.method_full_name == "ties_k30_mean"),
    (["method=tall_mask", "method.load_mask=True"], lambda s: s.load_mask and s.method_full_name == "tall_mask"),
    (["method=tall_mask", "method.use_ties=true"], lambda s: s.method_full_name == "tall_mask_use_ties_sum"),
    (["method=consensus", "method.prun_thre_k=3"], lambda s: s.method_params["prun_thre_k"] == 3
     and s.method_full_name == "consensus_k3"),
    (["model=ViT-L-14", "wandb.mode=offline"], lambda s: s.model.name == "ViT-L-14" and s.wandb.mode == "offline"),
    (["specify_lambda=None"], lambda s: s.specify_lambda is None),
])
def test_accepted(overrides: list[str], check) -> None:
    assert check(settings_from_config(_compose(*overrides)))


@pytest.mark.parametrize("overrides,expected", [
    (["num_tasks=0"], "num_tasks must be an integer in 1..20"),
    (["num_tasks=21"], "num_tasks must be an integer in 1..20"),
    (["DATASETS=[MNIST,Foo]"], "unknown dataset Foo; valid dataset names: Cars, DTD"),
    (["DATASETS=[MNISTVal]"], "remove 'Val'"),
    (["+foo=1"], "unknown top-level config key foo; valid top-level config keys: model, method, num_tasks"),
    (["method=TSVM", "+method.k=3"], "unknown method TSVM key k; valid method TSVM keys: name, full_name, svd"),
    (["method=ties", "method.agg=median"], "is not one of mean, sum, max"),
    (["precision=fp8"], "precision='fp8' is not valid; choose one of: bf16, fp16, fp32"),
    (["eval_cache=ram"], "choose one of: memory, disk, none"),
    (["wandb.mode=on"], "choose one of: disabled, offline, online"),
    (["n_eval_points=1"], "n_eval_points must be at least 2"),
    (["specify_lambda=abc"], "specify_lambda must be a number"),
    (["+method.load_mask=true"], "unknown method sum key load_mask"),
])
def test_rejected(overrides: list[str], expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        settings_from_config(_compose(*overrides))
    assert expected in str(info.value)


def test_unknown_method_name_lists_the_methods() -> None:
    cfg = _compose()
    cfg.method.name = "foo"
    with pytest.raises(ConfigError, match="unknown method 'foo'; available methods: TSVC, TSVM"):
        settings_from_config(cfg)


@pytest.mark.parametrize("argv,expected", [
    (["method=TSVM", "method.k=5"], "unknown key 'method.k' for method=TSVM; valid method keys: name, full_name, "
                                    "svd, report_sti"),
    (["method=foo"], "unknown method 'foo'; available: average, consensus"),
    (["model=RN50"], "unknown model 'RN50'; available: demo, ViT-B-16, ViT-B-32, ViT-L-14"),
    (["foo=1"], "unknown config key 'foo'; valid keys: model, method, num_tasks"),
    (["wandb.x=1"], "unknown config key 'wandb.x'; valid wandb keys: mode, project, entity, group"),
    (["method.agg=sum"], "unknown key 'method.agg' for method=sum; valid method keys: name, full_name, k"),
])
def test_command_line_check(argv: list[str], expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        check_overrides(argv, CONFIG)
    assert expected in str(info.value)


@pytest.mark.parametrize("argv", [
    ["model=ViT-B-32", "method=TSVM", "num_tasks=14", "specify_lambda=1.0"],
    ["method=ties", "method.k=20", "DATASETS=[MNIST,Cars]"],
    ["method=tall_mask", "method.load_mask=True"],
    ["method=consensus", "method.prun_thre_k=2"],
    ["+anything=1", "~wandb", "hydra.run.dir=/tmp/x", "hydra.job.chdir=true"],
    ["--multirun", "method=sum,ties", "method.k=20"],
    ["-cd", "/nonexistent", "--cfg", "job", "method=TSVM"],
])
def test_command_line_accepted(argv: list[str]) -> None:
    check_overrides(argv, CONFIG)


def test_extra_config_dir_models(tmp_path: Path) -> None:
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "mine.yaml").write_text("name: mine\narch: ViT-B-32\nquick_gelu: false\npretrained: null\n"
                                                 "open_clip_config: null\ncache_dir: null\n")
    check_overrides(["--config-dir", str(tmp_path), "model=mine", "model.pretrained=/w.pt"], CONFIG)
    with pytest.raises(ConfigError, match="valid model keys: name, arch"):
        check_overrides(["--config-dir", str(tmp_path), "model=mine", "model.foo=1"], CONFIG)
    spec = load_model_spec("mine", [tmp_path, CONFIG])
    assert spec.name == "mine" and spec.architecture == "ViT-B-32" and spec.pretrained is None
    with pytest.raises(ConfigError, match="available: demo, mine, ViT-B-16"):
        load_model_spec("nope", [tmp_path, CONFIG])
