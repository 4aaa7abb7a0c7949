"""The schema registry: plain files under `root` (forma's `home/schemas`), versioned by schema hash.

    root/NAME/index.json                      current version and history
    root/NAME/versions/VERSION/schema.json    the schema as registered (immutable)
    root/NAME/versions/VERSION/report.json    the registration report (decoder vs post-validated keywords)
    root/NAME/versions/VERSION/instructions.md
    root/NAME/templates/*.j2                  Jinja templates for `forma generate`
    root/NAME/dataset/{pairs.jsonl,manifest.json}

Readers need no lock: every file is replaced atomically. Writers of one name hold `root/.locks/NAME.lock`.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from filelock import FileLock
from pydantic import BaseModel, ConfigDict, Field

from schemas.canonical import schema_hash
from schemas.errors import RegistryError
from schemas.fileio import atomic_write_json, atomic_write_text, dump_json, staged_dir
from schemas.report import KeywordReport, RegistrationReport

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
VERSION_CHARS = 12


class VersionEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: str
    registered_at: str
    source: str = ""


class SchemaIndex(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    current: str
    versions: list[VersionEntry]


class RegisteredSchema(BaseModel):
    """One registered version: what train, eval and serve load (`load_schema`)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    name: str
    version: str = Field(description="First 12 hex of the sha256 of the canonical schema.")
    json_schema: dict[str, Any] = Field(alias="schema", description="The JSON Schema document.")
    instructions: str | None = None
    report: RegistrationReport

    @property
    def schema(self) -> dict[str, Any]:  # type: ignore[override]
        """The JSON Schema dict (same as `json_schema`; pydantic's deprecated `BaseModel.schema()` is shadowed)."""
        return self.json_schema

    @property
    def backend(self) -> str:
        return self.report.grammar.backend

    @property
    def decoder_schema(self) -> dict[str, Any]:
        """What serve and eval hand vLLM's `structured_outputs.json`: the schema, minus keywords no grammar
        backend implements (those are post-validated by `output_errors` against the full schema)."""
        return self.report.grammar.decoder_schema or self.json_schema

    @property
    def post_validated(self) -> list[KeywordReport]:
        """Keywords the decoder does not enforce: only `schemas.validation.output_errors` checks them."""
        return self.report.post_validated


def version_of(schema: dict[str, Any]) -> str:
    return schema_hash(schema)[:VERSION_CHARS]


def check_name(name: str) -> str:
    if not NAME_RE.match(name):
        raise RegistryError(
            f"invalid schema name {name!r}: use 1-64 lowercase letters, digits, '_' or '-', "
            "starting with a letter or digit"
        )
    return name


@contextmanager
def name_lock(root: Path, name: str, timeout: float = 120) -> Iterator[None]:
    """Serialise writers of one schema name across processes (two `register` calls at once)."""
    (root / ".locks").mkdir(parents=True, exist_ok=True)
    with FileLock(str(root / ".locks" / f"{name}.lock"), timeout=timeout):
        yield


def read_index(root: Path, name: str) -> SchemaIndex | None:
    path = root / check_name(name) / "index.json"
    return SchemaIndex.model_validate_json(path.read_text(encoding="utf-8")) if path.exists() else None


def list_schemas(root: Path) -> list[SchemaIndex]:
    if not root.exists():
        return []
    found = [read_index(root, p.name) for p in sorted(root.iterdir()) if (p / "index.json").exists()]
    return [i for i in found if i is not None]


def load_schema(root: Path, name: str, version: str | None = None) -> RegisteredSchema:
    """The current version of `name` (or `version`, a full id or a unique prefix)."""
    index = read_index(root, name)
    if index is None:
        known = ", ".join(i.name for i in list_schemas(root)) or "none"
        raise RegistryError(
            f"no schema named {name!r} in {root} (registered: {known}); "
            f"register it with `forma register {name} --schema FILE`"
        )
    wanted = version or index.current
    matches = [v.version for v in index.versions if v.version.startswith(wanted)]
    if len(matches) != 1:
        have = ", ".join(v.version for v in index.versions)
        raise RegistryError(f"schema {name!r} has no single version {wanted!r} (versions: {have})")
    folder = root / name / "versions" / matches[0]
    import json

    instructions = folder / "instructions.md"
    return RegisteredSchema(
        name=name,
        version=matches[0],
        schema=json.loads((folder / "schema.json").read_text(encoding="utf-8")),
        instructions=instructions.read_text(encoding="utf-8") if instructions.exists() else None,
        report=RegistrationReport.model_validate_json((folder / "report.json").read_text(encoding="utf-8")),
    )


def store_version(
    root: Path,
    name: str,
    schema: dict[str, Any],
    instructions: str | None,
    report: RegistrationReport,
    source: str,
) -> bool:
    """Write a version (caller holds the lock) and make it current. Returns False if nothing changed."""
    version = report.version
    index = read_index(root, name)
    folder = root / name / "versions" / version
    changed = False
    if not folder.exists():
        with staged_dir(folder) as tmp:
            (tmp / "schema.json").write_text(dump_json(schema), encoding="utf-8")
            (tmp / "report.json").write_text(dump_json(report.model_dump()), encoding="utf-8")
            if instructions is not None:
                (tmp / "instructions.md").write_text(instructions, encoding="utf-8")
        changed = True
    elif instructions is not None and _read(folder / "instructions.md") != instructions:
        atomic_write_text(folder / "instructions.md", instructions)
        changed = True
    now = datetime.now(UTC).isoformat(timespec="seconds")
    versions = index.versions if index else []
    if not any(v.version == version for v in versions):
        versions = [*versions, VersionEntry(version=version, registered_at=now, source=source)]
    if index is None or index.current != version or changed:
        atomic_write_json(
            root / name / "index.json",
            SchemaIndex(name=name, current=version, versions=versions).model_dump(),
        )
        return True
    return False


def _read(path: Path) -> str | None:
    return path.read_text(encoding="utf-8") if path.exists() else None
