"""Training config: schema validation with errors naming the key, overrides, every shipped recipe loads."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from supernet.config import (
    ConfigError,
    apply_overrides,
    config_from_dict,
    dump_config,
    load_config,
    parse_override,
)

CONFIGS = Path(__file__).parent.parent / "configs"
RECIPES = sorted(p.relative_to(CONFIGS).as_posix() for p in CONFIGS.rglob("*.yaml"))


def test_every_recipe_loads_and_round_trips() -> None:
    assert {"alphanet.yaml", "bignas.yaml", "attentivenas.yaml", "ofa.yaml", "compofa.yaml", "deps.yaml",
            "ennas.yaml", "deps_alpha.yaml", "imagenet/alphanet.yaml"} <= set(RECIPES)
    for recipe in RECIPES:
        config = load_config(CONFIGS / recipe)
        assert config_from_dict(yaml.safe_load(dump_config(config))) == config


def test_alphanet_recipe_is_the_papers() -> None:
    c = load_config(CONFIGS / "alphanet.yaml")
    assert c.sampler.name == "sandwich" and c.sampler.num_random == 2  # 4 networks per step
    assert c.teacher.name == "inplace" and c.distill.divergence == "adaptive_alpha"
    assert c.distill.options == {"alpha_min": -1.0, "alpha_max": 1.0, "clip": 5.0}
    assert c.optim.grad_clip.kind == "value" and c.optim.grad_clip.value == 1.0
    big = load_config(CONFIGS / "imagenet" / "alphanet.yaml")
    assert (big.train.epochs, big.optim.lr, big.optim.weight_decay) == (360, 0.1, 1e-5)
    assert (big.optim.label_smoothing, big.train.dropout, big.train.drop_connect) == (0.1, 0.2, 0.2)


def test_deps_recipe_is_the_papers() -> None:
    s = load_config(CONFIGS / "deps.yaml").schedule
    assert (s.name, s.fm_warmup, s.eps_start, s.eps_ramp) == ("delayed_eps", 0.5, 1e-4, 0.1)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["optim.lrr=0.1"], "unknown key 'optim.lrr'"),
        (["optim.lr=fast"], "optim.lr: Input should be a valid number"),
        (["optim.lr=-1"], "optim.lr: Input should be greater than 0"),
        (["bogus=1"], "unknown key 'bogus'"),
        (["sampler.name=nope"], "sampler"),
        (["teacher.name=external"], "teacher.checkpoint is required"),
        (["teacher.name=ensemble", "sampler.num_random=1", "sampler.name=uniform"], "at least 2 sampled"),
        (["schedule.name=delayed_eps", "schedule.fm_warmup=1.5"], "schedule.delayed_eps.fm_warmup"),
    ],
)
def test_config_errors_name_the_key(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        load_config(None, overrides)


def test_error_is_one_line_and_names_the_file(tmp_path) -> None:
    path = tmp_path / "r.yaml"
    path.write_text("optim:\n  lr: 0.1\n  momentun: 0.9\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(ConfigError, match="not found|No such file"):
        load_config(tmp_path / "missing.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config(tmp_path / "list.yaml")


def test_overrides_parse_yaml_values_and_create_sections() -> None:
    assert parse_override("optim.lr=0.05") == (["optim", "lr"], 0.05)
    assert parse_override("train.bf16=true") == (["train", "bf16"], True)
    assert parse_override("space=fmnist") == (["space"], "fmnist")
    assert apply_overrides({}, ["a.b.c=[1, 2]"]) == {"a": {"b": {"c": [1, 2]}}}
    with pytest.raises(ConfigError, match="key.path=value"):
        parse_override("optim.lr")
    with pytest.raises(ConfigError, match="'seed' is not a section"):
        apply_overrides({"seed": 1}, ["seed.x=2"])
    c = load_config(CONFIGS / "deps.yaml", ["optim.lr=0.05", "schedule.fm_warmup=0.3"])
    assert c.optim.lr == 0.05 and c.schedule.fm_warmup == 0.3
