"""Command-line options -> typed specs: the only module that turns an `argparse.Namespace` into settings.

The example scripts call `main(task, argv)`; `bild sweep` and `bild align` have their parsers here too,
built from the same groups (with `--task`, so with the columns of both tasks), and hand `run_sweep` /
`run_align` a spec. Every --help shows the defaults.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import Sequence

from .. import align, sweep
from ..config import BiLDConfig
from ..distill import TrainSpec
from ..frontier import QUALITY_KEYS, fallback_list, threshold_list
from .data import SPLITS, DataSpec
from .evaluate import EvalSpec, GenerationSpec, evaluate, fallback_value
from .prompts import PromptSpec
from .systems import BASELINES, DraftVocabSpec, ModelSpec
from .tasks import TASKS, Task



class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """--help shows each option's default (where it has one)."""


def new_parser(description: str, prog: str | None = None, subparsers=None, name: str | None = None,
           help: str | None = None) -> argparse.ArgumentParser:
    """A parser (or a subcommand's, under `subparsers`) whose --help shows the defaults."""
    if subparsers is not None:
        return subparsers.add_parser(name, help=help, description=description, formatter_class=HelpFormatter)
    return argparse.ArgumentParser(prog, description=description, formatter_class=HelpFormatter)


def add_task_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--task", choices=sorted(TASKS), default="translation",
                   help="translation (sacreBLEU BLEU, chrF) or summarization (ROUGE)")


def add_model_arguments(p: argparse.ArgumentParser, device_map: bool = True,
                        device_help: str = "cpu, cuda, cuda:1, mps, ... (auto: accelerate's choice)",
                        ) -> argparse._ArgumentGroup:
    """--small and --large (both required), dtype and device: `bild sweep`'s and `bild align`'s models."""
    group = p.add_argument_group("models")
    group.add_argument("--small", required=True, help="small model (folder or hub name)")
    group.add_argument("--large", required=True, help="large model (folder or hub name)")
    add_device_arguments(group, device_map, device_help, "model weights' dtype for generation (auto: bfloat16 where the device computes it natively, else the faster one measured)")
    return group


def add_device_arguments(group, device_map: bool, device_help: str, dtype_help: str) -> None:
    group.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"), help=dtype_help)
    group.add_argument("--device", default="auto", help=device_help)
    if device_map:
        group.add_argument("--device_map", default=None, help="'auto' spreads models too large for one device")


def add_data_arguments(p: argparse.ArgumentParser, task: Task | None, split_help: str) -> argparse._ArgumentGroup:
    """Data options: a hub data set or local files, the split, and the columns of `task` (of both when None)."""
    tasks = [task] if task else list(TASKS.values())
    d = p.add_argument_group("data")
    d.add_argument("--dataset_name", help="HuggingFace data set, e.g. " + (tasks[0].dataset_example if task
                                                                            else "iwslt2017 or xsum"))
    d.add_argument("--dataset_config", help="its configuration, e.g. " + tasks[0].config_example)
    for split in SPLITS:
        d.add_argument(f"--{split}_file", help=f"local JSON Lines file for the {split} split")
    d.add_argument("--split", help=split_help)
    d.add_argument("--max_samples", type=int, help="use only the first N examples of the split")
    for t in tasks:
        for column in t.columns:
            d.add_argument(f"--{column.option}", default=column.default, help=column.help)
    return d


def add_prompt_arguments(p: argparse.ArgumentParser, task: Task | None, batch_help: str) -> argparse._ArgumentGroup:
    """Prompt and generation options; --max_new_tokens defaults to `task`'s (None: to --task's)."""
    g = p.add_argument_group("prompt and generation")
    g.add_argument("--source_prefix", default=None,
                   help="text put before each source, e.g. 'translate German to English: ' or 'summarize: ' for T5 "
                        "(None: an instruction with the chat template, nothing otherwise)")
    g.add_argument("--prompt_template", default=None,
                   help="chat (None: chat for decoder-only models with a chat template, else plain), plain, or a "
                        "format string with {text}, e.g. 'German: {text}\\nEnglish:'")
    g.add_argument("--max_source_length", type=int, default=1024, help="cut each source to this many tokens")
    g.add_argument("--max_new_tokens", type=int, default=task.default_max_new_tokens if task else None,
                   help="None: the task's (translation 128, summarization 64)")
    g.add_argument("--batch_size", type=int, default=1, help=batch_help)
    g.add_argument("--seed", type=int, default=42, help="random seed set before the generation (and training)")
    return g


def add_output_arguments(p: argparse.ArgumentParser, output_help: str, overwrite_help: str,
                         required: bool = False) -> argparse._ArgumentGroup:
    o = p.add_argument_group("output")
    o.add_argument("--output_dir", required=required, help=output_help)
    o.add_argument("--overwrite_output_dir", action="store_true", help=overwrite_help)
    return o


def build_parser(task: Task) -> argparse.ArgumentParser:
    """The options both example scripts share, plus the task's own columns."""
    p = new_parser(task.description)
    m = p.add_argument_group("models")
    m.add_argument("--model", default="bild",
                   help="'bild' for Big Little Decoder with --small/--large, or a model path or hub name to run "
                        "alone as a baseline")
    m.add_argument("--small", help="small model (path or hub name); None: the fetched qwen2.5-coder pair")
    m.add_argument("--large", help="large model (path or hub name); None: the fetched qwen2.5-coder pair")
    m.add_argument("--bild_fallback_threshold", "--bild_fallback", dest="fallback_threshold", type=fallback_value,
                   default=BiLDConfig.fallback_threshold,
                   help="auto (the default): draft while the expected accepted tokens are worth the measured cost "
                        "of a small step (learned as it goes; the large model alone where drafting cannot pay); a "
                        "number: the paper's rule, fall back to the large model below this probability (0.6 with "
                        "--bild_rollback 3 is the paper's setting)")
    m.add_argument("--bild_rollback_threshold", "--bild_rollback", dest="rollback_threshold", type=float,
                   default=BiLDConfig.rollback_threshold, help="roll back drafts whose large-model loss exceeds this")
    m.add_argument("--max_small_steps", type=int, default=BiLDConfig.max_small_steps,
                   help="at most this many small-model drafts per round")
    m.add_argument("--compare", default=None,
                   help=f"comma-separated systems run on the same inputs: the baselines {','.join(BASELINES)}, and more "
                        "BiLD settings as bild:FALLBACK:ROLLBACK[:MAX_SMALL_STEPS][:keep|:nokeep] (e.g. bild:0.4:5, bild:auto:0; "
                        "keep/nokeep set keep_fallback_draft); None: large for the default job with no models and no "
                        "data given, otherwise none")
    m.add_argument("--bild_draft_vocab", type=int, default=None, metavar="N",
                   help="the small model drafts only from the N tokens used most in the references of "
                        "--bild_draft_vocab_file (a cheaper small step; exactness unchanged); None: every token")
    m.add_argument("--bild_draft_vocab_file", default=None,
                   help="JSON Lines file whose references choose --bild_draft_vocab's tokens (None: --train_file); "
                        "never the file evaluated on")
    add_device_arguments(m, True, "cpu, cuda, cuda:1, mps, ... (auto: accelerate's choice)",
                         "model weights' dtype (auto: bfloat16 where the device computes it natively, else the faster one measured)")
    add_data_arguments(p, task, split_help="split to evaluate (None: test, or the only file given)")
    add_prompt_arguments(p, task, batch_help="examples per generate call")
    add_output_arguments(p, "where predictions and metrics go; rerun with the same folder to resume "
                            "(None: runs/<task>-<fingerprint of the settings>)",
                         "discard earlier results in --output_dir")
    return p


# ---------------------------------------------------------------------------------------------
# Namespace -> specs


def options(args: argparse.Namespace) -> dict:
    """The parsed options as a plain dict (config.json's "args"), without the subcommand's function."""
    return {k: v for k, v in vars(args).items() if k != "func"}


def task_of(args: argparse.Namespace) -> Task:
    """The task of --task."""
    return TASKS[args.task]


def data_files(args: argparse.Namespace) -> dict[str, str]:
    files = {split: getattr(args, f"{split}_file") for split in SPLITS}
    return {split: path for split, path in files.items() if path}


def chosen_split(args: argparse.Namespace, preference: tuple[str, ...]) -> str:
    """--split, else the first of `preference` among the local files (hub data: the first).

    The example scripts evaluate on test by default; tuning and training want other splits first.
    """
    if args.split:
        return args.split
    files = data_files(args)
    if not (args.dataset_name or files):
        raise SystemExit("Give --dataset_name or a --train_file/--validation_file/--test_file.")
    return preference[0] if args.dataset_name else next(s for s in preference if s in files)


def data_spec(task: Task, args: argparse.Namespace, split: str | None = None) -> DataSpec:
    columns = tuple(getattr(args, c.option) for c in task.columns)
    return DataSpec(args.dataset_name, args.dataset_config, data_files(args), split or args.split, args.max_samples,
                    columns)


def prompt_spec(args: argparse.Namespace) -> PromptSpec:
    return PromptSpec(args.prompt_template, args.source_prefix, args.max_source_length)


def generation_spec(task: Task, args: argparse.Namespace) -> GenerationSpec:
    max_new_tokens = args.max_new_tokens if args.max_new_tokens is not None else task.default_max_new_tokens
    return GenerationSpec(max_new_tokens, args.batch_size, args.seed)


def model_spec(args: argparse.Namespace) -> ModelSpec:
    return ModelSpec(args.dtype, args.device, getattr(args, "device_map", None))


def eval_spec(task: Task, args: argparse.Namespace) -> EvalSpec:
    """The example scripts' options as an EvalSpec (defaults not yet filled in: see evaluate.resolve_defaults)."""
    draft_vocab = None
    if args.bild_draft_vocab is not None:
        source = args.bild_draft_vocab_file or args.train_file
        if args.bild_draft_vocab < 1 or not source:
            raise SystemExit("--bild_draft_vocab N needs N >= 1 and a --bild_draft_vocab_file (or --train_file) whose "
                             "references choose the tokens.")
        draft_vocab = DraftVocabSpec(args.bild_draft_vocab, source)
    return EvalSpec(task, data_spec(task, args), prompt_spec(args), generation_spec(task, args), model_spec(args),
                    args.model, args.small, args.large,
                    (args.fallback_threshold, args.rollback_threshold, args.max_small_steps), args.compare,
                    args.output_dir, args.overwrite_output_dir, options(args), draft_vocab)


def main(task: Task, argv: Sequence[str] | None = None, default_data: str | None = None) -> dict | None:
    """Run the command line; return the metrics (on the main process; None on the others)."""
    args = build_parser(task).parse_args(argv)
    return evaluate(eval_spec(task, args), list(sys.argv[1:] if argv is None else argv), default_data)


# ---------------------------------------------------------------------------------------------
# `bild sweep` and `bild align`


def sweep_parser(subparsers=None) -> argparse.ArgumentParser:
    description = ("Run BiLD at every point of a fallback x rollback grid on the same examples, against the large "
                   "and small models alone; write a table and a speed-up/quality plot with the Pareto frontier, and "
                   "recommend the fastest setting within a quality budget. Resumable.")
    parser = new_parser(description, "bild sweep", subparsers, "sweep", "tune BiLD's thresholds on a grid")
    add_task_argument(parser)
    add_model_arguments(parser)
    grid = parser.add_argument_group("grid and recommendation")
    grid.add_argument("--fallback", type=fallback_list, default=threshold_list("0.3,0.5,0.7,0.9"),
                      help="comma-separated fallback thresholds (inf = always fall back; auto = fallback_threshold "
                           "\"auto\", crossed with every rollback threshold like the others)")
    grid.add_argument("--rollback", type=threshold_list, default=threshold_list("1,2,3,5,inf"),
                      help="comma-separated rollback thresholds in nats (0 = lossless, inf = never roll back)")
    grid.add_argument("--max_small_steps", type=int, default=BiLDConfig.max_small_steps,
                      help="at most this many small-model drafts per round, at every point")
    grid.add_argument("--metric", choices=QUALITY_KEYS, default=None,
                      help="quality on the plot and for the recommendation (None: bleu for translation, "
                           "rougeL for summarization)")
    grid.add_argument("--max_quality_drop", type=float, default=0.5,
                      help="recommend the fastest point at most this many metric points below the large model")
    grid.add_argument("--draft_vocab", type=vocab_sizes, default=(0,),
                      help="comma-separated draft vocabulary sizes every point runs at: N, the small model drafts "
                           "from the N tokens used most in --draft_vocab_file's references (a cheaper small step; "
                           "exactness unchanged); 0, from the whole vocabulary (default 0)")
    grid.add_argument("--draft_vocab_file", default=None,
                      help="JSON Lines file whose references choose --draft_vocab's tokens (None: --train_file); "
                           "never the file swept on")
    add_data_arguments(parser, None, split_help="split to sweep over (None: validation, else test, else train)")
    add_prompt_arguments(parser, None, batch_help="generation batch size of every system")
    add_output_arguments(parser, "where everything goes; rerun with the same folder to resume "
                                 "(None: runs/sweep-<task>-<fingerprint of the settings>)",
                         "discard an earlier sweep in --output_dir")
    if subparsers is not None:
        parser.set_defaults(func=sweep_command)
    return parser


def sweep_command(args: argparse.Namespace) -> int:
    sweep.run_sweep(sweep_spec(args))
    return 0


def sweep_spec(args: argparse.Namespace) -> sweep.SweepSpec:
    """`bild sweep`'s options as a SweepSpec (split: validation, else test, else train; metric: the task's)."""
    task = task_of(args)
    metric = args.metric or sweep.DEFAULT_METRIC[task.name]
    if metric not in task.quality_keys:
        raise SystemExit(f"--metric for {task.name} is one of {', '.join(task.quality_keys)}; got {metric}.")
    split = chosen_split(args, ("validation", "test", "train"))
    return sweep.SweepSpec(task, args.small, args.large, tuple(args.fallback), tuple(args.rollback),
                           args.max_small_steps, metric, args.max_quality_drop, data_spec(task, args, split),
                           prompt_spec(args), generation_spec(task, args), model_spec(args), args.output_dir,
                           args.overwrite_output_dir, options(args), tuple(args.draft_vocab),
                           args.draft_vocab_file or args.train_file)


def vocab_sizes(text: str) -> tuple[int, ...]:
    """'0,16384' -> (0, 16384): draft vocabulary sizes, 0 for the whole vocabulary; repeats dropped."""
    try:
        sizes = [int(item) for item in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of token counts") from None
    if any(size < 0 for size in sizes):
        raise argparse.ArgumentTypeError("draft vocabulary sizes are >= 0 (0: the whole vocabulary)")
    return tuple(dict.fromkeys(sizes))


def align_parser(subparsers=None) -> argparse.ArgumentParser:
    description = ("Fine-tune the small model on the large model's greedy outputs (sequence-level distillation), so "
                   "that BiLD accepts more of its drafts; report teacher-forced agreement before and after.")
    parser = new_parser(description, "bild align", subparsers, "align",
                        "fine-tune the small model to agree with the large")
    add_task_argument(parser)
    models = add_model_arguments(parser, device_map=False, device_help="auto (accelerate's choice, one device per "
                                 "process) or cpu; pick GPUs with CUDA_VISIBLE_DEVICES or accelerate launch")
    # Each process holds whole models on its own device: accelerate's data parallelism.
    parser.set_defaults(device_map=None)
    models.add_argument("--teacher", choices=("large", "bild"), default="large",
                        help="produce the large model's greedy outputs with it alone, or with lossless BiLD "
                             "(rollback 0: identical outputs, usually faster)")
    data = add_data_arguments(parser, None, split_help="split of the training inputs (None: train, else "
                                                           "validation, else test)")
    data.add_argument("--eval_samples", type=int, default=None,
                        help="hold out the last N inputs to measure agreement (default: 10%%, at most 200)")
    add_prompt_arguments(parser, None, batch_help="batch size for generating the large model's outputs")
    train = parser.add_argument_group("training")
    train.add_argument("--learning_rate", type=float, default=5e-5, help="AdamW's peak learning rate")
    train.add_argument("--num_train_epochs", type=int, default=3, help="passes over the training inputs")
    train.add_argument("--per_device_train_batch_size", type=int, default=8, help="examples per step and process")
    train.add_argument("--per_device_eval_batch_size", type=int, default=8, help="batch size of the agreement")
    train.add_argument("--gradient_accumulation_steps", type=int, default=1, help="steps per update")
    train.add_argument("--weight_decay", type=float, default=0.0, help="AdamW's weight decay")
    train.add_argument("--warmup_steps", type=int, default=0, help="updates of linear warm-up")
    train.add_argument("--lr_scheduler_type", default="linear", choices=("linear", "cosine", "constant",
                                                                          "constant_with_warmup"),
                       help="learning-rate schedule")
    train.add_argument("--save_steps", type=int, default=0,
                       help="also checkpoint the training every N updates (it is checkpointed after every epoch); "
                            "a rerun with the same settings resumes from the checkpoint")
    train.add_argument("--max_grad_norm", type=float, default=1.0, help="clip gradients to this norm (0: no clipping)")
    lora = parser.add_argument_group("LoRA (needs peft)")
    lora.add_argument("--lora_r", type=int, default=0, help="LoRA rank; 0 fine-tunes every weight")
    lora.add_argument("--lora_alpha", type=int, default=None, help="None: 2 x rank")
    lora.add_argument("--lora_dropout", type=float, default=0.05, help="dropout on the LoRA layers")
    lora.add_argument("--lora_target_modules", default="all-linear",
                      help="comma-separated module names, or all-linear")
    add_output_arguments(parser, "the aligned small model (from_pretrained folder), its report, and align/ with "
                                 "the large model's outputs; rerun with the same folder to reuse them",
                         "discard the large model's outputs in it", required=True)
    if subparsers is not None:
        parser.set_defaults(func=align_command)
    return parser


def align_command(args: argparse.Namespace) -> int:
    align.run_align(align_spec(args))
    return 0


def align_spec(args: argparse.Namespace) -> align.AlignSpec:
    """`bild align`'s options as an AlignSpec (split: train, else validation, else test)."""
    task = task_of(args)
    split = chosen_split(args, ("train", "validation", "test"))
    train = TrainSpec(**{f.name: getattr(args, f.name) for f in dataclasses.fields(TrainSpec)})
    return align.AlignSpec(task, args.small, args.large, args.teacher, data_spec(task, args, split),
                           prompt_spec(args), generation_spec(task, args), train, args.output_dir, model_spec(args),
                           args.eval_samples, args.overwrite_output_dir, options(args))
