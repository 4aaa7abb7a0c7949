"""`forma gate RUN` and `forma releases promote RUN`: the steps from an eval report to the ledger.

Both re-check the run first (prompt hash, adapter hash, registered schema version): a verdict or a
release must describe the exact adapter that will be served.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

from evals import ledger
from evals.evaluate import EVAL_JSON, EvalReport, load_report
from evals.gate import GATE_JSON, GateVerdict, decide_gate, load_policy
from evals.inputs import EvalError, checked_adapter, registered_schema
from evals.pipeline import EvalPaths
from finetune.run import RunManifest, load_run
from schemas.fileio import atomic_write_json


def current_report(folder: Path, manifest: RunManifest) -> EvalReport:
    """The run's eval.json, refused when absent or made for another adapter than the one on disk now."""
    if not (folder / EVAL_JSON).is_file():
        raise EvalError(f"run {manifest.run_id} has no {EVAL_JSON}: run `forma eval {manifest.run_id}` first")
    report = load_report(folder)
    expected = ledger.release_id(manifest.schema_name, manifest.adapter_sha256 or "")
    if report.adapters.get("candidate") != expected:
        raise EvalError(
            f"{folder / EVAL_JSON} scored adapter {report.adapters.get('candidate')}, not this run's {expected}: "
            f"evaluate again (forma eval {manifest.run_id})"
        )
    return report


def gate_run(paths: EvalPaths, run: str) -> tuple[Path, GateVerdict]:
    """Decide the gate for RUN from its eval report and its schema's policy; write gate.json."""
    folder, manifest = load_run(paths.runs, run)
    checked_adapter(folder, manifest)
    registered_schema(paths.registry, manifest.schema_name, manifest.schema_version)
    report = current_report(folder, manifest)
    policy, source = load_policy(paths.registry, manifest.schema_name)
    verdict = decide_gate(report, policy, source)
    atomic_write_json(folder / GATE_JSON, verdict.model_dump(mode="json"))
    return folder, verdict


def read_verdict(folder: Path, manifest: RunManifest) -> GateVerdict:
    path = folder / GATE_JSON
    if not path.is_file():
        raise EvalError(f"run {manifest.run_id} has no {GATE_JSON}: run `forma gate {manifest.run_id}` first")
    verdict = GateVerdict.model_validate(json.loads(path.read_text()))
    if verdict.eval_created_at != current_report(folder, manifest).created_at:
        raise EvalError(f"{path} predates the run's latest eval: run `forma gate {manifest.run_id}` again")
    return verdict


def headline(report: EvalReport) -> dict[str, float]:
    """The metrics a release records: the candidate's validity and F1 in both modes."""
    out: dict[str, float] = {}
    for mode, m in report.metrics["candidate"].items():
        out[f"{mode}_valid_rate"] = m.valid_rate
        out[f"{mode}_f1"] = m.f1
    out["n_pairs"] = report.n_pairs
    return out


def promote_run(paths: EvalPaths, run: str, force: bool = False, reason: str | None = None) -> ledger.Release:
    """Make RUN live for its schema; a failed gate is refused unless forced with a recorded reason."""
    folder, manifest = load_run(paths.runs, run)
    if not folder.is_relative_to(paths.runs.resolve()):
        # Serving refuses a release whose run folder lies outside the runs root (RELIABILITY C1).
        raise EvalError(
            f"run folder {folder} is outside the runs root {paths.runs}: move it there, then promote it"
        )
    checked_adapter(folder, manifest)
    registered_schema(paths.registry, manifest.schema_name, manifest.schema_version)
    verdict = read_verdict(folder, manifest)
    if force and not (reason and reason.strip()):
        raise EvalError("--force needs --reason TEXT: the ledger records why a gate was overridden")
    sha = manifest.adapter_sha256 or ""
    live = ledger.live_release(paths.releases, manifest.schema_name)
    if live is not None and live.adapter_sha256 == sha:
        raise EvalError(
            f"run {manifest.run_id} is already live for {manifest.schema_name} ({live.release_id})"
        )
    release = ledger.Release(
        release_id=ledger.release_id(manifest.schema_name, sha),
        schema_name=manifest.schema_name,
        schema_version=manifest.schema_version,
        run_id=manifest.run_id,
        run_dir=str(folder),
        adapter_sha256=sha,
        base_model_id=manifest.base_model.id,
        base_model_sha256=manifest.base_model.content_sha256,
        prompt_hash=manifest.prompt_hash,
        metrics=headline(current_report(folder, manifest)),
        gate_passed=verdict.passed,
        forced=force and not verdict.passed,
        reason=reason if force else None,
        promoted_at=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    return ledger.promote(paths.releases, release)
