"""The training recipe: check the data -> build model and LoRA -> train with TRL's SFTTrainer -> save the run.

`train_run` takes plain inputs (a `TrainingData`, a prepared base model, a `TrainConfig`, the runs folder),
so the CLI, the `ship` pipeline and other packages' test fixtures all call the same function.
Under `accelerate launch` / torchrun every rank runs it; rank 0 alone writes the run folder.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from finetune.base_model import ModelInfo
from finetune.checkpoints import CompletenessMarker, check_safe_versions, resume_point
from finetune.config import TrainConfig
from finetune.data import TrainingData, build_rows, check_chat_template, check_data, check_lengths
from finetune.lifecycle import cancel_on_signals, owned
from finetune.lora_linear import use_fused_lora
from finetune.model import (
    choose_threads,
    compact_lm_head,
    keep_freed_memory,
    load_base,
    load_tokenizer,
    lora_config,
    quantization_config,
    resolve_precision,
    set_threads,
)
from finetune.order import DATA_ORDER, DataOrderLog
from finetune.progress import ProgressAndMetrics
from finetune.record import hardware, new_run_id, publish_adapter, start_manifest
from finetune.run import BaseModelRef, RunError, RunManifest, load_manifest, load_run, write_manifest

CHECKPOINTS = "checkpoints"
METRICS = "metrics.jsonl"
TENSORBOARD = "tb"


@dataclass(frozen=True)
class RunResult:
    run_id: str
    folder: Path
    manifest: RunManifest


def train_run(
    data: TrainingData,
    base: ModelInfo,
    config: TrainConfig,
    runs_root: Path,
    resume: str | None = None,
    progress: bool = True,
    callbacks: Sequence[Any] = (),
) -> RunResult:
    """Train a LoRA adapter on `data.train`, report loss on `data.val`, and publish a run folder.

    `resume` (a run id or folder) continues that run from its newest complete checkpoint, with the
    config it recorded; the dataset and base model must be the ones it started with. `callbacks` are
    extra transformers TrainerCallbacks (observers; the run's own come first).
    """
    started = time.perf_counter()
    check_safe_versions()
    ref = BaseModelRef(id=base.id, path=base.path, content_sha256=base.content_sha256)
    previous = _resumable(runs_root, resume, data, ref) if resume else None
    config = TrainConfig.model_validate(previous[1].config) if previous else config
    tokenizer = _checked_inputs(data, base, config)
    # A resumed run keeps its thread count: a different one changes float reduction order, so the result.
    threads = set_threads(previous[1].hardware["torch_threads"] if previous else choose_threads(config))
    precision = resolve_precision(config)
    keep_freed_memory()
    args = sft_args(config, precision, runs_root, progress)  # also sets up the distributed state
    folder, manifest = previous or _new_run(data, ref, config, runs_root, args, threads, precision)
    args.output_dir = str(folder / CHECKPOINTS)
    main = bool(args.process_index == 0)
    with cancel_on_signals(), owned(folder, manifest, enabled=main) as record:
        try:
            trainer, results, adapter_sha256 = _fit(
                data, tokenizer, base, config, precision, args, folder, progress, callbacks, started
            )
        except BaseException as err:
            # Recorded as cancelled, or failed (retryable or permanent); the checkpoints stay resumable.
            raised = record.ended(err)
            if raised is err:
                raise
            raise raised from err
        record.completed(adapter_sha256, **results)
    trainer.accelerator.wait_for_everyone()
    # Every rank returns what rank 0 published, so callers see one result whatever the launcher.
    return RunResult(run_id=manifest.run_id, folder=folder, manifest=load_manifest(folder))


def _fit(
    data: TrainingData,
    tokenizer: Any,
    base: ModelInfo,
    config: TrainConfig,
    precision: str,
    args: Any,
    folder: Path,
    progress: bool,
    callbacks: Sequence[Any],
    started: float,
) -> tuple[Any, dict[str, Any], str]:
    """Resume point -> trainer -> train -> evaluate -> publish the adapter (rank 0); the run's outcome."""
    main = bool(args.process_index == 0)
    checkpoint = resume_point(folder / CHECKPOINTS, clean=main)
    sink = ProgressAndMetrics(folder / METRICS, folder / TENSORBOARD, enabled=progress)
    try:
        trainer = _build_trainer(data, tokenizer, base, config, precision, args, [sink, CompletenessMarker()])
        _log_data_order(trainer, data, folder / DATA_ORDER, main)
        for callback in callbacks:
            trainer.add_callback(callback)
        with compact_lm_head(config.compact_lm_head):
            outcome = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
            evaluation = trainer.evaluate() if data.val else {}
        results = _results(trainer, outcome, evaluation, time.perf_counter() - started)
        # A full disk or a signal while publishing ends the run like one during training: nothing published.
        return trainer, results, publish_adapter(trainer.model, folder) if main else ""
    finally:
        sink.close()


def _log_data_order(trainer: Any, data: TrainingData, path: Path, main: bool) -> None:
    """Record which examples each step trains on (data_order.jsonl), by wrapping the Trainer's collator."""
    log = DataOrderLog(path, [text for text, _ in data.train], trainer.train_dataset, enabled=main)
    trainer.data_collator = log.wrap(trainer.data_collator)
    trainer.add_callback(log)


def _checked_inputs(data: TrainingData, base: ModelInfo, config: TrainConfig) -> Any:
    """Every bad-input check, before any model is loaded or any step is taken; returns the tokenizer."""
    check_data(data)
    quantization_config(config)
    tokenizer = load_tokenizer(base.path)
    check_chat_template(tokenizer, base.id)
    check_lengths(tokenizer, build_rows(data, data.train), config.max_length, "train")
    check_lengths(tokenizer, build_rows(data, data.val), config.max_length, "val")
    return tokenizer


def sft_args(config: TrainConfig, precision: str, runs_root: Path, progress: bool = True) -> Any:
    """TRL's SFTConfig for a TrainConfig; `output_dir` is set once the run folder is known."""
    import torch
    from trl import SFTConfig

    return SFTConfig(
        use_cpu=not torch.cuda.is_available(),  # transformers refuses bf16 without a GPU unless told
        output_dir=str(runs_root / ".pending"),
        per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=config.batch_size,
        gradient_accumulation_steps=config.grad_accum,
        learning_rate=config.learning_rate,
        lr_scheduler_type=config.lr_scheduler,
        warmup_steps=config.warmup_ratio,  # a float in [0, 1) is a ratio of the total steps
        weight_decay=config.weight_decay,
        num_train_epochs=config.epochs,
        max_steps=config.max_steps,
        seed=config.seed,
        data_seed=config.seed,
        bf16=precision == "bf16",
        gradient_checkpointing=config.gradient_checkpointing,
        padding_free=config.padding_free,
        # Padding-free rows are not truncated by TRL; forma refused over-long pairs up front instead.
        max_length=None if config.padding_free else config.max_length,
        completion_only_loss=True,  # loss on the assistant JSON tokens only
        logging_steps=config.logging_steps,
        save_strategy="steps",
        save_steps=config.save_steps,
        save_total_limit=config.save_total_limit,
        eval_strategy="no",
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
        ddp_find_unused_parameters=False,  # every LoRA weight is used each step; skip DDP's graph walk
    )


def _new_run(
    data: TrainingData,
    base: BaseModelRef,
    config: TrainConfig,
    runs_root: Path,
    args: Any,
    threads: int,
    precision: str,
) -> tuple[Path, RunManifest]:
    """Create the run folder and its `running` manifest (rank 0); every rank agrees on the run id."""
    from accelerate import PartialState
    from accelerate.utils import broadcast_object_list

    state = PartialState()
    run_id = broadcast_object_list([new_run_id(data.name)], from_process=0)[0]
    folder = runs_root / run_id
    hw = hardware(threads, precision, state.num_processes)
    manifest = start_manifest(run_id, data, base, config.model_dump(mode="json"), hw)
    if state.is_main_process:
        (folder / CHECKPOINTS).mkdir(parents=True)
        write_manifest(folder, manifest)
    state.wait_for_everyone()
    return folder, manifest


def _resumable(
    runs_root: Path, resume: str, data: TrainingData, base: BaseModelRef
) -> tuple[Path, RunManifest]:
    folder, manifest = load_run(runs_root, resume)
    if manifest.status == "completed":
        raise RunError(f"run {manifest.run_id} already completed; nothing to resume")
    if manifest.status == "running":
        raise RunError(
            f"run {manifest.run_id} is still training (pid {manifest.pid} on {manifest.host}, last "
            f"heartbeat {manifest.heartbeat_at}); wait for it, or cancel it (kill -TERM {manifest.pid}) first"
        )
    if manifest.schema_name != data.name or manifest.dataset.sha256 != data.dataset_sha256:
        raise RunError(
            f"run {manifest.run_id} trained on {manifest.schema_name} dataset {manifest.dataset.sha256[:12]}, "
            f"not {data.name} dataset {data.dataset_sha256[:12]}; resume with the same data or start a new run"
        )
    if manifest.base_model.content_sha256 != base.content_sha256:
        raise RunError(
            f"run {manifest.run_id} started from base {manifest.base_model.id}; resume with that base"
        )
    return folder, manifest


def _build_trainer(
    data: TrainingData,
    tokenizer: Any,
    base: ModelInfo,
    config: TrainConfig,
    precision: str,
    args: Any,
    callbacks: list[Any],
) -> Any:
    from datasets import Dataset
    from transformers import PrinterCallback
    from trl import SFTTrainer

    val = Dataset.from_list(build_rows(data, data.val)) if data.val else None
    trainer = SFTTrainer(
        model=load_base(base.path, config, precision),
        args=args,
        train_dataset=Dataset.from_list(build_rows(data, data.train)),
        eval_dataset=val,
        processing_class=tokenizer,
        peft_config=lora_config(config),
        callbacks=callbacks,
    )
    # With tqdm off, transformers prints every log dict; forma's bar and metrics.jsonl already carry them.
    trainer.remove_callback(PrinterCallback)
    if config.fused_lora:
        use_fused_lora(trainer.model)
    return trainer


def peak_memory_mb() -> float:
    import resource

    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _results(trainer: Any, outcome: Any, evaluation: dict[str, float], wall_s: float) -> dict[str, Any]:
    tokens = max((e.get("num_tokens", 0) for e in trainer.state.log_history), default=0)
    runtime = outcome.metrics.get("train_runtime") or wall_s
    metrics = {"train_loss": outcome.training_loss, "global_step": trainer.state.global_step}
    metrics |= {key: value for key, value in evaluation.items() if key.startswith("eval_")}
    metrics |= {"train_tokens": tokens, "train_runtime_s": runtime}
    return {
        "metrics": metrics,
        "tokens_per_s": tokens / runtime if runtime else None,
        "wall_s": wall_s,
        "peak_memory_mb": peak_memory_mb(),
    }
