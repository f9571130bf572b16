"""Command-line options that `bild sweep` and `bild align` share with the example scripts.

Names, defaults and meanings are those of `bild.evaluation.build_parser`, so that the functions of
`bild.evaluation` (data loading, prompts, model loading, settings) read the parsed arguments as
they are. Both commands take `--task`, so they carry the columns of both tasks.
"""

from __future__ import annotations

import argparse

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
    group = parser.add_argument_group("data")
    group.add_argument("--dataset_name", help="HuggingFace data set, e.g. iwslt2017 or xsum")
    group.add_argument("--dataset_config", help="its configuration, e.g. iwslt2017-de-en")
    for split in ("train", "validation", "test"):
        group.add_argument(f"--{split}_file", help=f"local JSON Lines file for the {split} split")
    group.add_argument("--split", help=split_help)
    group.add_argument("--max_samples", type=int, help="use only the first N examples of the split")
    group.add_argument("--source_lang", default="de", help="translation: the source's key in 'translation'")
    group.add_argument("--target_lang", default="en", help="translation: the reference's key in 'translation'")
    group.add_argument("--text_column", default="document", help="summarization: the source column")
    group.add_argument("--summary_column", default="summary", help="summarization: the reference column")
    return group


def add_prompt_arguments(parser: argparse.ArgumentParser, batch_help: str) -> argparse._ArgumentGroup:
    group = parser.add_argument_group("prompt and generation")
    group.add_argument("--source_prefix", default=None,
                       help="text put before each source, e.g. 'translate German to English: ' for T5 "
                            "(default: an instruction with the chat template, nothing otherwise)")
    group.add_argument("--prompt_template", default=None,
                       help="chat (default for decoder-only models with a chat template), plain, or a format "
                            "string with {text}")
    group.add_argument("--max_source_length", type=int, default=1024, help="cut each source to this many tokens")
    group.add_argument("--max_new_tokens", type=int, default=None,
                       help="default: the task's (translation 128, summarization 64)")
    group.add_argument("--batch_size", type=int, default=1, help=batch_help)
    group.add_argument("--seed", type=int, default=42)
    return group


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
