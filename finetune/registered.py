"""Training data from the schema registry: the registered schema and its stored train/val splits.

Kept apart from the recipe so `train_run` stays on plain inputs; the CLI and `ship` come through here.
"""

from __future__ import annotations

from pathlib import Path

from finetune.data import TrainingData


def load_training_data(schemas_root: Path, name: str) -> TrainingData:
    """The registered dataset of `name` with the schema version it was validated against.

    Raises the registry's own error (naming the file and the fix) when the schema or pairs are missing.
    """
    from schemas.dataset import load_dataset
    from schemas.registry import load_schema

    dataset = load_dataset(schemas_root, name)
    registered = load_schema(schemas_root, name, version=dataset.manifest.schema_version)
    return TrainingData(
        name=name,
        schema=registered.json_schema,
        train=[(pair.input, pair.output) for pair in dataset.split("train")],
        val=[(pair.input, pair.output) for pair in dataset.split("val")],
        instructions=registered.instructions,
        schema_version=registered.version,
        dataset_sha256=dataset.manifest.sha256,
        counts=dict(dataset.manifest.counts),
    )
