"""The embedded base model: the converted checkpoint is the same model as the GGUF it came from."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from finetune.base_model import (
    MARKER,
    BaseModelError,
    embedded_gguf_path,
    load_gguf,
    prepare_model,
    read_info,
    resolve_base,
)
from forma.cli import app

PROMPT = [{"role": "user", "content": "Name three colours, comma separated."}]


def _greedy(model, tokenizer) -> str:
    inputs = tokenizer.apply_chat_template(
        PROMPT, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    out = model.generate(**inputs, max_new_tokens=24, do_sample=False)
    return tokenizer.decode(out[0][inputs["input_ids"].shape[1] :])


@pytest.mark.slow
def test_converted_checkpoint_is_the_gguf_model(base_model: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_model, gguf_tok = load_gguf(embedded_gguf_path())
    plain = AutoModelForCausalLM.from_pretrained(base_model)
    plain_tok = AutoTokenizer.from_pretrained(base_model)
    assert str(plain.dtype) == "torch.bfloat16"
    assert _greedy(plain, plain_tok) == _greedy(gguf_model, gguf_tok)
    config = json.loads((base_model / "config.json").read_text())
    assert "quantization_config" not in config
    assert plain_tok.chat_template
    assert (base_model / "model.safetensors").is_file()


@pytest.mark.slow
def test_prepare_is_idempotent(base_model: Path) -> None:
    before = (base_model / "model.safetensors").stat().st_mtime_ns
    info = prepare_model(base_model.parent)
    assert info.path == str(base_model)
    assert (base_model / "model.safetensors").stat().st_mtime_ns == before


@pytest.mark.slow
def test_interrupted_conversion_leaves_nothing_that_loads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def crash(*args, **kwargs):  # test double: the process dies while writing the tokenizer
        raise KeyboardInterrupt

    monkeypatch.setattr("transformers.PreTrainedTokenizerBase.save_pretrained", crash)
    with pytest.raises(KeyboardInterrupt):
        prepare_model(tmp_path)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(BaseModelError, match="forma models prepare"):
        resolve_base(None, tmp_path)


def test_unmarked_folder_is_refused(tmp_path: Path) -> None:
    (tmp_path / "SmolLM2-135M-Instruct").mkdir()
    with pytest.raises(BaseModelError, match=f"no {MARKER}"):
        prepare_model(tmp_path)


@pytest.mark.slow
def test_local_folder_is_accepted_as_base(base_model: Path, tmp_path: Path) -> None:
    info = resolve_base(str(base_model), tmp_path)
    assert read_info(Path(info.path)) == info
    assert info.source == str(base_model)


@pytest.mark.slow
def test_base_without_chat_template_is_refused(base_model: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    bare = tmp_path / "bare"
    tokenizer = AutoTokenizer.from_pretrained(base_model)
    tokenizer.chat_template = None
    tokenizer.save_pretrained(bare)
    (bare / "chat_template.jinja").unlink(missing_ok=True)
    AutoModelForCausalLM.from_pretrained(base_model).save_pretrained(bare)
    with pytest.raises(BaseModelError, match="no chat template"):
        prepare_model(tmp_path / "cache", source=str(bare))
    assert not (tmp_path / "cache" / "bare").exists()


@pytest.mark.slow
def test_models_list_shows_prepared(base_model: Path) -> None:
    result = CliRunner().invoke(app, ["models", "list"])
    assert result.exit_code == 0
    assert "SmolLM2-135M-Instruct" in result.output


@pytest.mark.slow
def test_vllm_imports() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", "import vllm; print(vllm.__version__)"], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().startswith("0.32")
