"""Helpers (no tests) for the outputs-and-adapters reliability tests (RELIABILITY B and C).

A `Private` forma home per test: a copy of a registry registered once per session (schemas invoice,
form and a second version of form), its own runs and its own ledger, so a test may promote, tamper and
refuse without touching the session `home` other tests share. Adapters are the session home's real
PEFT LoRAs (see test_serve_support).
"""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path
from typing import Any

import pytest
from serve_fixtures import ADMIN, CONTACT_ONLY, Gateway, Home
from test_serve_support import INVOICE, promote_run, write_run

from evals.ledger import Release
from finetune.run import ADAPTER_DIR, ADAPTER_WEIGHTS, file_sha256, load_manifest, write_manifest
from serve.engine_process import free_port
from serve.settings import ServeSettings

# Keywords the grammar backends cannot enforce (allOf, format, additionalProperties) beside ones they
# can (maxLength): only the gateway's post-validation stands between a bad output and a 200 (B1).
FORM: dict[str, Any] = {
    "type": "object",
    "properties": {
        "title": {"type": "string", "maxLength": 10},
        "date": {"type": "string", "format": "date"},
        "owner": {
            "type": "object",
            "properties": {"name": {"type": "string"}, "email": {"type": "string"}},
            "additionalProperties": False,
        },
    },
    "required": ["title", "date", "owner"],
    "allOf": [{"properties": {"owner": {"required": ["name"]}}}],
    "additionalProperties": False,
}
FORM_V2: dict[str, Any] = {**FORM, "properties": {**FORM["properties"], "title": {"type": "string"}}}
GOOD_FORM = {"title": "Lease", "date": "2024-03-01", "owner": {"name": "Ann"}}


_TEMPLATE: list[tuple[Path, dict[str, str]]] = []


def registry_template(factory: pytest.TempPathFactory, home: Home) -> tuple[Path, dict[str, str]]:
    """A registry with invoice, form v2 and form v1 (registered last, so current), compiled once per
    session however many test modules ask."""
    if not _TEMPLATE:
        from schemas.register import register
        from schemas.worker import GrammarWorker

        root = factory.mktemp("rel-registry") / "schemas"
        with GrammarWorker(home.base_model) as worker:  # one compile worker for all three
            versions = {"form_v2": register(root, "form", FORM_V2, check=worker.check).version}
            for name, schema in {"invoice": INVOICE, "form": FORM}.items():
                versions[name] = register(root, name, schema, check=worker.check).version
        _TEMPLATE.append((root, versions))
    return _TEMPLATE[0]


class Private:
    """A forma home of one test: registry copy, runs, ledger; `gateway(engine_url)` serves it."""

    def __init__(self, root: Path, template: tuple[Path, dict[str, str]], home: Home) -> None:
        self.root, self.home, self.versions = root, home, template[1]
        self.schemas, self.runs, self.releases = root / "schemas", root / "runs", root / "releases"
        shutil.copytree(template[0], self.schemas)
        self.runs.mkdir()
        self.gateways: list[Gateway] = []

    def run(self, name: str, adapter: int | Path, run_id: str, version: str | None = None) -> Path:
        source = self.home.adapters[adapter] if isinstance(adapter, int) else adapter
        version = version or self.versions[name]
        return write_run(self.runs, self.home.base_model, source, name, version, run_id)

    def publish(self, name: str, adapter: int | Path, run_id: str, version: str | None = None) -> Release:
        return promote_run(self.releases, self.run(name, adapter, run_id, version))

    def gateway(self, engine_url: str, **overrides: Any) -> Gateway:
        fields: dict[str, Any] = {
            "schemas_root": self.schemas,
            "runs_root": self.runs,
            "releases_root": self.releases,
            "engine_url": engine_url,
            "port": free_port(),
            "ledger_poll_s": 0.2,
            "api_keys": f"{ADMIN}=*,admin;{CONTACT_ONLY}=contact",
        }
        gw = Gateway(ServeSettings(**(fields | overrides))).__enter__()
        self.gateways.append(gw)
        return gw

    def close(self) -> None:
        for gw in self.gateways:
            gw.__exit__()


def private_home(tmp_path: Path, factory: pytest.TempPathFactory, home: Home) -> Private:
    return Private(tmp_path / "private", registry_template(factory, home), home)


def reseal(run: Path) -> None:
    """Record the run's (tampered) weights hash in its manifest, as a forger with write access would:
    the hash check then passes and only the content checks stand."""
    manifest = load_manifest(run)
    sha = file_sha256(run / ADAPTER_DIR / ADAPTER_WEIGHTS)
    write_manifest(run, manifest.model_copy(update={"adapter_sha256": sha}))


def write_safetensors(
    path: Path, tensors: dict[str, tuple[str, list[int]]], data: bytes | None = None
) -> None:
    """A safetensors file from a header table {name: (dtype, shape)}; zero data unless `data` is given."""
    sizes = {"F32": 4, "BF16": 2, "F16": 2}
    header, offset = {}, 0
    for name, (dtype, shape) in tensors.items():
        n = sizes[dtype]
        for dim in shape:
            n *= dim
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + (data if data is not None else bytes(offset)))


_STRONG: list[list[Path]] = []


def strong_adapters(factory: pytest.TempPathFactory, home: Home) -> list[Path]:
    """Three real PEFT LoRAs whose lora_B ~ N(0, 0.05): unlike the session home's (0.01), each visibly
    changes the base model's greedy output, so a test that compares adapters' outputs can fail."""
    if not _STRONG:
        import torch
        from peft import LoraConfig, get_peft_model
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(home.base_model, dtype=torch.bfloat16)
        config = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
        peft_model = get_peft_model(model, config)
        folders = [factory.mktemp("strong") / f"s{seed}" for seed in range(3)]
        for seed, folder in enumerate(folders):
            torch.manual_seed(100 + seed)
            for name, tensor in peft_model.named_parameters():
                if "lora_B" in name:
                    torch.nn.init.normal_(tensor, std=0.05)
            peft_model.save_pretrained(folder)
        _STRONG.append(folders)
    return _STRONG[0]


def engine_processes(url: str) -> list[Any]:
    """The engine's process tree: the process listening on the URL's port and its children (psutil)."""
    import psutil

    port = int(url.rsplit(":", 1)[1])
    listening = [
        c.pid
        for c in psutil.net_connections(kind="tcp")
        if c.laddr and c.laddr.port == port and c.status == "LISTEN"
    ]
    assert listening, f"nothing listens on {url}"
    root = psutil.Process(listening[0])
    return [root, *root.children(recursive=True)]


def engine_models(url: str) -> set[str]:
    import httpx

    return {m["id"] for m in httpx.get(url + "/v1/models", timeout=30).json()["data"]}


def unique_adapter(source: Path, dest: Path) -> Path:
    """A copy of `source` with one lora_B weight nudged at random: new content, so a release id no engine
    has seen (a long-lived test engine included)."""
    import random

    from safetensors.torch import load_file, save_file

    shutil.copytree(source, dest)
    tensors = load_file(dest / ADAPTER_WEIGHTS)
    key = next(name for name in sorted(tensors) if "lora_B" in name)
    tensors[key][0, 0] += random.uniform(0.01, 0.02)
    save_file(tensors, dest / ADAPTER_WEIGHTS, metadata={"format": "pt"})
    return dest
