"""Text-to-text tasks: where a row's source and reference are, what an instruct model is asked, how output is scored."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from .. import metrics

LANGUAGES = {"de": "German", "en": "English", "fr": "French", "es": "Spanish", "it": "Italian", "nl": "Dutch",
             "pt": "Portuguese", "ro": "Romanian", "ru": "Russian", "zh": "Chinese", "ja": "Japanese", "ko": "Korean"}


@dataclass(frozen=True)
class Column:
    """One of a task's two column options: its command-line name, default and help."""

    option: str
    default: str
    help: str


@dataclass(frozen=True)
class Task:
    """A text-to-text task: how to read a row, what to ask, how to score it, and its defaults.

    `columns` are (source, reference) options; a run's column values are passed as a pair in that order.
    """

    name: str
    score: Callable[[list[str], list[str]], dict]
    quality_keys: tuple[str, ...]  # the headline numbers, primary first
    default_max_new_tokens: int
    description: str
    columns: tuple[Column, Column]
    read: Callable[[dict, tuple[str, str]], tuple[str, str]]  # (row, columns) -> (source, reference)
    ask: Callable[[tuple[str, str]], str]  # columns -> the instruction put before the text
    dataset_example: str
    config_example: str

    def source_and_reference(self, row: dict, columns: tuple[str, str]) -> tuple[str, str]:
        """The input text and the reference of one data set row."""
        return self.read(row, columns)

    def instruction(self, columns: tuple[str, str]) -> str:
        """What an instruct model is asked before the text when no --source_prefix is given."""
        return self.ask(columns)

    @property
    def default_columns(self) -> tuple[str, str]:
        return self.columns[0].default, self.columns[1].default


def _translation_pair(row: dict, columns: tuple[str, str]) -> tuple[str, str]:
    pair = row["translation"]
    return pair[columns[0]], pair[columns[1]]


def _translate(columns: tuple[str, str]) -> str:
    source, target = (LANGUAGES.get(c, c) for c in columns)
    return f"Translate the following {source} text to {target}. Reply with the translation only.\n\n"


TRANSLATION = Task(
    "translation", metrics.translation_metrics, ("bleu", "chrf"), 128,
    "Translate with Big Little Decoder and compare it with its baselines (sacreBLEU BLEU and chrF).",
    (Column("source_lang", "de", "translation: the source's key in 'translation'"),
     Column("target_lang", "en", "translation: the reference's key in 'translation'")),
    _translation_pair, _translate, "iwslt2017", "iwslt2017-de-en",
)
SUMMARIZATION = Task(
    "summarization", metrics.rouge, metrics.ROUGE_TYPES, 64,
    "Summarize with Big Little Decoder and compare it with its baselines (ROUGE with stemming).",
    (Column("text_column", "document", "summarization: the source column"),
     Column("summary_column", "summary", "summarization: the reference column")),
    lambda row, columns: (row[columns[0]], row[columns[1]]),
    lambda columns: "Summarize the following package description in one short line.\n\n",
    "xsum, cnn_dailymail", "3.0.0",
)
TASKS = {task.name: task for task in (TRANSLATION, SUMMARIZATION)}
