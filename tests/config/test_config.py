"""Configuration: the schema behind the YAML files, Hydra's composition, and every check before any work."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from tsvmerge.config import ConfigError, check_command_line, compose_config
from tsvmerge.evaluation.run_settings import settings_from_config
from tsvmerge.config.schema import RunSchema
from tsvmerge.merging.method_config import method_choice
from tsvmerge.recipes.configs import config_source
from tsvmerge.config.store import PRIMARY_SCHEMAS
from tsvmerge.data import BENCHMARK_DATASETS
from tsvmerge.merging import available_methods, method_parameters

CONFIG = Path(__file__).resolve().parents[2] / "config"
SOURCE = config_source(CONFIG)


def _settings(*overrides: str):
    return settings_from_config(compose_config(SOURCE, "config", list(overrides)))


def test_yaml_files_hold_no_defaults_of_their_own() -> None:
    """Types and defaults live in the schema: the method and analysis files only name theirs."""
    assert {p.stem for p in (CONFIG / "method").glob("*.yaml")} == set(available_methods())
    for group in ("method", "analysis"):
        for path in (CONFIG / group).glob("*.yaml"):
            data = OmegaConf.to_container(OmegaConf.load(path))
            assert data == {"defaults": [f"/schema/{group}/{path.stem}@_here_", "_self_"]}, path
    for name in ("config", "analyze", "finetune", "eval_single_task", "demo", "report"):
        data = OmegaConf.to_container(OmegaConf.load(CONFIG / f"{name}.yaml"))
        assert set(data) <= {"defaults", "hydra"}, name
        assert data["defaults"][0] in PRIMARY_SCHEMAS, name


@pytest.mark.parametrize("name", ["config", "analyze", "finetune", "eval_single_task", "demo", "report"])
def test_every_primary_config_composes(name: str) -> None:
    cfg = compose_config(SOURCE, name)
    assert "hydra" not in cfg


def test_defaults() -> None:
    settings = _settings()
    assert settings.model.name == "ViT-B-32" and settings.model.quick_gelu and settings.model.pretrained == "openai"
    assert settings.method == "sum" and settings.method_params == {"k": 100.0}
    assert settings.method_full_name == "sum_k100"
    assert settings.datasets == list(BENCHMARK_DATASETS[:8]) and settings.benchmark_prefix
    assert settings.n_eval_points == 31 and settings.specify_lambda is None
    assert settings.precision == "bf16" and settings.eval_cache == "memory"
    assert settings.wandb.mode == "disabled" and settings.wandb.group == "ViT-B-32"
    assert settings.ft_accuracies == Path("results/single_task/ViT-B-32/nonlinear_ft_accuracies.json")
    defaults = {f.name: f.default for f in dataclasses.fields(RunSchema)}
    assert settings.n_eval_points == defaults["n_eval_points"] and settings.batch_size == defaults["batch_size"]


@pytest.mark.parametrize("name", sorted(method_parameters("TSVM")) and available_methods())
def test_every_method_composes_with_its_parameters(name: str) -> None:
    settings = _settings(f"method={name}", "method.full_name=x" if name == "sum" else "progress=true")
    assert settings.method == name
    assert set(settings.method_params) == set(method_parameters(name))


@pytest.mark.parametrize("overrides,check", [
    (["num_tasks=14"], lambda s: s.datasets == list(BENCHMARK_DATASETS[:14])),
    (["DATASETS=[MNIST,Cars]"], lambda s: s.datasets == ["MNIST", "Cars"] and not s.benchmark_prefix),
    (["method=TSVM", "specify_lambda=1.0"], lambda s: s.specify_lambda == 1.0 and s.method_full_name == "TSVM"),
    (["method=ties", "method.k=30"], lambda s: s.method_params == {"k": 30, "agg": "mean"}
     and s.method_full_name == "ties_k30_mean"),
    (["method=tall_mask", "method.load_mask=True"], lambda s: s.method_params["load_mask"] is True
     and s.method_full_name == "tall_mask"),
    (["method=tall_mask", "method.use_ties=true"], lambda s: s.method_full_name == "tall_mask_use_ties_sum"),
    (["method=consensus", "method.prun_thre_k=3"], lambda s: s.method_params["prun_thre_k"] == 3
     and s.method_full_name == "consensus_k3"),
    (["model=ViT-L-14", "wandb.mode=offline"], lambda s: s.model.name == "ViT-L-14" and s.wandb.mode == "offline"),
    (["specify_lambda=null"], lambda s: s.specify_lambda is None),
    (["precision=fp16", "eval_cache=disk"], lambda s: s.precision == "fp16" and s.eval_cache == "disk"),
    # Entry-rule overrides are not method parameters, and runs with other rules get their own result file.
    (["method=TSVM", r"method.average_keys='mlp\.c_proj'"], lambda s: s.average_keys == r"mlp\.c_proj"
     and s.svd_keys is None and "average_keys" not in s.method_params
     and s.method_full_name.startswith("TSVM_keys") and s.method_full_name != "TSVM"),
    (["method=TSVM", "method.svd_keys=attn", "method.full_name=mine"], lambda s: s.svd_keys == "attn"
     and s.method_full_name == "mine"),
])
def test_accepted(overrides: list[str], check) -> None:
    assert check(_settings(*overrides))


@pytest.mark.parametrize("overrides,expected", [
    (["num_tasks=0"], "num_tasks must be an integer in 1..20"),
    (["method=TSVM", "method.svd_keys='('"], "method TSVM: --svd-keys '(' is not a valid regular expression"),
    (["num_tasks=21"], "num_tasks must be an integer in 1..20"),
    (["num_tasks=abc"], "num_tasks: Value 'abc' of type 'str' could not be converted to Integer"),
    (["DATASETS=[MNIST,Foo]"], "unknown dataset Foo; valid dataset names: Cars, DTD"),
    (["DATASETS=[MNISTVal]"], "remove 'Val'"),
    (["DATASETS=[]"], "DATASETS is empty"),
    (["+foo=1"], "unknown top-level config key foo; valid top-level config keys: model, method, num_tasks"),
    (["foo=1"], "unknown config key 'foo'; valid keys: model, method, num_tasks"),
    (["wandb.x=1"], "unknown config key 'wandb.x'; valid wandb keys: mode, project, entity, group"),
    (["method=TSVM", "+method.k=3"], "unknown method TSVM key k; valid method TSVM keys: name, full_name, svd_keys, "
                                     "average_keys, svd"),
    (["method=TSVM", "method.k=3"], "unknown key 'method.k' for method=TSVM; valid method keys: "
                                    "name, full_name, svd_keys, average_keys, svd, report_sti"),
    (["method=ties", "method.agg=median"], "agg='median' is not one of mean, sum, max"),
    (["method=ties", "method.k=abc"], "method.k: Value 'abc' of type 'str' could not be converted to Float"),
    (["method=TSVM", "method.svd=magic"], "svd='magic' is not one of exact, full, randomized"),
    (["method=foo"], "unknown method 'foo'; available: average, cart, consensus"),
    (["model=RN50"], "unknown model 'RN50'; available: demo, ViT-B-16, ViT-B-32, ViT-L-14"),
    (["precision=fp8"], "precision: Invalid value 'fp8', expected one of [bf16, fp16, fp32]"),
    (["eval_cache=ram"], "expected one of [memory, disk, none]"),
    (["wandb.mode=on"], "expected one of [disabled, offline, online]"),
    (["n_eval_points=1"], "n_eval_points must be at least 2"),
    (["batch_size=0"], "batch_size must be at least 1"),
    (["specify_lambda=abc"], "specify_lambda: Value 'abc' of type 'str' could not be converted to Float"),
    (["specify_lambda=nan"], "specify_lambda must be a positive finite number"),
    (["specify_lambda=inf"], "specify_lambda must be a positive finite number"),
    (["specify_lambda=-1"], "specify_lambda must be a positive finite number"),
    (["device=tpu"], "device='tpu'"),
    (["method=consensus", "method.prun_thre_k=0"], "prun_thre_k"),
    (["method=sum", "method.k=0"], "k"),
    (["model.name=a/b"], "model.name must be a model name"),
])
def test_rejected(overrides: list[str], expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        _settings(*overrides)
    assert expected in str(info.value)


@pytest.mark.parametrize("argv,expected", [
    (["method=TSVM", "method.k=5"], "unknown key 'method.k' for method=TSVM; valid method keys: name, "
                                    "full_name, svd_keys, average_keys, svd"),
    (["method=foo"], "unknown method 'foo'; available: average, cart, consensus"),
    (["-m", "method=sum,foo"], "unknown method 'foo'"),
    (["--multirun", "num_tasks=8,99"], "num_tasks must be an integer in 1..20"),
    (["num_tasks=[1"], "cannot parse the command line"),
    (["foo=1"], "unknown config key 'foo'"),
])
def test_command_line_check(argv: list[str], expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        check_command_line(argv, SOURCE, "config", validate=settings_from_config)
    assert expected in str(info.value)


@pytest.mark.parametrize("argv", [
    ["model=ViT-B-32", "method=TSVM", "num_tasks=14", "specify_lambda=1.0"],
    ["method=ties", "method.k=20", "DATASETS=[MNIST,Cars]"],
    ["method=tall_mask", "method.load_mask=True"],
    ["method=consensus", "method.prun_thre_k=2"],
    ["hydra.run.dir=/tmp/x", "hydra.job.chdir=true"],
    ["--multirun", "method=sum,ties", "num_tasks=8,14"],
    ["--cfg", "job", "method=TSVM"],
    ["--help"],
])
def test_command_line_accepted(argv: list[str]) -> None:
    check_command_line(argv, SOURCE, "config", validate=settings_from_config)


def test_extra_config_dir_models(tmp_path: Path) -> None:
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "mine.yaml").write_text("name: mine\narch: ViT-B-32\n")
    check_command_line(["--config-dir", str(tmp_path), "model=mine", "model.pretrained=/w.pt"], SOURCE, "config",
                       validate=settings_from_config)
    settings = settings_from_config(compose_config(SOURCE.with_extra([tmp_path]), "config", ["model=mine"]))
    assert settings.model.name == "mine" and settings.model.architecture == "ViT-B-32"
    assert settings.model.quick_gelu is False and settings.model.benchmark == "paper"  # the schema's defaults
    with pytest.raises(ConfigError, match="valid model keys: name, arch"):
        check_command_line(["--config-dir", str(tmp_path), "model=mine", "model.foo=1"], SOURCE, "config")
    (tmp_path / "model" / "bad.yaml").write_text("name: bad\nquick_gelu: maybe\n")
    with pytest.raises(ConfigError, match="quick_gelu"):
        compose_config(SOURCE.with_extra([tmp_path]), "config", ["model=bad"])


def test_method_choice_without_yaml() -> None:
    """``tsvmerge merge --set k=30``: the method's schema composed by Hydra, checked like a method file."""
    choice = method_choice("ties", ["k=30"])
    assert choice.params == {"k": 30.0, "agg": "mean"} and choice.full_name == "ties_k30_mean"
    with pytest.raises(ConfigError, match="unknown method ties key foo; valid method ties keys: name, full_name, "
                                          "svd_keys, average_keys, k"):
        method_choice("ties", ["foo=1"])
    with pytest.raises(ConfigError, match="unknown method 'nope'"):
        method_choice("nope")


def test_composition_leaves_no_hydra_state() -> None:
    from hydra.core.global_hydra import GlobalHydra

    compose_config(SOURCE, "config")
    assert not GlobalHydra.instance().is_initialized()


def test_readme_configuration_table_is_generated_from_the_schema() -> None:
    from tsvmerge.config.docs import END, START, config_reference

    readme = (CONFIG.parent / "README.md").read_text()
    assert readme.split(START, 1)[1].split(END, 1)[0].strip() == config_reference().strip(), (
        "README's configuration table is stale: run `python -m tsvmerge.config.docs README.md`")
