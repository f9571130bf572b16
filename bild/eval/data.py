"""Examples of a run: a hub data set or local JSON Lines files, through `datasets`."""

from __future__ import annotations

from dataclasses import dataclass, field

from .tasks import Task

SPLITS = ("train", "validation", "test")  # the local files' splits, one --<split>_file option each


@dataclass(frozen=True)
class Example:
    """One row to generate for: `id` is unique within the run and keys resumption."""

    id: str
    source: str
    reference: str


@dataclass(frozen=True)
class DataSpec:
    """Where the examples come from. `files`: split -> local JSON Lines file; `columns`: (source, reference)."""

    dataset_name: str | None = None
    dataset_config: str | None = None
    files: dict[str, str] = field(default_factory=dict)
    split: str | None = None
    max_samples: int | None = None
    columns: tuple[str, str] = ("de", "en")

    @property
    def given(self) -> bool:
        return bool(self.dataset_name or self.files)

    @property
    def resolved_split(self) -> str:
        return resolve_split(self.split, self.files)


def resolve_split(split: str | None, files: dict[str, str]) -> str:
    """--split, else the first of test, validation, train that exists (hub data sets: test)."""
    if split:
        return split
    return next((name for name in ("test", "validation", "train") if name in files), "test")


def load_examples(task: Task, data: DataSpec) -> list[Example]:
    """The first `max_samples` rows of the split, with ids ("id" column when unique, else row index)."""
    from datasets import load_dataset

    split = data.resolved_split
    if data.dataset_name:
        dataset = load_dataset(data.dataset_name, data.dataset_config, split=split)
    else:
        dataset = load_dataset("json", data_files=data.files, split=split)
    if data.max_samples is not None:
        dataset = dataset.select(range(min(data.max_samples, len(dataset))))
    rows = list(dataset)
    ids = [str(row["id"]) for row in rows] if rows and "id" in rows[0] else []
    # Resuming matches finished work by id, so ids must be unique.
    if len(set(ids)) != len(rows):
        ids = [str(i) for i in range(len(rows))]
    return [Example(i, *task.source_and_reference(row, data.columns)) for i, row in zip(ids, rows)]
