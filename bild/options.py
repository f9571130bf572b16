"""Command-line options that `bild sweep` and `bild align` share with the example scripts.

Names, defaults and meanings are those of `bild.evaluation.build_parser`, so that the functions of
`bild.evaluation` (data loading, prompts, model loading, settings) read the parsed arguments as
they are. Both commands take `--task`, so they carry the columns of both tasks.
"""

from __future__ import annotations

import argparse

from . import evaluation
from .evaluation import SUMMARIZATION, TRANSLATION, Task, data_files

TASKS = {task.name: task for task in (TRANSLATION, SUMMARIZATION)}


def add_task_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--task", choices=sorted(TASKS), default="translation",
                        help="translation (sacreBLEU BLEU, chrF) or summarization (ROUGE); default translation")


def add_model_arguments(parser: argparse.ArgumentParser, device_map: bool = True,
                        device_help: str = "cpu, cuda, cuda:1, mps, ... (auto: accelerate's choice)",
                        ) -> argparse._ArgumentGroup:
    group = parser.add_argument_group("models")
    group.add_argument("--small", required=True, help="small model (folder or hub name)")
    group.add_argument("--large", required=True, help="large model (folder or hub name)")
    group.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"),
                       help="model weights' dtype for generation (auto: as stored)")
    group.add_argument("--device", default="auto", help=device_help)
    if device_map:
        group.add_argument("--device_map", default=None, help="'auto' spreads models too large for one device")
    return group


def add_data_arguments(parser: argparse.ArgumentParser, split_help: str) -> argparse._ArgumentGroup:
    """The example scripts' data options, with the columns of both tasks."""
    return evaluation.add_data_arguments(parser, None, split_help)


def add_prompt_arguments(parser: argparse.ArgumentParser, batch_help: str) -> argparse._ArgumentGroup:
    """The example scripts' prompt and generation options; --max_new_tokens comes from --task."""
    return evaluation.add_prompt_arguments(parser, None, batch_help)


def resolve_task(args: argparse.Namespace) -> Task:
    """The task of --task; fills in its default --max_new_tokens."""
    task = TASKS[args.task]
    if args.max_new_tokens is None:
        args.max_new_tokens = task.default_max_new_tokens
    return task


def choose_split(args: argparse.Namespace, preference: tuple[str, ...]) -> None:
    """Set --split when not given: the first of `preference` among the local files (hub data: the first).

    The example scripts evaluate on test by default; tuning and training want other splits first.
    """
    if args.split:
        return
    files = data_files(args)
    if not (args.dataset_name or files):
        raise SystemExit("Give --dataset_name or a --train_file/--validation_file/--test_file.")
    args.split = preference[0] if args.dataset_name else next(s for s in preference if s in files)
