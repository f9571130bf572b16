"""Translate with Big Little Decoder and compare it with the large model, the small model and
assisted generation on the same inputs.

With no arguments: the real qwen2.5-coder pair (fetched once into ~/.cache/bild) translates the
German sample in examples/data, with the large model as the baseline in the same run.

    python examples/run_bild_translation.py
    python examples/run_bild_translation.py --model bild --small SMALL --large LARGE \\
        --dataset_name iwslt2017 --dataset_config iwslt2017-de-en --source_lang de --target_lang en \\
        --bild_fallback 0.6 --bild_rollback 3 --compare large,small,assisted
    python examples/run_bild_translation.py --model PATH ...        # one model alone, as a baseline
    accelerate launch examples/run_bild_translation.py ...           # examples split across processes

Rerunning with the same --output_dir continues where an interrupted run stopped.
Run with --help for every option; the logic lives in bild/eval/ (cli.py, then evaluate.py).
"""

from pathlib import Path

from bild.eval import cli
from bild.eval.tasks import TRANSLATION

SAMPLE = Path(__file__).resolve().parent / "data" / "de-en-sample.jsonl"


def main(argv=None):
    """Parse `argv` (default: the command line), run, and return the metrics (None off the main process)."""
    return cli.main(TRANSLATION, argv, default_data=str(SAMPLE))


if __name__ == "__main__":
    main()
