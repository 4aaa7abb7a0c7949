"""The live releases the gateway serves: ledger -> verified adapter + the exact schema it was trained on.

Bindings are swapped whole, so a request keeps the `Binding` it started with (and its adapter, which
stays loaded under its content-addressed name) while the next request sees the new release. A release
that fails any check is refused with the reason and the schema's previous binding stays.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from evals.ledger import Release, live_releases, release_id
from finetune.run import RunError, load_manifest, verified_adapter
from schemas.prompt import prompt_hash
from serve.engine_client import EngineClient, EngineRejected, EngineUnavailable
from serve.generation import Binding
from serve.metrics import Metrics


class Refusal(BaseModel):
    model_config = ConfigDict(extra="forbid")

    schema_name: str
    release_id: str
    reason: str


class ReloadReport(BaseModel):
    model_config = ConfigDict(extra="forbid")

    loaded: list[str] = []
    unchanged: list[str] = []
    refused: list[Refusal] = []
    removed: list[str] = []


class ReleaseRefused(RuntimeError):
    pass


def resolve_binding(release: Release, schemas_root: Path, base_sha256: str | None) -> Binding:
    """Check a release end to end and bind it, or raise ReleaseRefused with the reason."""
    from schemas.registry import load_schema

    folder = Path(release.run_dir)
    try:
        manifest = load_manifest(folder)
        if manifest.adapter_sha256 != release.adapter_sha256:
            raise RunError(f"the ledger names adapter {release.adapter_sha256[:12]}, the run has another")
        adapter = verified_adapter(folder, manifest)
    except RunError as err:
        raise ReleaseRefused(str(err)) from None
    if release.release_id != release_id(release.schema_name, release.adapter_sha256):
        raise ReleaseRefused(f"release id {release.release_id} is not content-addressed by its adapter hash")
    if manifest.prompt_hash != prompt_hash():
        raise ReleaseRefused(
            f"run trained with prompt {manifest.prompt_hash}, this code builds {prompt_hash()}"
        )
    if base_sha256 is not None and release.base_model_sha256 != base_sha256:
        raise ReleaseRefused(
            f"trained on base {release.base_model_sha256[:12]}, the engine serves {base_sha256[:12]}"
        )
    try:
        registered = load_schema(schemas_root, release.schema_name, release.schema_version)
    except Exception as err:  # the registry's own errors name the file and the fix
        raise ReleaseRefused(f"schema {release.schema_name} {release.schema_version}: {err}") from None
    return Binding(
        schema_name=release.schema_name,
        schema_version=release.schema_version,
        release_id=release.release_id,
        schema=registered.json_schema,
        instructions=registered.instructions,
        adapter_path=str(adapter),
        decoder_schema=registered.decoder_schema,
    )


def ledger_signature(root: Path) -> tuple[tuple[str, int, int], ...]:
    """What changes when any ledger file is written (atomic replace gives a new mtime and inode)."""
    if not root.is_dir():
        return ()
    stats = ((p.name, p.stat()) for p in sorted(root.glob("*.jsonl")))
    return tuple((name, st.st_mtime_ns, st.st_ino) for name, st in stats)


class ReleaseTable:
    """Schema name -> live Binding, plus which adapters the current engine has loaded."""

    def __init__(
        self, schemas_root: Path, releases_root: Path, base_sha256: str | None, metrics: Metrics
    ) -> None:
        self.schemas_root, self.releases_root, self.base_sha256 = schemas_root, releases_root, base_sha256
        self.metrics = metrics
        self.bindings: dict[str, Binding] = {}
        self.refused: dict[str, Refusal] = {}
        self.loaded: set[str] = set()
        self.signature: tuple[tuple[str, int, int], ...] | None = None
        self._lock = asyncio.Lock()

    def find(self, name: str) -> Binding | None:
        """A binding by schema name or by its release id (the OpenAI `model`)."""
        if name in self.bindings:
            return self.bindings[name]
        return next((b for b in self.bindings.values() if b.release_id == name), None)

    async def refresh(self, engine: EngineClient) -> ReloadReport:
        async with self._lock:
            self.signature = ledger_signature(self.releases_root)
            live = await asyncio.to_thread(live_releases, self.releases_root)
            report, bindings = ReloadReport(), {}
            for name, release in live.items():
                bindings[name] = await self._bind(engine, name, release, report)
            report.removed = sorted(set(self.bindings) - set(live))
            self.bindings = {name: b for name, b in bindings.items() if b is not None}
            return report

    async def _bind(
        self, engine: EngineClient, name: str, release: Release, report: ReloadReport
    ) -> Binding | None:
        current = self.bindings.get(name)
        if current is not None and current.release_id == release.release_id:
            self.refused.pop(name, None)  # e.g. rolled back from a refused release to the bound one
            report.unchanged.append(release.release_id)
            return current
        try:
            binding = await asyncio.to_thread(resolve_binding, release, self.schemas_root, self.base_sha256)
            await self.ensure_loaded(engine, binding)
        except (ReleaseRefused, EngineRejected) as err:
            refusal = Refusal(schema_name=name, release_id=release.release_id, reason=str(err))
            self.refused[name] = refusal
            report.refused.append(refusal)
            return current  # the old release stays live
        except EngineUnavailable:
            pass  # bound now, loaded by the first request once the engine is back
        self.refused.pop(name, None)
        report.loaded.append(binding.release_id)
        return binding

    async def ensure_loaded(self, engine: EngineClient, binding: Binding) -> None:
        if binding.release_id in self.loaded:
            return
        try:
            await engine.load_adapter(binding.release_id, binding.adapter_path)
        except (EngineRejected, EngineUnavailable):
            self.metrics.adapter_loads.labels("failed").inc()
            raise
        self.metrics.adapter_loads.labels("loaded").inc()
        self.loaded.add(binding.release_id)
