"""Fast unit tests of the checks behind RELIABILITY B1-B3, B5 and C1-C4: no engine, no gateway.

The slow tests in test_rel_outputs.py and test_rel_adapters.py show the same checks end to end; these
pin each rule alone, so a regression names the rule it broke.
"""

from __future__ import annotations

import json
import struct
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from rel_support import FORM, GOOD_FORM, write_safetensors

from evals.ledger import LedgerError, Release, promote, read_events, read_live
from finetune.run import (
    ADAPTER_CONFIG,
    ADAPTER_DIR,
    ADAPTER_WEIGHTS,
    BaseModelRef,
    DatasetRef,
    RunManifest,
    UnsupportedArtifact,
    file_sha256,
    safetensors_header,
    verified_adapter,
)
from serve.adapters import AdapterConfigError, check_config, check_tensors
from serve.generation import check_text, violations
from serve.releases import ReleaseRefused, contained
from serve.tokens import context_error

A = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
B = "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"
BASE = {"model.layers.0.self_attn.q_proj": [576, 576], "model.layers.0.self_attn.v_proj": [192, 576]}
CONFIG: dict[str, Any] = {
    "peft_type": "LORA",
    "r": 8,
    "lora_alpha": 16,
    "target_modules": ["q_proj"],
    "bias": "none",
    "use_dora": False,
    "modules_to_save": None,
    "task_type": "CAUSAL_LM",
    "base_model_name_or_path": "/models/SmolLM2-135M-Instruct",
}


def test_violation_details_name_pointer_and_keyword_never_the_value() -> None:
    """B1 + D5: details say where and which keyword, never the offending (document-derived) value."""
    bad = {"title": "Residential lease", "date": "nope", "owner": {"email": "ann@example.org"}, "x": 1}
    details = {(d.pointer, d.message) for d in violations(FORM, bad)}
    assert details == {
        ("/title", "breaks maxLength 10"),
        ("/date", 'breaks format "date"'),
        ("/owner", "required: missing name"),
        ("", "breaks additionalProperties false"),
    }
    assert violations(FORM, GOOD_FORM) == []
    assert not any(value in json.dumps(sorted(details)) for value in ("Residential", "nope", "ann@"))


def test_context_error_names_both_counts_and_allows_the_exact_fit() -> None:
    """B3: prompt + max_tokens == max_model_len fits; one more token is a 413 with both numbers."""
    assert context_error(1984, 64, 2048) is None
    err = context_error(1985, 64, 2048)
    assert err is not None and err.status == 413 and err.code == "too_large"
    assert "1985 tokens" in err.message and "max_tokens is 64" in err.message and "2048" in err.message


@pytest.mark.parametrize("text", ["a\udcffb", "\ud800", "x\x00"])
def test_check_text_refuses_lone_surrogates_and_nul(text: str) -> None:
    """B3: valid JSON can carry text that is not Unicode; it is a 422 before any tokenizer sees it."""
    with pytest.raises(Exception) as caught:
        check_text(text, 100)
    assert getattr(caught.value, "status", None) == 422


def _bomb(path: Path, header: dict[str, Any], data: bytes) -> int:
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    return path.stat().st_size


@pytest.mark.parametrize(
    ("header", "data", "says"),
    [
        (
            {A: {"dtype": "BF16", "shape": [50_000_000_000], "data_offsets": [0, 100_000_000_000]}},
            b"",
            "declares",
        ),
        ({A: {"dtype": "BF16", "shape": [4], "data_offsets": [0, 8]}}, bytes(16), "declares 8 bytes"),
        ({A: {"dtype": "BF16", "shape": [4], "data_offsets": [0, 4]}}, bytes(4), "spans bytes 0..4"),
        ({A: {"dtype": "PICKLE", "shape": [1], "data_offsets": [0, 1]}}, bytes(1), "malformed or unknown"),
        (
            {
                A: {"dtype": "U8", "shape": [4], "data_offsets": [0, 4]},
                B: {"dtype": "U8", "shape": [4], "data_offsets": [2, 6]},
            },
            bytes(6),
            "overlap",
        ),
    ],
)
def test_safetensors_header_must_agree_with_the_file(
    tmp_path: Path, header: dict, data: bytes, says: str
) -> None:
    """C4: a header that lies about sizes is refused from the header alone (no tensor is read)."""
    path = tmp_path / ADAPTER_WEIGHTS
    size = _bomb(path, header, data)
    with pytest.raises(UnsupportedArtifact, match=says):
        safetensors_header(path, size)


def test_safetensors_header_length_is_capped_before_reading(tmp_path: Path) -> None:
    """C4: an 8-byte prefix claiming a 1 TB header is refused before anything more is read."""
    path = tmp_path / ADAPTER_WEIGHTS
    path.write_bytes(struct.pack("<Q", 1 << 40) + b"{}")
    with pytest.raises(UnsupportedArtifact, match="not a safetensors file"):
        safetensors_header(path, path.stat().st_size)


def _run(tmp_path: Path) -> tuple[Path, RunManifest]:
    folder = tmp_path / "run"
    (folder / ADAPTER_DIR).mkdir(parents=True)
    write_safetensors(folder / ADAPTER_DIR / ADAPTER_WEIGHTS, {A: ("BF16", [8, 576]), B: ("BF16", [576, 8])})
    (folder / ADAPTER_DIR / ADAPTER_CONFIG).write_text(json.dumps(CONFIG))
    manifest = RunManifest(
        run_id="r1",
        status="completed",
        schema_name="form",
        schema_version="0" * 12,
        dataset=DatasetRef(sha256="0" * 64, counts={}),
        base_model=BaseModelRef(
            id="SmolLM2-135M-Instruct", path="/models/SmolLM2-135M-Instruct", content_sha256="0"
        ),
        prompt_hash="p",
        config={},
        adapter_sha256=file_sha256(folder / ADAPTER_DIR / ADAPTER_WEIGHTS),
        created_at=datetime.now(UTC).isoformat(),
    )
    return folder, manifest


@pytest.mark.parametrize(
    ("extra", "says"),
    [
        ("adapter_model.bin", r"adapter_model\.bin"),
        ("adapter_model.pt", r"\.pt"),
        ("training_args.bin", "training_args"),
    ],
)
def test_verified_adapter_refuses_any_file_beside_the_two(tmp_path: Path, extra: str, says: str) -> None:
    """C2: a pickle beside the weights (or instead of them) is refused by name; it is never opened."""
    folder, manifest = _run(tmp_path)
    verified_adapter(folder, manifest)
    (folder / ADAPTER_DIR / extra).write_bytes(b"\x80\x04not a real pickle")
    with pytest.raises(UnsupportedArtifact, match=says):
        verified_adapter(folder, manifest)


def test_verified_adapter_refuses_links_and_oversized_weights(tmp_path: Path) -> None:
    """C1 + C4: a weights file that is a link, or larger than the cap, is refused from lstat/stat."""
    folder, manifest = _run(tmp_path)
    weights = folder / ADAPTER_DIR / ADAPTER_WEIGHTS
    with pytest.raises(UnsupportedArtifact, match="over the 1000-byte limit"):
        verified_adapter(folder, manifest, max_bytes=1000)
    real = tmp_path / "elsewhere.safetensors"
    weights.rename(real)
    weights.symlink_to(real)
    with pytest.raises(UnsupportedArtifact, match="is a link"):
        verified_adapter(folder, manifest)


@pytest.mark.parametrize(
    ("change", "says"),
    [
        ({"peft_type": None}, "/peft_type"),
        ({"r": 64}, "/r is 64"),
        ({"r": True}, "/r is True"),
        ({"bias": "all"}, "/bias"),
        ({"use_dora": True}, "/use_dora"),
        ({"modules_to_save": ["lm_head"]}, "/modules_to_save"),
        ({"layers_to_transform": [0]}, "/layers_to_transform"),
        ({"rank_pattern": {"q_proj": 64}}, "/rank_pattern"),
        ({"target_modules": "q_proj"}, "/target_modules"),
        ({"lora_alpha": 0}, "/lora_alpha"),
    ],
)
def test_adapter_config_policy(change: dict[str, Any], says: str) -> None:
    """C3: only a plain LoRA within --max-lora-rank passes; each refusal names the field."""
    assert check_config(CONFIG, max_rank=16) == 8
    with pytest.raises(AdapterConfigError, match=says):
        check_config({k: v for k, v in {**CONFIG, **change}.items() if v is not None}, max_rank=16)


@pytest.mark.parametrize(
    ("tensors", "targets", "says"),
    [
        ({A: [8, 576], B: [576, 8]}, {"q_proj", "wq_proj"}, "absent from the base"),
        ({"base_model.model.lm_head.weight": [49152, 576]}, {"q_proj"}, "not a LoRA A/B matrix"),
        ({A.replace("layers.0", "layers.99"): [8, 576]}, {"q_proj"}, "does not exist in the base"),
        ({A: [8, 577]}, {"q_proj"}, r"the base's .* is \[576, 576\]"),
        ({A: [1024, 576]}, {"q_proj"}, "not rank r=8"),
        ({A.replace("q_proj", "v_proj"): [8, 576]}, {"q_proj"}, "outside /target_modules"),
    ],
)
def test_adapter_tensors_must_fit_the_base(
    tensors: dict[str, list[int]], targets: set[str], says: str
) -> None:
    """C3 + C4: every tensor is a LoRA A/B of a targeted base module, of rank r, sized to that module."""
    check_tensors({A: {"shape": [8, 576]}, B: {"shape": [576, 8]}}, 8, {"q_proj"}, BASE)
    with pytest.raises(AdapterConfigError, match=says):
        check_tensors({k: {"shape": s} for k, s in tensors.items()}, 8, targets, BASE)


def test_contained_refuses_escapes_after_resolving_links(tmp_path: Path) -> None:
    """C1: ../, absolute paths elsewhere and symlinks out are refused; a run inside passes."""
    root = tmp_path / "runs"
    (root / "r1").mkdir(parents=True)
    (tmp_path / "outside").mkdir()
    (root / "link").symlink_to(tmp_path / "outside")
    assert contained(root / "r1", root, "run") == (root / "r1").resolve()
    for path in (root / "../outside", tmp_path / "outside", root / "link", root, Path("/etc")):
        with pytest.raises(ReleaseRefused) as caught:
            contained(path, root, "run")
        assert caught.value.code == "outside_root"


def _release(**changes: Any) -> Release:
    fields: dict[str, Any] = {
        "release_id": "form-" + "a" * 12,
        "schema_name": "form",
        "schema_version": "0" * 12,
        "run_id": "form-20260101T000000-abcdef",
        "run_dir": "/runs/form-20260101T000000-abcdef",
        "adapter_sha256": "a" * 64,
        "base_model_id": "b",
        "base_model_sha256": "0",
        "prompt_hash": "p",
        "gate_passed": True,
        "promoted_at": "2026-01-01T00:00:00+00:00",
    }
    return Release(**(fields | changes))


@pytest.mark.parametrize(
    "change",
    [
        {"run_id": "../../etc"},
        {"schema_name": "../form"},
        {"schema_name": "Form"},
        {"schema_name": "a" * 65},
        {"release_id": "form-../../x"},
        {"adapter_sha256": "x" * 64},
        {"run_id": "ｆorm"},
    ],
)
def test_ledger_names_must_match_the_allowlist(change: dict[str, str]) -> None:
    """C1: every name a release carries becomes a path or an engine model name: allowlisted."""
    _release()
    with pytest.raises(ValueError, match="String should match pattern"):
        _release(**change)


def test_ledger_refuses_bad_names_and_reports_bad_lines(tmp_path: Path) -> None:
    """C1: a schema name off the allowlist never becomes a ledger path; a forged line is reported with
    its file, line and field, and the other schemas' ledgers still read."""
    with pytest.raises(LedgerError, match="invalid schema name"):
        read_events(tmp_path, "../etc/passwd")
    promote(tmp_path, _release())
    promote(tmp_path, _release(schema_name="other", release_id="other-" + "b" * 12))
    path = tmp_path / "form.jsonl"
    line = json.loads(path.read_text())
    line["release"]["run_id"] = "../../etc"
    path.write_text(path.read_text() + json.dumps(line) + "\n")
    live, problems = read_live(tmp_path)
    assert set(live) == {"other"}
    assert problems["form"].startswith("form.jsonl:2: /release/run_id: String should match pattern")
