"""The model side of a run: threads, precision, the base model, its LoRA config, the compact LM head.

Speed choices live here, each measured by `bench/train_throughput.py`:
- bf16 base weights + bf16 autocast where the hardware has it (AVX512-BF16/AMX CPUs, GPUs): the frozen
  base is never cast per step, and LoRA weights stay fp32 (PEFT upcasts them) for stable updates.
- torch threads set to the physical cores of this process's share of the machine, not the logical CPUs.
- the LM head (49152 x 576, ~20% of the model's FLOPs) projected only at the positions that carry loss,
  with bf16 matmuls and fused reductions on CPU (`finetune.lm_head`).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
from collections.abc import Iterator
from typing import Any

from finetune.attention import register_varlen_sdpa
from finetune.config import ConfigError, TrainConfig
from finetune.lm_head import cpu_log_probs, release_scratch


def local_world_size() -> int:
    return int(os.environ.get("LOCAL_WORLD_SIZE", "1"))


def choose_threads(config: TrainConfig) -> int:
    """Threads per process: the physical cores split across this node's ranks, minus cores already busy.

    Logical CPUs oversubscribe the matmul units (hyperthreads share them), and several ranks on one node
    must split the cores rather than each take them all. On a shared machine, OpenMP threads that outnumber
    the free cores stall at every barrier: measured here with the 2 cores busy, 1 thread trained ~6x
    faster than 2. So the 1-minute load average caps the count; an idle machine gets every core.
    """
    import psutil

    if config.num_threads:
        return config.num_threads
    cores = psutil.cpu_count(logical=False) or os.cpu_count() or 1
    per_rank = max(1, cores // local_world_size())
    free = cores - os.getloadavg()[0]
    return max(1, min(per_rank, round(free)))


def keep_freed_memory() -> None:
    """Let glibc reuse freed activation buffers instead of returning them to the OS after every op.

    Each training step allocates and frees hundreds of MB of short-lived tensors. glibc serves blocks over
    its mmap threshold with fresh mmaps and trims the heap top on free, so every such tensor costs a page
    fault per 4 KiB page on first touch: measured here ~140k faults and ~15% of CPU time a step. Raising the
    mmap threshold to glibc's maximum (32 MiB) and disabling trimming keeps those blocks in the heap. A no-op
    where the C library is not glibc.
    """
    import ctypes
    import ctypes.util

    m_trim_threshold, m_mmap_threshold = -1, -3  # mallopt parameters, from glibc's malloc.h
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return
    mallopt(m_mmap_threshold, 32 * 2**20)
    mallopt(m_trim_threshold, 2**31 - 1)


def set_threads(threads: int) -> int:
    import torch

    torch.set_num_threads(threads)
    return threads


def resolve_precision(config: TrainConfig) -> str:
    """'bf16' or 'fp32': what the weights and autocast use on this machine."""
    import torch

    if config.precision != "auto":
        return config.precision
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    # oneDNN runs bf16 matmuls natively only with AVX512-BF16 or AMX; emulated bf16 is slower than fp32.
    return "bf16" if torch.ops.mkldnn._is_mkldnn_bf16_supported() else "fp32"


def quantization_config(config: TrainConfig) -> Any:
    """bitsandbytes 4-bit (QLoRA) settings, refused before loading anything where it cannot run."""
    if config.quantization == "none":
        return None
    import torch

    if not torch.cuda.is_available() or importlib.util.find_spec("bitsandbytes") is None:
        raise ConfigError(
            "quantization: '4bit' (QLoRA) needs a CUDA GPU and the bitsandbytes package; "
            "this machine lacks one, so use --set quantization=none"
        )
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
    )


def load_base(path: str, config: TrainConfig, precision: str) -> Any:
    import torch
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = {"dtype": torch.bfloat16 if precision == "bf16" else torch.float32}
    quant = quantization_config(config)
    if quant is not None:
        kwargs["quantization_config"] = quant
        kwargs["device_map"] = {"": int(os.environ.get("LOCAL_RANK", "0"))}
    # SDPA is the fastest attention on CPU; padding-free batches get it per example (finetune.attention).
    attention = register_varlen_sdpa() if config.padding_free else "sdpa"
    return AutoModelForCausalLM.from_pretrained(path, attn_implementation=attention, **kwargs)


def load_tokenizer(path: str) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


def lora_config(config: TrainConfig) -> Any:
    from peft import LoraConfig

    return LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=list(config.target_modules),
        use_dora=config.use_dora,
        use_rslora=config.use_rslora,
        bias="none",
        task_type="CAUSAL_LM",
    )


@contextlib.contextmanager
def compact_lm_head(enabled: bool) -> Iterator[None]:
    """Score only the loss positions, with a CPU-fast head (`finetune.lm_head`), for the duration of a block.

    TRL 1.16 (`trl.trainer.utils.add_fused_lm_head`) projects only positions whose label is not -100 when
    `_use_triton(device)` is true, and every position elsewhere, because on Neuron a varying number of
    positions recompiles the graph. Eager CPU has no such cost, so here prompt positions (most of each
    sequence) skip the 49152-wide projection, and the loss positions go through `cpu_log_probs` instead of
    TRL's GPU-shaped tiles. Scoped, so other trainers in the process are untouched.
    """
    import types

    import trl.trainer.utils as trl_utils

    original_triton, original_function = trl_utils._use_triton, trl_utils._ChunkedLogProbFunction
    if enabled:
        trl_utils._use_triton = lambda device: device.type == "cpu" or original_triton(device)
        trl_utils._ChunkedLogProbFunction = types.SimpleNamespace(apply=cpu_log_probs)  # type: ignore[misc,assignment]
    try:
        yield
    finally:
        trl_utils._use_triton, trl_utils._ChunkedLogProbFunction = original_triton, original_function  # type: ignore[misc]
        release_scratch()
