"""Summarize with Big Little Decoder and compare it with the large model, the small model and
assisted generation on the same inputs (ROUGE-1/2/L/Lsum with stemming, computed offline).

With no arguments: the real qwen2.5-coder pair (fetched once into ~/.cache/bild) writes one-line
summaries of the package descriptions in examples/data, with the large model as the baseline in
the same run.

    python examples/run_bild_summarization.py
    python examples/run_bild_summarization.py --model bild --small SMALL --large LARGE \\
        --dataset_name xsum --text_column document --summary_column summary \\
        --source_prefix "summarize: " --bild_fallback 0.6 --bild_rollback 3
    python examples/run_bild_summarization.py --model PATH ...      # one model alone, as a baseline
    accelerate launch examples/run_bild_summarization.py ...         # examples split across processes

Rerunning with the same --output_dir continues where an interrupted run stopped.
Run with --help for every option; the logic lives in bild/eval/ (cli.py, then evaluate.py).
"""

from pathlib import Path

from bild.eval import cli
from bild.eval.tasks import SUMMARIZATION

SAMPLE = Path(__file__).resolve().parent / "data" / "summ-sample.jsonl"


def main(argv=None):
    """Parse `argv` (default: the command line), run, and return the metrics (None off the main process)."""
    return cli.main(SUMMARIZATION, argv, default_data=str(SAMPLE))


if __name__ == "__main__":
    main()
