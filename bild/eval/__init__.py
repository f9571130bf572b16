"""The evaluation side: run "systems" (BiLD settings and baselines) over a data set, resumably, and report.

    tasks.py    Task: its columns, instruction and scorer (TRANSLATION, SUMMARIZATION)
    data.py     Example, DataSpec, load_examples
    prompts.py  PromptSpec, PromptBuilder
    systems.py  model loading, make_system (bild, large, small, assisted, model)
    rundir.py   RunDir: fingerprint, config.json, resume/clear, prediction files; atomic_write_* (fsync)
    runner.py   RunContext, run_systems (interleaved per batch), warm-up, timing
    report.py   per-system metrics, comparisons, tables
    evaluate.py the example scripts' job (EvalSpec -> metrics.json)
    cli.py      every command line (example scripts, bild sweep, bild align) -> typed specs: the only
                module that reads an argparse.Namespace
"""
