"""`forma eval RUN`: find and check the run, pick the pairs and the contenders, evaluate, write reports.

The refusals (missing schema version, prompt hash, adapter hash) all happen before the engine starts,
so a bad run costs no model time.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from evals import ledger
from evals.engines import AdapterRef, Engine, EngineKind, open_engine, rank_cap
from evals.evaluate import Contender, EvalReport, evaluate
from evals.inputs import (
    Pair,
    SchemaRef,
    checked_adapter,
    golden_pairs,
    registered_schema,
    split_pairs,
)
from evals.reports import write_reports
from finetune.run import RunManifest, load_manifest, load_run


@dataclass(frozen=True)
class EvalPaths:
    """forma's folders, injected by the CLI (no package but forma/ reads FORMA_HOME)."""

    registry: Path
    runs: Path
    releases: Path


def candidate_contenders(folder: Path, manifest: RunManifest, schema: SchemaRef) -> list[Contender]:
    adapter = checked_adapter(folder, manifest)
    name = ledger.release_id(manifest.schema_name, manifest.adapter_sha256 or "")
    return [
        Contender(role="candidate", adapter=AdapterRef(name, adapter), schema=schema),
        Contender(role="base", adapter=None, schema=schema, with_schema=True),
    ]


def live_contender(paths: EvalPaths, manifest: RunManifest) -> tuple[Contender | None, str | None]:
    """The schema's live release (unless it is the candidate itself), or why it cannot be compared.

    A live release that no longer loads (adapter changed on disk, prompt format changed since, schema
    version gone) must not block evaluating its replacement: it is left out, and the reason goes into the
    report, where the gate's regression rule fails on it (overridable with a recorded reason).
    """
    live = ledger.live_release(paths.releases, manifest.schema_name)
    if live is None or live.adapter_sha256 == manifest.adapter_sha256:
        return None, None
    live_folder = Path(live.run_dir)
    try:
        adapter = checked_adapter(live_folder, load_manifest(live_folder))
        schema = registered_schema(paths.registry, live.schema_name, live.schema_version)
    except RuntimeError as err:
        return None, f"the live release {live.release_id} could not be loaded for comparison: {err}"
    return Contender(role="live", adapter=AdapterRef(live.release_id, adapter), schema=schema), None


def pick_pairs(
    paths: EvalPaths, schema: SchemaRef, split: str, pairs_file: Path | None
) -> tuple[list[Pair], str]:
    if pairs_file is not None:
        return golden_pairs(pairs_file, schema.schema), str(pairs_file)
    return split_pairs(paths.registry, schema.name, split), f"split {split}"


def evaluate_run(
    paths: EvalPaths,
    run: str,
    split: str = "test",
    pairs_file: Path | None = None,
    engine: EngineKind | Engine = "vllm",
    max_tokens: int = 256,
    limit: int | None = None,
    progress: bool = False,
) -> tuple[Path, EvalReport]:
    """Evaluate RUN (an id or a folder) and write eval.json/.md/.html and generations.jsonl beside it.

    `engine` is a kind to start (and stop) here, or an engine already running, which the caller owns.
    """
    folder, manifest = load_run(paths.runs, run)
    schema = registered_schema(paths.registry, manifest.schema_name, manifest.schema_version)
    contenders = candidate_contenders(folder, manifest, schema)
    live, live_skipped = live_contender(paths, manifest)
    contenders += [live] if live else []
    pairs, source = pick_pairs(paths, schema, split, pairs_file)
    pairs = pairs[:limit] if limit else pairs
    if isinstance(engine, str):
        adapters = [c.adapter for c in contenders if c.adapter is not None]
        base = Path(manifest.base_model.path)
        llm = open_engine(engine, base, max_lora_rank=rank_cap(adapters), progress=progress)
        try:
            report = evaluate(llm, folder, manifest.run_id, schema, contenders, pairs, source, max_tokens)
        finally:
            llm.close()
    else:
        report = evaluate(engine, folder, manifest.run_id, schema, contenders, pairs, source, max_tokens)
    report = report.model_copy(update={"live_skipped": live_skipped})
    write_reports(folder, report)
    return folder, report
