"""The live releases the gateway serves: ledger -> verified adapter + the exact schema it was trained on.

Bindings are swapped whole, so a request keeps the `Binding` it started with (and its adapter, which
stays loaded under its content-addressed name) while the next request sees the new release. A release
that fails any check is refused with the reason and the schema's previous binding stays.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field

from evals.ledger import Release, read_live, release_id
from finetune.run import MANIFEST, RunError, UnsupportedArtifact, load_manifest, verified_adapter
from schemas.prompt import prompt_hash
from serve.adapters import AdapterConfigError, check_adapter
from serve.engine_client import EngineClient, EngineRejected, EngineUnavailable
from serve.errors import ApiError
from serve.generation import Binding
from serve.metrics import Metrics

if TYPE_CHECKING:
    from serve.settings import ServeSettings


class Refusal(BaseModel):
    model_config = ConfigDict(extra="forbid")

    schema_name: str
    release_id: str
    reason: str
    code: str = Field(
        default="refused",
        description="unsupported_artifact, invalid_adapter, outside_root, schema_version_mismatch, refused.",
    )


class ReloadReport(BaseModel):
    model_config = ConfigDict(extra="forbid")

    loaded: list[str] = []
    unchanged: list[str] = []
    refused: list[Refusal] = []
    removed: list[str] = []


class ReleaseRefused(RuntimeError):
    def __init__(self, reason: str, code: str = "refused") -> None:
        super().__init__(reason)
        self.code = code


def contained(path: Path, root: Path, what: str) -> Path:
    """`path` with symlinks resolved, refused unless it stays inside `root` (RELIABILITY C1). Resolving
    reads links, never file contents: nothing outside the root is opened."""
    real, top = path.resolve(), root.resolve()
    if real == top or not real.is_relative_to(top):
        raise ReleaseRefused(
            f"{what} resolves outside the runs root; runs are served from there only", "outside_root"
        )
    return real


def resolve_binding(release: Release, settings: ServeSettings, base: Path | None) -> Binding:
    """Check a release end to end and bind it, or raise ReleaseRefused with the reason. `base` is the
    model folder the engine serves, when known here: the adapter is checked against its module table."""
    folder = contained(settings.runs_root / release.run_dir, settings.runs_root, f"run {release.run_id}")
    contained(folder / MANIFEST, settings.runs_root, f"run {release.run_id}/{MANIFEST}")
    try:
        manifest = load_manifest(folder)
        if (manifest.run_id, manifest.schema_name) != (release.run_id, release.schema_name):
            raise RunError(f"the run folder holds run {manifest.run_id}, not {release.run_id}")
        if manifest.adapter_sha256 != release.adapter_sha256:
            raise RunError(f"the ledger names adapter {release.adapter_sha256[:12]}, the run has another")
        adapter = verified_adapter(folder, manifest)
        check_adapter(adapter, base, manifest.base_model.id, settings.max_lora_rank)
    except UnsupportedArtifact as err:
        raise ReleaseRefused(str(err), "unsupported_artifact") from None
    except AdapterConfigError as err:
        raise ReleaseRefused(f"run {release.run_id}: {err}", "invalid_adapter") from None
    except RunError as err:
        raise ReleaseRefused(str(err)) from None
    _check_release(release, manifest.prompt_hash, manifest.schema_version, settings.base_model_sha256)
    return _binding(release, settings.schemas_root, adapter, base)


def _check_release(release: Release, trained_prompt: str, trained_version: str, base_sha: str | None) -> None:
    if release.release_id != release_id(release.schema_name, release.adapter_sha256):
        raise ReleaseRefused(f"release id {release.release_id} is not content-addressed by its adapter hash")
    if trained_prompt != prompt_hash():
        raise ReleaseRefused(f"run trained with prompt {trained_prompt}, this code builds {prompt_hash()}")
    if trained_version != release.schema_version:
        raise ReleaseRefused(
            f"the ledger says schema version {release.schema_version}, the run trained on {trained_version}",
            "schema_version_mismatch",
        )
    if base_sha is not None and release.base_model_sha256 != base_sha:
        raise ReleaseRefused(
            f"trained on base {release.base_model_sha256[:12]}, the engine serves {base_sha[:12]}"
        )


def _binding(release: Release, schemas_root: Path, adapter: Path, base: Path | None) -> Binding:
    from schemas.registry import load_schema, read_index

    try:
        registered = load_schema(schemas_root, release.schema_name, release.schema_version)
        index = read_index(schemas_root, release.schema_name)
    except Exception as err:  # the registry's own errors name the file and the fix
        raise ReleaseRefused(f"schema {release.schema_name} {release.schema_version}: {err}") from None
    if index is not None and index.current != registered.version:
        raise ReleaseRefused(
            version_mismatch(release.release_id, registered.version, index.current), "schema_version_mismatch"
        )
    return Binding(
        schema_name=release.schema_name,
        schema_version=registered.version,
        release_id=release.release_id,
        schema=registered.json_schema,
        instructions=registered.instructions,
        adapter_path=str(adapter),
        decoder_schema=registered.decoder_schema,
        base_model_path=str(base) if base is not None else None,
    )


def version_mismatch(release: str, trained: str, current: str) -> str:
    return (
        f"release {release} was trained on schema version {trained[:12]}, but the registry's current version "
        f"is {current[:12]}: train and promote a run on {current[:12]} (forma ship), or make {trained[:12]} "
        "current again by registering it"
    )


def ledger_signature(root: Path) -> tuple[tuple[str, int, int], ...]:
    """What changes when any ledger file is written (atomic replace gives a new mtime and inode)."""
    if not root.is_dir():
        return ()
    stats = ((p.name, p.stat()) for p in sorted(root.glob("*.jsonl")))
    return tuple((name, st.st_mtime_ns, st.st_ino) for name, st in stats)


class ReleaseTable:
    """Schema name -> live Binding, plus which adapters the current engine has loaded."""

    def __init__(self, settings: ServeSettings, metrics: Metrics) -> None:
        self.settings, self.metrics = settings, metrics
        self.releases_root = settings.releases_root
        self.bindings: dict[str, Binding] = {}
        self.refused: dict[str, Refusal] = {}
        self.loaded: set[str] = set()
        self.signature: tuple[tuple[str, int, int], ...] | None = None
        self._lock = asyncio.Lock()
        self._current: dict[str, tuple[tuple[int, int, int], str]] = {}

    def find(self, name: str) -> Binding | None:
        """A binding by schema name or by its release id (the OpenAI `model`)."""
        if name in self.bindings:
            return self.bindings[name]
        return next((b for b in self.bindings.values() if b.release_id == name), None)

    async def refresh(self, engine: EngineClient) -> ReloadReport:
        async with self._lock:
            self.signature = ledger_signature(self.releases_root)
            live, problems = await asyncio.to_thread(read_live, self.releases_root)
            base = self.settings.base_model or await engine.served_base()
            report, bindings = ReloadReport(), {}
            for name, reason in problems.items():
                self._refuse(report, Refusal(schema_name=name, release_id="", reason=reason))
                bindings[name] = self.bindings.get(name)  # a broken ledger keeps what was served
            for name, release in live.items():
                bindings[name] = await self._bind(engine, name, release, base, report)
            report.removed = sorted(set(self.bindings) - set(bindings))
            self.bindings = {name: b for name, b in bindings.items() if b is not None}
            return report

    def _refuse(self, report: ReloadReport, refusal: Refusal) -> None:
        self.refused[refusal.schema_name] = refusal
        report.refused.append(refusal)

    async def _bind(
        self, engine: EngineClient, name: str, release: Release, base: Path | None, report: ReloadReport
    ) -> Binding | None:
        current = self.bindings.get(name)
        if current is not None and current.release_id == release.release_id:
            self.refused.pop(name, None)  # e.g. rolled back from a refused release to the bound one
            report.unchanged.append(release.release_id)
            return current
        try:
            binding = await asyncio.to_thread(resolve_binding, release, self.settings, base)
            await self.ensure_loaded(engine, binding)
        except ReleaseRefused as err:
            self._refuse(
                report,
                Refusal(schema_name=name, release_id=release.release_id, reason=str(err), code=err.code),
            )
            return current  # the old release stays live
        except EngineRejected as err:
            self._refuse(report, Refusal(schema_name=name, release_id=release.release_id, reason=str(err)))
            return current
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

    def check_current(self, binding: Binding) -> None:
        """422 when the registry moved past the schema version the release was trained on (RELIABILITY
        B5): never decode with an adapter that learned another schema than the one clients now get."""
        current = self._current_version(binding.schema_name)
        if current is not None and current != binding.schema_version:
            raise ApiError(
                422,
                "schema_version_mismatch",
                version_mismatch(binding.release_id, binding.schema_version, current),
            )

    def _current_version(self, name: str) -> str | None:
        """The registry's current version of `name`, re-read only when its index file changed (one stat)."""
        from schemas.registry import read_index

        try:
            st = os.stat(self.settings.schemas_root / name / "index.json")
        except OSError:
            return None
        key = (st.st_mtime_ns, st.st_ino, st.st_size)
        cached = self._current.get(name)
        if cached is None or cached[0] != key:
            index = read_index(self.settings.schemas_root, name)
            cached = (key, index.current if index else "")
            self._current[name] = cached
        return cached[1] or None
