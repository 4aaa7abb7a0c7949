"""`forma ship NAME`: validate -> split -> train -> eval -> gate -> promote -> reload server -> smoke test.

Each step reads the previous step's artifact, so a re-run after a crash reuses what is finished: a
completed run with the same inputs (schema version, dataset hash, base model hash, prompt hash, config) is
not trained again, an interrupted one is resumed, an eval report of the same adapter is not redone, and a
release already live is not promoted twice. A failed gate stops before promotion: nothing live changes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from forma.console import console
from forma.paths import Layout


class ShipOptions(BaseModel):
    """What `forma ship` was asked to do."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="The registered schema to ship.")
    config: Path | None = Field(default=None, description="TrainConfig YAML file.")
    sets: list[str] = Field(default_factory=list, description="--set key=value overrides of the config.")
    base: str | None = Field(default=None, description="Base model id, folder or hub id; default embedded.")
    engine: str = Field(default="vllm", description="Eval engine: vllm (the serving engine) or hf.")
    eval_limit: int | None = Field(default=None, description="Evaluate only the first N test pairs.")
    server: str | None = Field(default=None, description="URL of a running forma server to deploy to.")
    api_key: str | None = Field(default=None, description="Admin-scoped API key for that server.")


class ShipError(RuntimeError):
    """A step that cannot go on; the message says which and why."""


@dataclass
class ShipSummary:
    name: str
    run_id: str = ""
    run_folder: str = ""
    reused: list[str] = field(default_factory=list)
    gate_passed: bool | None = None
    release_id: str | None = None
    smoke: dict[str, Any] | None = None
    timings: dict[str, float] = field(default_factory=dict)


STEPS = ["validate", "split", "train", "eval", "gate", "promote", "deploy", "smoke"]


@contextmanager
def step(summary: ShipSummary, name: str) -> Iterator[None]:
    """One line per step with its number and duration: the pipeline's progress display."""
    index = STEPS.index(name) + 1
    console.print(f"[bold]\\[{index}/{len(STEPS)}] {name}[/] ...")
    started = time.perf_counter()
    yield
    summary.timings[name] = round(time.perf_counter() - started, 1)
    console.print(f"[bold]\\[{index}/{len(STEPS)}] {name}[/] done in {summary.timings[name]} s")


def ship(options: ShipOptions, paths: Layout, show_gate: Callable[[Any], None]) -> ShipSummary:
    from evals.pipeline import EvalPaths

    eval_paths = EvalPaths(registry=paths.schemas, runs=paths.runs, releases=paths.releases)
    summary = ShipSummary(name=options.name)
    with step(summary, "validate"):
        data, config, base = _validate(options, paths)
    with step(summary, "split"):
        console.print(f"  dataset {data.dataset_sha256[:12]}: {data.counts}")
    with step(summary, "train"):
        folder = _train(options, paths, data, config, base, summary)
    with step(summary, "eval"):
        _evaluate(options, eval_paths, folder, summary)
    with step(summary, "gate"):
        verdict = _gate(eval_paths, folder, summary, show_gate)
    if not verdict.passed:
        return summary
    with step(summary, "promote"):
        _promote(eval_paths, folder, summary)
    if options.server:
        with step(summary, "deploy"):
            _reload(options)
        with step(summary, "smoke"):
            summary.smoke = _smoke(options, paths, data, summary)
    return summary


def _validate(options: ShipOptions, paths: Layout) -> tuple[Any, Any, Any]:
    """Everything that can be refused is refused here, before a model loads."""
    from finetune.base_model import resolve_base
    from finetune.config import load_config
    from finetune.registered import load_training_data

    data = load_training_data(paths.schemas, options.name)
    if not data.counts.get("test"):
        raise ShipError(f"{options.name}: the test split is empty; register more pairs so the gate can judge")
    config = load_config(options.config, options.sets)
    return data, config, resolve_base(options.base, paths.models)


def matching_run(runs: Path, data: Any, config: Any, base: Any) -> tuple[Path, Any] | None:
    """The newest run trained on exactly these inputs, completed or resumable."""
    from finetune.run import RunError, load_manifest
    from schemas.prompt import prompt_hash

    wanted = config.model_dump(mode="json")
    found = []
    for folder in sorted(runs.glob(f"{data.name}-*")) if runs.is_dir() else []:
        try:
            manifest = load_manifest(folder)
        except RunError:
            continue
        same = (
            manifest.schema_version == data.schema_version
            and manifest.dataset.sha256 == data.dataset_sha256
            and manifest.base_model.content_sha256 == base.content_sha256
            and manifest.prompt_hash == prompt_hash()
            and manifest.config == wanted
        )
        if same:
            found.append((folder, manifest))
    completed = [f for f in found if f[1].status == "completed"]
    return (completed or found)[-1] if found else None


def _train(
    options: ShipOptions, paths: Layout, data: Any, config: Any, base: Any, summary: ShipSummary
) -> Path:
    from finetune.train import train_run

    match = matching_run(paths.runs, data, config, base)
    if match and match[1].status == "completed":
        summary.reused.append("train")
        console.print(f"  reusing completed run {match[1].run_id}")
        folder = match[0]
    else:
        resume = match[1].run_id if match else None
        if resume:
            console.print(f"  resuming run {resume} from its last complete checkpoint")
        folder = train_run(data, base, config, paths.runs, resume=resume).folder
    summary.run_id, summary.run_folder = folder.name, str(folder)
    return folder


def _evaluate(options: ShipOptions, eval_paths: Any, folder: Path, summary: ShipSummary) -> None:
    from evals.inputs import EvalError
    from evals.pipeline import evaluate_run
    from evals.releasing import current_report
    from finetune.run import load_manifest

    tests = int(load_manifest(folder).dataset.counts.get("test", 0))
    wanted = min(tests, options.eval_limit) if options.eval_limit else tests
    try:
        report = current_report(folder, load_manifest(folder))
    except EvalError:
        report = None
    # Reuse only a report of this adapter on the same pairs: a different --eval-limit is a new eval.
    if report is not None and report.source == "split test" and report.n_pairs == wanted:
        summary.reused.append("eval")
        console.print(f"  reusing {folder / 'eval.json'}")
        return
    evaluate_run(eval_paths, str(folder), engine=options.engine, limit=options.eval_limit, progress=True)  # type: ignore[arg-type]


def _gate(eval_paths: Any, folder: Path, summary: ShipSummary, show_gate: Callable[[Any], None]) -> Any:
    from evals.releasing import gate_run

    _, verdict = gate_run(eval_paths, str(folder))
    show_gate(verdict)
    summary.gate_passed = verdict.passed
    return verdict


def _promote(eval_paths: Any, folder: Path, summary: ShipSummary) -> None:
    from evals import ledger
    from evals.releasing import promote_run
    from finetune.run import load_manifest

    manifest = load_manifest(folder)
    live = ledger.live_release(eval_paths.releases, manifest.schema_name)
    if live is not None and live.adapter_sha256 == manifest.adapter_sha256:
        summary.reused.append("promote")
        summary.release_id = live.release_id
        console.print(f"  {live.release_id} is already live")
        return
    summary.release_id = promote_run(eval_paths, str(folder)).release_id


def _headers(options: ShipOptions) -> dict[str, str]:
    return {"Authorization": f"Bearer {options.api_key}"} if options.api_key else {}


def _reload(options: ShipOptions) -> None:
    import httpx

    response = httpx.post(f"{options.server}/admin/reload", headers=_headers(options), timeout=120)
    if response.status_code != 200:
        raise ShipError(
            f"server {options.server} refused the reload: {response.status_code} {response.text[:300]}"
        )


def _smoke(options: ShipOptions, paths: Layout, data: Any, summary: ShipSummary) -> dict[str, Any]:
    """One real extraction through the server; its answer must come from the new release and validate."""
    import httpx

    from schemas.dataset import load_dataset
    from schemas.validation import output_errors

    text = load_dataset(paths.schemas, options.name).split("test")[0].input
    url = f"{options.server}/v1/extract/{options.name}"
    response = httpx.post(url, json={"text": text}, headers=_headers(options), timeout=120)
    if response.status_code != 200:
        raise ShipError(f"smoke request to {url} failed: {response.status_code} {response.text[:300]}")
    body = response.json()
    if body.get("release") != summary.release_id:
        raise ShipError(f"smoke request was answered by {body.get('release')}, not {summary.release_id}")
    errors = output_errors(data.schema, body["data"])
    if errors:
        raise ShipError(f"smoke answer breaks the schema: {errors[0]}")
    return body
