"""TrainConfig: defaults, every shipped YAML, `--set` overrides, and clear errors for bad keys/values."""

from __future__ import annotations

from pathlib import Path

import pytest

from finetune.config import ConfigError, TrainConfig, load_config, parse_sets, shipped_configs


def test_defaults_suit_a_small_cpu_model() -> None:
    config = TrainConfig()
    assert config.lora_r == 16 and config.lora_alpha == 32
    assert "q_proj" in config.target_modules and "down_proj" in config.target_modules
    assert config.padding_free and config.compact_lm_head and not config.gradient_checkpointing
    assert config.max_steps == -1 and config.save_total_limit >= 2


def test_every_field_is_described() -> None:
    missing = [name for name, field in TrainConfig.model_fields.items() if not field.description]
    assert missing == []


@pytest.mark.parametrize("path", shipped_configs(), ids=lambda p: p.name)
def test_every_shipped_yaml_is_a_valid_config(path: Path) -> None:
    assert isinstance(load_config(path), TrainConfig)


def test_shipped_configs_exist() -> None:
    assert {p.name for p in shipped_configs()} >= {"default.yaml", "quick.yaml"}


def test_default_yaml_matches_the_model_defaults() -> None:
    assert load_config(shipped_configs()[0].parent / "default.yaml") == TrainConfig()


def test_set_overrides_yaml_and_parses_types(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("max_steps: 50\nlora_r: 8\n")
    config = load_config(
        path, ["max_steps=3", "use_dora=true", "target_modules=[q_proj, v_proj]", "lr_scheduler=linear"]
    )
    assert config.max_steps == 3 and config.lora_r == 8 and config.use_dora
    assert config.target_modules == ["q_proj", "v_proj"] and config.lr_scheduler == "linear"


def test_unknown_yaml_key_names_file_field_and_known_keys(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("lora_rank: 8\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    message = str(err.value)
    assert str(path) in message and "/lora_rank" in message and "unknown config key" in message
    assert "lora_r" in message  # the known keys are listed, so the fix is visible


def test_unknown_set_key_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"--set: unknown config key at /max_step\b"):
        load_config(None, ["max_step=3"])


def test_bad_value_names_the_field() -> None:
    with pytest.raises(ConfigError, match=r"/lora_r: .*greater than or equal to 1"):
        load_config(None, ["lora_r=0"])


@pytest.mark.parametrize("item", ["max_steps", "=3", ""])
def test_set_needs_key_equals_value(item: str) -> None:
    with pytest.raises(ConfigError, match="expected key=value"):
        parse_sets([item])


def test_yaml_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("lora_r: 8\nmax_steps: [1, 2\n")
    with pytest.raises(ConfigError, match=rf"{path}:\d+: not valid YAML"):
        load_config(path)


def test_yaml_must_be_a_mapping(tmp_path: Path) -> None:
    path = tmp_path / "list.yaml"
    path.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="a config is a mapping"):
        load_config(path)


def test_qlora_is_refused_where_it_cannot_run() -> None:
    import importlib.util

    import torch

    from finetune.model import quantization_config

    if torch.cuda.is_available() and importlib.util.find_spec("bitsandbytes"):
        pytest.skip("this machine can run QLoRA")
    with pytest.raises(ConfigError, match="needs a CUDA GPU and the bitsandbytes package"):
        quantization_config(TrainConfig(quantization="4bit"))
