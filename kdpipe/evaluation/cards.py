"""Model cards: a ``README.md`` with Hugging Face model-card metadata (YAML front matter:
``model-index`` results, tags, ``base_model``) for every model folder kdpipe writes.

Each stage writes the card of what it knows, from the numbers in its own report:

- ``distill``: ``models/students/<run>/seed-<seed>/README.md``, that seed's dev score;
- ``export``: ``exports/<run>/README.md``, the shipped model: its fp32/int8 dev score, size,
  latency and int8 drop, and the run's dev mean ± std over its seeds (their distill reports);
- ``summary``: ``reports/cards/<run>/README.md``, the complete card: the above plus the verdict
  against the baselines from evaluate's paired bootstrap, which is only known once every run
  has been evaluated (a folder written by an earlier stage cannot wait for it).

Torch-free, like the report it shares its numbers with.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import yaml

from kdpipe.config import Params
from kdpipe.evaluation.table import depth_label, seed_spread, shipped_variant

CARDS_DIR = "reports/cards"
CARD_FILE = "README.md"
# the packaged teacher's hub id, for base_model (models.sources.BUILTIN_MODELS names the package)
HUB_IDS = {"minilm": "sentence-transformers/all-MiniLM-L6-v2"}
GLUE_TASKS = {"cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "mnli_mm", "qnli", "rte", "wnli"}

INTENDED_USE = ("Intended use: the task above, on text like its training data (language, domain, length up "
                "to the max length), as a smaller, faster stand-in for the teacher. Not for other tasks, "
                "other languages, or decisions about people without a human check; it inherits the "
                "teacher's and the data's biases.")
LIMITS = ("Limits: scores are on the dev split of this pipeline's data (CPU-sized by default), over few "
          "seeds; the ± is the spread over those seeds and the interval the dev set's sampling noise. "
          "Latency is one CPU's, with onnxruntime's default threads; measure on your own hardware.")


@dataclass
class CardFacts:
    """What a card says about one model; None = not known where the card is written."""

    run: str
    method: str
    task: dict                                  # TaskSpec.to_dict()
    teacher: str                                # params teacher.model
    where: str                                  # "student folder", "export folder", "report"
    seeds: list[int] = field(default_factory=list)
    seed: int | None = None                     # the seed of this folder's weights
    dev: float | None = None                    # main metric, mean over ``seeds``
    dev_std: float | None = None
    dev_interval: tuple[float, float] | None = None
    teacher_dev: float | None = None
    versus: dict = field(default_factory=dict)  # role -> evaluate's {run, difference, low, high, verdict}
    student: dict = field(default_factory=dict)  # layers (label), parameters, init
    training: dict = field(default_factory=dict)  # total_steps, train_seconds
    export: dict | None = None                  # the export report
    max_length: int | None = None


def student_card_facts(params: Params, run_name: str, seed: int, summary: dict, task: dict) -> CardFacts:
    """A card's facts from one seed's distill report ``summary`` (its metrics file)."""
    student = summary["student"]
    depth = depth_label({"layers": student["effective_layers"], "physical_layers": student["num_layers"]})
    return CardFacts(run=run_name, method=summary["method"], task=task, teacher=params.teacher.model,
                     where="student folder", seeds=list(params.distill.seeds), seed=seed,
                     dev=summary["best_dev" if summary["selected"] == "best" else "last_dev"][task["main_metric"]],
                     student={"layers": depth, "parameters": student["parameters"], "init": student["init_source"]},
                     training={"total_steps": summary["total_steps"], "train_seconds": summary.get("train_seconds")},
                     max_length=params.max_length)


def report_card_facts(params: Params, evaluation: dict, run_name: str, export: dict | None,
                      training: dict | None) -> CardFacts:
    """The complete card of run ``run_name``: evaluate's numbers (dev mean ± std over seeds, its
    interval, the verdicts against the baselines), its export report and its distill report."""
    r, main = evaluation["students"][run_name], evaluation["main_metric"]
    interval = r.get("dev_interval")
    training = training or {}
    student = training.get("student", {})
    return CardFacts(
        run=run_name, method=r.get("method", "?"), task=evaluation["spec"],
        teacher=params.teacher.model, where="report", seeds=list(r.get("seeds", [])),
        seed=(r.get("seeds") or [None])[0], dev=r["dev"][main], dev_std=r.get("dev_std", {}).get(main),
        dev_interval=(interval["low"], interval["high"]) if interval else None,
        teacher_dev=evaluation["teacher"]["dev"][main], versus=r.get("versus", {}),
        student={"layers": depth_label(r), "parameters": r.get("parameters"), "init": student.get("init_source", "?")},
        training={"total_steps": training.get("total_steps"), "train_seconds": training.get("train_seconds")},
        export=export or None, max_length=params.max_length)


def _main(facts: CardFacts) -> str:
    return facts.task["main_metric"]


def _pipeline_tag(task: dict) -> str:
    """The Hugging Face pipeline the model serves."""
    return {"tagging": "token-classification", "qa": "question-answering"}.get(task.get("problem"), "text-classification")


def metadata(facts: CardFacts) -> dict:
    """The card's YAML front matter (Hugging Face model-card fields)."""
    task = facts.task
    meta = {"library_name": "onnx" if facts.export else "transformers",
            "pipeline_tag": _pipeline_tag(task),
            "tags": ["kdpipe", "knowledge-distillation", facts.method] + (["onnx"] if facts.export else []),
            "base_model": HUB_IDS.get(facts.teacher, facts.teacher)}
    if task["name"] in GLUE_TASKS:
        meta["datasets"] = ["nyu-mll/glue"]
    results = []
    if facts.dev is not None:
        results.append({"type": _main(facts), "value": round(facts.dev, 4),
                        "name": f"dev {_main(facts)} (PyTorch, mean of {max(len(facts.seeds), 1)} seed(s))"})
    shipped = _shipped(facts)
    if shipped:
        results.append({"type": _main(facts), "value": round(shipped[1]["dev"][_main(facts)], 4),
                        "name": f"dev {_main(facts)} ({shipped[0]} ONNX, seed {facts.seed})"})
    if results:
        meta["model-index"] = [{"name": facts.run, "results": [{
            "task": {"type": _pipeline_tag(task)},
            "dataset": {"name": task["name"], "type": task["name"], "split": "dev"},
            "metrics": results}]}]
    return meta


def _shipped(facts: CardFacts) -> tuple[str, dict] | None:
    """(variant, its export numbers) of the file that ships: int8 when exported, else fp32."""
    variant = shipped_variant(facts.export) if facts.export else None
    return (variant, facts.export[variant]) if variant else None


def _results(facts: CardFacts) -> list[str]:
    main = _main(facts)
    lines = []
    if facts.dev is not None:
        spread = seed_spread(facts.dev_std, len(facts.seeds), 4) if len(facts.seeds) > 1 else ""
        ci = (f", 95 % interval [{facts.dev_interval[0]:.4f}, {facts.dev_interval[1]:.4f}]"
              if facts.dev_interval else "")
        seeds = f" over seeds {', '.join(map(str, facts.seeds))}" if facts.seeds else ""
        lines.append(f"- Dev {main}: **{facts.dev:.4f}**{spread}{seeds}{ci}.")
    if facts.teacher_dev:
        lines.append(f"- Teacher's dev {main}: {facts.teacher_dev:.4f}"
                     + (f" (retention {100 * facts.dev / facts.teacher_dev:.1f} %)." if facts.dev is not None else "."))
    for role, label in (("finetune", "the same student without KD"), ("vanilla_kd", "vanilla KD"),
                        ("best", "the best run")):
        v = facts.versus.get(role)
        if v:
            lines.append(f"- Against {label} ({v['run']}): {v['difference']:+.4f} "
                         f"[{v['low']:+.4f}, {v['high']:+.4f}], **{v['verdict']}** (95 % paired bootstrap over dev "
                         f"examples, seeds pooled).")
    if not facts.versus and facts.where != "report" and facts.run != "teacher":
        lines.append(f"- Verdicts against the baselines: `reports/cards/{facts.run}/README.md` and "
                     f"`reports/report.md` (written by the pipeline's last stage, once every run is evaluated).")
    return lines


def _deployment(facts: CardFacts) -> list[str]:
    shipped = _shipped(facts)
    if not shipped:
        return []
    variant, numbers = shipped
    main, export = _main(facts), facts.export
    latency = ", ".join(f"{ms:.2f} ms at batch {k.removeprefix('batch_')}" for k, ms in numbers["latency_ms"].items())
    lines = [f"- Ships `{'model.int8.onnx' if variant == 'int8' else 'model.onnx'}` ({variant}, "
             f"{numbers['size_mb']:.1f} MB): dev {main} {numbers['dev'][main]:.4f}; latency {latency} "
             f"(onnxruntime, CPU).",
             f"- ONNX fp32 matches PyTorch to {export['parity']['max_abs_diff']:.1e} (max |logit difference|)."]
    gate = export.get("int8_gate")
    if gate:
        lines.append(f"- int8 vs fp32: {main} drop {gate['drop']:+.4f} [{gate['drop_interval']['low']:+.4f}, "
                     f"{gate['drop_interval']['high']:+.4f}], agreement {gate['agreement']:.3f} "
                     f"{'of the words ' if gate.get('agreement_kind') == 'same_tag' else ''}on "
                     f"{gate['examples']} dev examples: {gate['verdict']}.")
    lines.append("- Run it: `kdpipe predict FOLDER \"some text\"` (torch-free: onnxruntime, tokenizers, numpy).")
    return lines


def model_card(facts: CardFacts) -> str:
    """The card as Markdown with its YAML front matter."""
    task, student = facts.task, facts.student
    labels = f" ({', '.join(task['labels'])})" if task.get("labels") else ""
    what = (f"A {student.get('layers', '?')}-layer student" if student.get("layers") else "A student") \
        + f" distilled by kdpipe with **{facts.method}** from the teacher `{facts.teacher}`" \
        + f" for {task['name']}: {task['problem']}{labels}, main metric {task['main_metric']}."
    if facts.run == "teacher":  # exported for the report's size and latency columns only
        what = (f"The teacher `{facts.teacher}` fine-tuned by kdpipe for {task['name']}: {task['problem']}{labels}, "
                f"main metric {task['main_metric']}; exported like every student so that sizes and latencies "
                f"compare under one protocol.")
    details = [f"- Run `{facts.run}`" + (f", seed {facts.seed}" if facts.seed is not None else "")
               + (f" ({'the seed that ships' if facts.seeds and facts.seed == facts.seeds[0] else 'evidence only: the first seed ships'})"
                  if facts.seed is not None and facts.seeds else "") + "."]
    if student.get("parameters"):
        details.append(f"- {student['parameters']:,} parameters; initialised from {student.get('init', '?')}"
                       + (f"; inputs up to {facts.max_length} tokens." if facts.max_length else "."))
    if facts.training.get("total_steps"):
        seconds = facts.training.get("train_seconds")
        details.append(f"- Trained {facts.training['total_steps']} steps"
                       + (f" in {seconds:.0f} s." if seconds is not None else "."))
    front = yaml.safe_dump(metadata(facts), sort_keys=False, allow_unicode=True)
    body = [f"# {facts.run}", "", what, "", *details, "", "## Results", "", *_results(facts), ""]
    deployment = _deployment(facts)
    if deployment:
        body += ["## Deployment", "", *deployment, ""]
    body += ["## Intended use and limits", "", INTENDED_USE, "", LIMITS, "",
             f"_Written in the {facts.where} by kdpipe; every number comes from the pipeline's reports "
             f"(`metrics/`)._", ""]
    return f"---\n{front}---\n\n" + "\n".join(body)
