"""The ``kdpipe`` console script.

Module-level imports stay torch-free: ``kdpipe predict``, ``tasks`` and ``compare`` must run in
the runtime install (``pip install 'kdpipe[runtime]'``: onnxruntime, tokenizers and numpy only;
tests/test_runtime_install.py installs it and runs them).  Each subcommand is a
``register(subparsers)`` function in ``COMMANDS``; it sets ``func`` (``argparse.Namespace -> int``)
as a default.  A command that needs the pipeline's packages (torch, MLflow, ...) imports them
inside its ``func``; where they are missing it fails with one line naming the extra to install.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from kdpipe.env import apply_defaults


def _add_predict(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "predict", help="classify, tag or answer questions with an exported model (onnxruntime, no torch)",
        description="Classify texts with an export folder (model.onnx, tokenizer.json, kdpipe.json). "
                    "Texts come from the arguments, --file, or stdin (one per line; a TAB splits a "
                    "line into a sentence pair). Prints label<TAB>score<TAB>text per input "
                    "('-' as label for regression), or JSON lines with --json. A tagging (NER) export "
                    "prints each text's entities as TYPE[start:end]=text, TAB-separated, with the "
                    "character spans into the text (--json: entities, tokens and their tags). An extractive "
                    "QA export answers --question from --context (or --context-file), or every line of "
                    "--file/stdin: question<TAB>context, or JSON lines with question and context; it "
                    "prints answer<TAB>score<TAB>question (--json: the answer's character span too).",
        epilog=_examples("kdpipe predict exports/vanilla_kd \"I love my new phone\" --int8 --json",
                         "printf 'A man plays.\\tSomeone makes music.\\n' | kdpipe predict exports/rte_kd",
                         "kdpipe predict exports/vanilla_kd --file texts.txt --threads 2",
                         "kdpipe predict exports/ner_kd \"Peter Blackburn flew to Germany.\" --json",
                         "kdpipe predict exports/qa_kd --question \"Who won?\" --context \"The Broncos beat the "
                         "Panthers 24-10.\""),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("export_dir", metavar="EXPORT_DIR", help="folder written by the export stage")
    p.add_argument("texts", nargs="*", metavar="TEXT", help="texts to classify")
    p.add_argument("--pair", nargs="+", metavar="TEXT_B", help="second sentences, one per TEXT")
    p.add_argument("--file", type=Path, metavar="PATH",
                   help="one text per line, or TSV with two columns for sentence pairs")
    p.add_argument("--question", action="append", metavar="TEXT", help="QA: a question (repeat for several)")
    p.add_argument("--context", action="append", metavar="TEXT", help="QA: the passage to answer from, one "
                   "per --question (or one for all)")
    p.add_argument("--context-file", type=Path, metavar="PATH", help="QA: a UTF-8 file holding the passage")
    p.add_argument("--int8", action="store_true", help="use model.int8.onnx instead of model.onnx")
    p.add_argument("--json", action="store_true", help="print one JSON object per input")
    p.add_argument("--batch-size", type=_bounded("--batch-size", 1, 4096), default=32, metavar="N",
                   help="texts per onnxruntime call (1..4096)")
    p.add_argument("--threads", type=_bounded("--threads", 1, os.cpu_count() or 1), default=None, metavar="N",
                   help=f"ORT intra-op threads (1..{os.cpu_count()}, this machine's cores; default: all)")
    p.set_defaults(func=_run_predict)


def _bounded(option: str, low: int, high: int) -> Callable[[str], int]:
    """An argparse type: an integer in [low, high], else a one-line error naming the option."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{option} takes a whole number, got {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{option} must be between {low} and {high}, got {value}")
        return value
    return parse


def _add_ui(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "ui", help="open the MLflow UI on this project's runs (bound to 127.0.0.1)",
        description="Serve the MLflow UI over the project's tracking store ($MLFLOW_TRACKING_URI, "
                    "else sqlite:///<repo>/mlflow.db), bound to 127.0.0.1 only. Ctrl-C or SIGTERM "
                    "stops the server and its workers.",
        epilog=_examples("kdpipe ui", "kdpipe ui --port 5001"), formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--port", type=_bounded("--port", 1, 65535), default=5000)
    p.set_defaults(func=_run_ui)


def _examples(*lines: str) -> str:
    return "examples:\n" + "\n".join(f"  {line}" for line in lines)


def _run_ui(args: argparse.Namespace) -> int:
    import signal
    import subprocess

    from kdpipe.tracking import tracking_uri

    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", tracking_uri(),
           "--host", "127.0.0.1", "--port", str(args.port), "--workers", "1"]
    print(f"MLflow UI: http://127.0.0.1:{args.port}  (Ctrl-C to stop)", file=sys.stderr)
    # The server and its workers get a process group of their own, so that stopping kdpipe ui
    # (Ctrl-C, or SIGTERM from a supervisor) stops all of them, not only the first process.
    server = subprocess.Popen(cmd, start_new_session=True)

    def stop(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    try:
        return server.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)


def _add_tasks(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("tasks", help="list the registered tasks, their labels and metrics",
                              description="List the task names usable as task.name in params.yaml, with their "
                                          "text fields, labels and metrics.",
                              epilog=_examples("kdpipe tasks"), formatter_class=argparse.RawDescriptionHelpFormatter)
    p.set_defaults(func=_run_tasks)


def _run_tasks(args: argparse.Namespace) -> int:
    from kdpipe.data.tasks import get_task, task_names

    for name in task_names():
        if name == "custom":
            print("custom\tyour CSV/TSV/JSON/Parquet files (task.files, task.text_columns, task.label_column); "
                  "tagging: CoNLL columns or JSON lines (task.problem: tagging); QA: SQuAD JSON (task.problem: qa)")
            continue
        spec = get_task(name)
        labels = ",".join(spec.labels) if spec.labels else "answer span" if spec.problem == "qa" else "regression"
        print(f"{name}\t{spec.num_text_fields} text(s)\t{labels}\t{'/'.join(spec.metrics)}")
    return 0


def _add_compare(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "compare", help="which student to ship: the report's answer and table, from the metrics files",
        description="Reads metrics/evaluate.json, metrics/export/*.json and metrics/distill/<run>/*.json "
                    "(written by dvc repro) and prints the report's headline and its table in Markdown: each "
                    "run's dev score (mean ± std over its seeds) with its 95% interval, its difference from "
                    "the baselines with a verdict, "
                    "the shipped ONNX model's size and latency, and the training cost.  The README's "
                    "results tables are this output.",
        epilog=_examples("kdpipe compare", "kdpipe compare --metrics-dir path/to/metrics"),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--metrics-dir", type=Path, default=Path("metrics"))
    p.set_defaults(func=_run_compare)


def _run_compare(args: argparse.Namespace) -> int:
    from kdpipe.evaluation import report

    evaluation, exports, trainings = report.read_reports(Path(args.metrics_dir).parent)
    rows = report.report_rows(evaluation, exports, trainings)
    print("\n".join(f"- {line}" for line in report.headline(rows, evaluation)))
    print()
    print(report.markdown_table(report.results_table(rows, evaluation["main_metric"])))
    return 0


# Subcommand registrars, in help order; add new ones here.
COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [_add_predict, _add_compare, _add_tasks, _add_ui]


def build_parser() -> argparse.ArgumentParser:
    from kdpipe import __version__

    parser = argparse.ArgumentParser(
        prog="kdpipe", description="Knowledge distillation for BERT-style encoders: compare, inspect and "
                                   "serve what `dvc repro` produced.",
        epilog=_examples("kdpipe compare", "kdpipe predict exports/vanilla_kd \"what a great phone\"", "kdpipe ui",
                         "kdpipe COMMAND --help"), formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"kdpipe {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for register in COMMANDS:
        register(subparsers)
    parser.set_defaults(commands=subparsers.choices)
    return parser


def parse(argv: Sequence[str]) -> argparse.Namespace:
    """Options may follow the positional texts (``kdpipe predict DIR --int8 "text"``): the
    subcommand's own parser reads its arguments intermixed (argparse cannot do that through
    subparsers)."""
    parser = build_parser()
    commands = parser.get_default("commands")
    if argv and argv[0] in commands:
        args = commands[argv[0]].parse_intermixed_args(argv[1:])
        args.command = argv[0]
        return args
    return parser.parse_args(argv)  # help, --version, or the error listing the commands


def main(argv: Sequence[str] | None = None) -> int:
    apply_defaults()
    try:
        args = parse(list(sys.argv[1:] if argv is None else argv))
    except SystemExit as e:  # argparse's own usage errors (and --help): its exit code, as a return value
        return int(e.code or 0)
    try:
        return args.func(args)
    except (FileNotFoundError, ValueError) as e:
        print(f"kdpipe {args.command}: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `kdpipe predict ... | head`: stop quietly
        sys.stderr.close()
        return 0
    except ModuleNotFoundError as e:  # a pipeline-only command (`kdpipe ui`) in the runtime install
        if not e.name or e.name.split(".")[0] == "kdpipe":
            raise
        print(f"kdpipe {args.command}: error: {e.name.split('.')[0]} is not installed; this command needs "
              f"the pipeline install: pip install 'kdpipe[pipeline]'", file=sys.stderr)
        return 2


def _run_predict(args: argparse.Namespace) -> int:
    from kdpipe.export.runtime import OnnxQuestionAnswerer, OnnxTokenTagger, open_export  # slow import: only when used

    clf = open_export(args.export_dir, variant="int8" if args.int8 else "fp32", threads=args.threads)
    qa_options = [o for o, v in (("--question", args.question), ("--context", args.context),
                                 ("--context-file", args.context_file)) if v]
    if isinstance(clf, OnnxQuestionAnswerer):
        return _run_qa(clf, *_qa_inputs(args), args)
    if qa_options:
        raise ValueError(f"{', '.join(qa_options)}: only for an extractive QA export; {args.export_dir} is "
                         f"a {clf.meta.problem} model")
    texts, pairs, names = _predict_inputs(args)
    if isinstance(clf, OnnxTokenTagger):
        return _run_tagging(clf, texts, pairs, names, args)
    clf.check_inputs(texts, pairs, names)
    results = clf.predict(texts, pairs, batch_size=args.batch_size)
    for i, result in enumerate(results):
        pair = None if pairs is None else pairs[i]
        print(_format_line(texts[i], pair, result, as_json=args.json))
    sys.stdout.flush()
    return 0


def _run_tagging(tagger, texts: list[str], pairs: list[str] | None, names: list[str],
                 args: argparse.Namespace) -> int:
    if pairs is not None:
        raise ValueError(f"{names[0]}: got a sentence pair (TAB-separated or --pair), but a tagging model "
                         f"tags single texts")
    for text, result in zip(texts, tagger.predict(texts, batch_size=args.batch_size)):
        if args.json:
            print(json.dumps({"text": text, **result}, ensure_ascii=False))
        else:
            found = "\t".join(f"{e['type']}[{e['start']}:{e['end']}]={e['text']}" for e in result["entities"])
            print(f"{found or '-'}\t{text}")
    sys.stdout.flush()
    return 0


def _run_qa(qa, questions: list[str], contexts: list[str], args: argparse.Namespace) -> int:
    for question, result in zip(questions, qa.answer(questions, contexts, batch_size=args.batch_size)):
        if args.json:
            print(json.dumps({"question": question, **result}, ensure_ascii=False))
        else:
            score = "-" if result["score"] is None else f"{result['score']:.4f}"
            print(f"{result['answer'] or '-'}\t{score}\t{question}")
    sys.stdout.flush()
    return 0


def _qa_inputs(args: argparse.Namespace) -> tuple[list[str], list[str]]:
    """Questions and their contexts: --question with --context/--context-file, or --file/stdin
    lines (question<TAB>context, or JSON objects with ``question`` and ``context``)."""
    if args.texts or args.pair:
        raise ValueError("a QA export takes --question and --context (or --file/stdin lines), not TEXT/--pair")
    if args.question:
        if args.context and args.context_file:
            raise ValueError("give --context or --context-file, not both")
        if args.context_file:
            if not args.context_file.is_file():
                raise FileNotFoundError(f"--context-file {args.context_file} not found")
            contexts = [args.context_file.read_text(encoding="utf-8-sig")]
        elif args.context:
            contexts = list(args.context)
        else:
            raise ValueError("--question needs the passage: --context TEXT or --context-file PATH")
        if len(contexts) == 1:
            contexts = contexts * len(args.question)
        if len(contexts) != len(args.question):
            raise ValueError(f"got {len(args.question)} --question but {len(contexts)} --context; give one "
                             f"context per question, or one for all")
        return list(args.question), contexts
    if args.context or args.context_file:
        raise ValueError("--context needs --question")
    lines, source = _input_lines(args)
    questions, contexts = [], []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        if line.lstrip().startswith("{"):
            try:
                record = json.loads(line)
                questions.append(str(record["question"]))
                contexts.append(str(record["context"]))
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise ValueError(f"{source} line {n}: expected a JSON object with \"question\" and "
                                 f"\"context\" ({type(e).__name__}: {e})") from None
            continue
        cols = line.rstrip("\r\n").split("\t")
        if len(cols) != 2:
            raise ValueError(f"{source} line {n}: {len(cols)} TAB-separated column(s); give question<TAB>context "
                             f"or a JSON object with question and context")
        questions.append(cols[0])
        contexts.append(cols[1])
    if not questions:
        raise ValueError(f"no questions in {source}")
    return questions, contexts


def _predict_inputs(args: argparse.Namespace) -> tuple[list[str], list[str] | None, list[str]]:
    """Texts, pair texts, and where each came from (for error messages), from TEXT/--pair,
    --file, or stdin, in that order of preference."""
    if args.texts and args.file:
        raise ValueError("give texts as arguments or with --file, not both")
    if args.texts:
        if args.pair is not None and len(args.pair) != len(args.texts):
            raise ValueError(f"got {len(args.texts)} TEXT but {len(args.pair)} --pair texts")
        names = [f"TEXT {i + 1}" for i in range(len(args.texts))]
        return list(args.texts), None if args.pair is None else list(args.pair), names
    if args.pair is not None:
        raise ValueError("--pair needs TEXT arguments (use a two-column TSV with --file or stdin)")
    return _read_lines(*_input_lines(args))


def _input_lines(args: argparse.Namespace) -> tuple[Iterable[str], str]:
    """The lines of --file (UTF-8, checked) or of stdin, and the name to cite in messages."""
    if not args.file:
        return sys.stdin, "stdin"
    if not args.file.is_file():
        raise FileNotFoundError(f"--file {args.file} not found")
    raw = args.file.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise ValueError(f"{args.file} line {line}: not UTF-8 text (byte 0x{raw[e.start]:02x}); "
                         f"save the file as UTF-8") from None
    return text.splitlines(), str(args.file)


def _read_lines(lines: Iterable[str], source: str) -> tuple[list[str], list[str] | None, list[str]]:
    """One text per non-blank line, or ``text<TAB>pair`` on every line for sentence pairs."""
    rows = [(n, line.rstrip("\r\n").split("\t")) for n, line in enumerate(lines, 1) if line.strip()]
    if not rows:
        raise ValueError(f"no texts in {source}")
    width = len(rows[0][1])
    for n, cols in rows:
        if len(cols) > 2:
            raise ValueError(f"{source} line {n}: {len(cols)} TAB-separated columns; give one text per line, "
                             f"or text<TAB>pair")
        if len(cols) != width:
            raise ValueError(f"{source} line {n}: {len(cols)} column(s) but line {rows[0][0]} has {width}; "
                             f"give one text per line, or text<TAB>pair on every line")
    texts = [cols[0] for _, cols in rows]
    names = [f"{source} line {n}" for n, _ in rows]
    return texts, ([cols[1] for _, cols in rows] if width == 2 else None), names


def _format_line(text: str, pair: str | None, result: dict[str, Any], as_json: bool) -> str:
    if as_json:
        record = {"text": text, **({"pair": pair} if pair is not None else {}), **result}
        return json.dumps(record, ensure_ascii=False)
    shown = text if pair is None else f"{text}\t{pair}"
    return f"{result.get('label', '-')}\t{result['score']:.4f}\t{shown}"


if __name__ == "__main__":
    sys.exit(main())
