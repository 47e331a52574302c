"""How far an int8 QA export's answers move from fp32's on a SQuAD dev set: the share of identical
answer texts and the mean token F1 of the int8 answer against the fp32 one (the int8 gate's
agreement), with the dev F1 of each, torch-free.

    python benchmarks/qa_int8_agreement.py OUT.json EXPORT_DIR [EXPORT_DIR ...] [--dev dev-v1.1.json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from kdpipe.data.squad import read_squad
from kdpipe.evaluation.qa_metrics import question_scores, token_f1
from kdpipe.export.runtime import open_export


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("exports", type=Path, nargs="+")
    parser.add_argument("--dev", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/squad/dev-v1.1.json")
    args = parser.parse_args()
    examples = read_squad(args.dev)
    questions, contexts = [e.question for e in examples], [e.context for e in examples]
    results = {}
    for folder in args.exports:
        answers, seconds = {}, {}
        for variant in ("fp32", "int8"):
            started = time.perf_counter()
            answers[variant] = [a["answer"] for a in open_export(folder, variant).answer(questions, contexts, 64)]
            seconds[variant] = round(time.perf_counter() - started, 1)
        f1 = {v: float(np.mean([question_scores(a, e.answers)[1] for a, e in zip(answers[v], examples)]))
              for v in answers}
        results[folder.name] = {
            "questions": len(examples), "dev_f1": f1, "seconds": seconds,
            "same_answer": float(np.mean([a == b for a, b in zip(answers["fp32"], answers["int8"])])),
            "answer_f1": float(np.mean([token_f1(b, a) for a, b in zip(answers["fp32"], answers["int8"])]))}
        print(folder.name, json.dumps(results[folder.name]), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
