"""Extractive QA (SQuAD) through the package with tiny random models and the real MiniLM
tokenizer: windows as dataset rows, the [B, 2, n] start/end logits whose per-row CE and KL are
the span losses, per-question scoring and its bootstrap, the per-window teacher cache, the ONNX
export with the torch-free ``OnnxQuestionAnswerer``, ``kdpipe predict`` and the preflight's
refusals."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from transformers import BertConfig, BertForQuestionAnswering

from conftest import REPO
from kdpipe.config import ConfigError, TaskConfig, parse_params
from kdpipe.data.batches import DistillCollator, inference_loader, split_labels
from kdpipe.data.errors import TaskDataError
from kdpipe.data.splits import QADataset
from kdpipe.data.squad import QAExample
from kdpipe.data.tasks import SQUAD_SPEC, load_task, qa_frame
from kdpipe.evaluation.metrics import compute_metrics, qa_scores
from kdpipe.evaluation.predict import evaluate_split, predict
from kdpipe.evaluation.significance import metric_interval, paired_difference
from kdpipe.methods.base import prediction_losses
from kdpipe.methods.registry import build_method
from kdpipe.methods.span_losses import span_kd_loss, span_label_loss
from kdpipe.methods.tinybert import soft_cross_entropy
from kdpipe.models.loading import encoder_for, model_problem
from kdpipe.models.taps import PADDING_LOGIT, run_model

SQUAD = REPO.parent / "shared" / "data" / "squad"
CONTEXT = ("Super Bowl 50 was an American football game to determine the champion of the National Football "
           "League for the 2015 season. The Denver Broncos defeated the Carolina Panthers 24 to 10 to earn "
           "their third Super Bowl title. The game was played on February 7, 2016, at Levi's Stadium in the "
           "San Francisco Bay Area at Santa Clara, California.")
EXAMPLES = [QAExample("q1", "Who won Super Bowl 50?", CONTEXT, ["Denver Broncos"], [CONTEXT.index("Denver Broncos")]),
            QAExample("q2", "Where was the game played?", CONTEXT, ["Levi's Stadium", "Santa Clara, California"],
                      [CONTEXT.index("Levi's Stadium"), CONTEXT.index("Santa Clara, California")]),
            QAExample("q3", "Which season?", CONTEXT, ["2015"], [CONTEXT.index("2015")])]


def tiny_qa(seed: int = 0, layers: int = 2) -> BertForQuestionAnswering:
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=layers, num_attention_heads=4,
                     intermediate_size=64, max_position_embeddings=128, attn_implementation="eager")
    model = BertForQuestionAnswering(cfg).eval()
    torch.nn.init.normal_(model.qa_outputs.weight, std=0.5)  # spread-out logits, so tolerances bite
    return model


@pytest.fixture(scope="module")
def dataset(tokenizer):
    # 40-token windows with a 16-token stride: each question reads the context in several windows
    return QADataset(qa_frame(EXAMPLES), tokenizer, max_length=40, doc_stride=16, max_answer_length=10)


def collate(tokenizer, dataset, rows, student=None, teacher=None):
    s, t = student or tiny_qa(0), teacher or tiny_qa(1, 3)
    return DistillCollator(encoder_for(s, tokenizer, 40), encoder_for(t, tokenizer, 40), False)(
        [dataset[i] for i in rows])


def test_windows_are_the_rows_and_their_labels_point_at_the_answer(dataset, tokenizer):
    assert len(dataset.examples) == 3 and len(dataset) > 3 * 2  # several windows per question
    found = {i: [] for i in range(3)}
    for w in range(len(dataset)):
        row = dataset[w]
        start, end = row["label"]
        if start:  # the window holds the first answer: its tokens decode to it
            text = tokenizer.decode(row["input_ids"][start:end + 1])
            found[row["example"]].append(text)
        else:
            assert end == 0  # [CLS]: the answer is not in this window
    assert [set(v) for v in found.values()] == [{"denver broncos"}, {"levi ' s stadium"}, {"2015"}]
    assert split_labels(dataset, None).tolist() == [e.answers for e in EXAMPLES]


def test_qa_batches_carry_the_same_windows_for_both_models_and_the_question_index(dataset, tokenizer):
    batch = collate(tokenizer, dataset, [0, 3, 5])
    assert torch.equal(batch["student"]["input_ids"], batch["teacher"]["input_ids"])
    assert batch["labels"].shape == (3, 2) and batch["example"].tolist() == [dataset[i]["example"] for i in (0, 3, 5)]
    lengths = batch["student"]["attention_mask"].sum(1).tolist()
    assert lengths == [len(dataset[i]["input_ids"]) for i in (0, 3, 5)]


def test_span_logits_are_start_and_end_over_positions_with_padding_masked(dataset, tokenizer):
    model = tiny_qa()
    batch = collate(tokenizer, dataset, [0, len(dataset) - 1])  # the last window is the shortest
    out = run_model(model, batch["student"])
    raw = model(**batch["student"])
    mask = batch["student"]["attention_mask"].bool()
    assert out.span and out.logits.shape == (2, 2, mask.shape[1])
    assert torch.equal(out.logits[:, 0][mask], raw.start_logits[mask])
    assert torch.equal(out.logits[:, 1][mask], raw.end_logits[mask])
    assert (out.logits[:, :, ~mask[1]][1] == PADDING_LOGIT).all() and (~mask[1]).any()


def test_prediction_losses_on_span_logits_are_the_span_losses(dataset, tokenizer):
    """The tagging-shaped CE and KL (per row, over the last dim) on [B, 2, n] equal the span
    losses of ``methods.span_losses`` computed from the raw start/end logits and the mask."""
    student, teacher = tiny_qa(0), tiny_qa(1, 3)
    batch = collate(tokenizer, dataset, [0, 1, len(dataset) - 1], student, teacher)
    s_out, t_out = run_model(student, batch["student"]), run_model(teacher, batch["teacher"])
    got = prediction_losses(s_out, t_out, batch["labels"], regression=False, temperature=2.0)
    s, t = student(**batch["student"]), teacher(**batch["teacher"])
    mask = batch["student"]["attention_mask"].bool()
    assert got["kd"].item() == pytest.approx(
        span_kd_loss(s.start_logits, s.end_logits, t.start_logits, t.end_logits, mask, 2.0).item(), rel=1e-5)
    assert got["hard"].item() == pytest.approx(
        span_label_loss(s.start_logits, s.end_logits, batch["labels"][:, 0], batch["labels"][:, 1], mask).item(),
        rel=1e-5)
    # by hand: one window, 2 real positions; p_T = [3/4, 1/4], p_S = [1/2, 1/2] for start and end
    teacher_logits = torch.tensor([[[math.log(3.0), 0.0, PADDING_LOGIT]] * 2])
    student_logits = torch.tensor([[[0.0, 0.0, PADDING_LOGIT]] * 2], requires_grad=True)
    kl = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    one = prediction_losses(type(s_out)(logits=student_logits, attention_mask=None),
                            type(t_out)(logits=teacher_logits, attention_mask=None),
                            torch.tensor([[0, 1]]), regression=False, temperature=1.0)
    assert one["kd"].item() == pytest.approx(kl, rel=1e-6)
    assert one["hard"].item() == pytest.approx(math.log(2.0), rel=1e-6)
    (one["kd"] + one["hard"]).backward()
    assert student_logits.grad[0, :, 2].abs().max() == 0  # padding gets no gradient


def test_losses_do_not_depend_on_how_far_a_batch_pads(dataset, tokenizer):
    student, teacher = tiny_qa(0), tiny_qa(1, 3)
    short = collate(tokenizer, dataset, [len(dataset) - 1], student, teacher)
    longer = collate(tokenizer, dataset, [len(dataset) - 1, 0], student, teacher)  # pads the short window
    for batch_of, rows in ((short, slice(0, 1)), (longer, slice(0, 1))):
        s_out, t_out = run_model(student, batch_of["student"]), run_model(teacher, batch_of["teacher"])
        s_out.logits, t_out.logits = s_out.logits[rows], t_out.logits[rows]
        losses = prediction_losses(s_out, t_out, batch_of["labels"][rows], regression=False, temperature=2.0)
        soft = soft_cross_entropy(s_out.logits, t_out.logits, 2.0, over_positions=True)
        if batch_of is short:
            reference = (losses["kd"].item(), losses["hard"].item(), soft.item())
        else:
            assert (losses["kd"].item(), losses["hard"].item(), soft.item()) == pytest.approx(reference, rel=1e-5)


def test_questions_are_scored_by_their_best_span_over_windows(dataset, tokenizer):
    model = tiny_qa()
    loader = inference_loader(dataset, DistillCollator(encoder_for(model, tokenizer, 40), None, False), 4)
    logits, labels, _ = predict(model, loader)
    assert logits.shape[:2] == (len(dataset), 2) and labels.shape == (len(dataset), 2)
    # a "model" that puts all mass on each window's labelled span answers every question right
    perfect = np.full_like(logits, -50.0)
    for w in range(len(dataset)):
        start, end = dataset[w]["label"]
        perfect[w, 0, start] = perfect[w, 1, end] = 50.0 if start else -50.0
    assert list(dataset.answers(perfect)) == ["Denver Broncos", "Levi's Stadium", "2015"]
    scores = compute_metrics(SQUAD_SPEC, dataset.answers(perfect), dataset.references())
    assert scores == {"exact_match": 1.0, "f1": 1.0}
    got = evaluate_split(model, loader, SQUAD_SPEC)
    assert set(got) == {"exact_match", "f1", "loss"} and 0 <= got["exact_match"] <= got["f1"] <= 1


def test_per_question_scores_by_hand_and_their_bootstrap():
    refs = np.empty(3, dtype=object)
    refs[:] = [["Denver Broncos"], ["Levi's Stadium", "Santa Clara, California"], ["2015"]]
    answers = np.array(["the Denver Broncos", "Santa Clara", "2016"], dtype=object)
    # EM: "the" is an article (normalised away): 1; "Santa Clara" vs "santa clara california": F1 2*1*2/3/(1+2/3)
    assert qa_scores(answers, refs).tolist() == [[1.0, 1.0], [0.0, pytest.approx(0.8)], [0.0, 0.0]]
    assert compute_metrics(SQUAD_SPEC, answers, refs) == {"exact_match": pytest.approx(1 / 3),
                                                          "f1": pytest.approx(1.8 / 3)}
    same = paired_difference(SQUAD_SPEC, answers, answers, refs)
    assert (same.observed, same.verdict) == (0.0, "no detectable difference")
    many = np.concatenate([refs] * 20)
    right = np.array([r[0] for r in many], dtype=object)
    wrong = right.copy()
    wrong[::2] = "nothing"
    d = paired_difference(SQUAD_SPEC, wrong, right, many)
    assert d.observed == pytest.approx(-0.5) and d.verdict == "worse"
    value, low, high = metric_interval(SQUAD_SPEC, [wrong, right], many)
    assert value == pytest.approx(0.75) and low <= value <= high


def test_the_teacher_cache_holds_per_window_span_logits_cut_to_each_batch(dataset, tokenizer, tmp_path):
    from kdpipe.training.engine import teacher_signal
    from kdpipe.training.teacher_cache import TeacherCache, compute_teacher_cache

    teacher = tiny_qa(1, 3)
    meta = compute_teacher_cache(teacher, tokenizer, dataset, tmp_path / "cache", key="k", max_length=40, batch_size=5)
    logits = np.load(tmp_path / "cache/logits.npy")
    assert meta["per_position"] and logits.dtype == np.float16 and logits.shape == (len(dataset), 2, 40)
    cache = TeacherCache.open(tmp_path / "cache", "k", len(dataset))
    batch = collate(tokenizer, dataset, [len(dataset) - 1, 2], tiny_qa(0), teacher)
    method = build_method("vanilla_kd", {}, regression=False)
    cached = teacher_signal(method, batch, None, cache, "cpu")
    live = teacher_signal(method, batch, teacher, None, "cpu")
    assert cached.logits.shape == live.logits.shape
    assert torch.allclose(cached.logits, live.logits, atol=5e-3)
    student = run_model(tiny_qa(0), batch["student"])
    assert method(student, cached, batch["labels"])["loss"].item() == pytest.approx(
        method(student, live, batch["labels"])["loss"].item(), rel=1e-3)


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory, dataset, tokenizer):
    from kdpipe.export.convert import export_onnx
    from kdpipe.export.runtime import EXPORT_META_FILE, ExportMeta

    folder = tmp_path_factory.mktemp("qa_export")
    model = tiny_qa()
    sample = collate(tokenizer, dataset, [0, 1])["student"]
    names = export_onnx(model, sample, folder / "model.onnx")
    tokenizer.save_pretrained(folder)
    meta = ExportMeta(labels=None, problem="qa", max_length=40, input_names=names, task=SQUAD_SPEC.to_dict(),
                      qa={"doc_stride": 16, "max_answer_length": 10})
    (folder / EXPORT_META_FILE).write_text(json.dumps(meta.to_json()))
    return folder, model


def test_the_runtime_reads_the_same_windows_and_gives_the_same_answers_torch_free(export_dir, dataset, tokenizer):
    from kdpipe.export.runtime import OnnxQuestionAnswerer, OnnxTextClassifier, open_export

    folder, model = export_dir
    qa = open_export(folder)
    assert isinstance(qa, OnnxQuestionAnswerer)
    windows = qa.windows([e.question for e in EXAMPLES], [e.context for e in EXAMPLES])
    assert [list(w.ids) for _, w in windows] == dataset.windows.input_ids
    assert [i for i, _ in windows] == dataset.windows.example_index
    loader = inference_loader(dataset, DistillCollator(encoder_for(model, tokenizer, 40), None, False), 4)
    expected = dataset.answers(predict(model, loader)[0])
    got = qa.answer([e.question for e in EXAMPLES], [e.context for e in EXAMPLES], batch_size=2)
    assert [g["answer"] for g in got] == list(expected)
    assert all(CONTEXT[g["start"]:g["end"]] == g["answer"] for g in got)
    with pytest.raises(ValueError, match="OnnxQuestionAnswerer"):
        OnnxTextClassifier.from_dir(folder)
    with pytest.raises(ValueError, match="question 1: the context is empty"):
        qa.answer("Who?", " ")


def test_cli_answers_from_options_and_json_lines(export_dir, tmp_path, capsys, monkeypatch):
    import io

    from kdpipe.cli import main

    folder, _ = export_dir
    assert main(["predict", str(folder), "--question", "Who won?", "--context", CONTEXT, "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["question"] == "Who won?" and CONTEXT[record["start"]:record["end"]] == record["answer"]
    lines = "".join(json.dumps({"question": q, "context": CONTEXT}) + "\n" for q in ("Who won?", "Where?"))
    monkeypatch.setattr("sys.stdin", io.StringIO(lines))
    assert main(["predict", str(folder)]) == 0
    assert [line.split("\t")[-1] for line in capsys.readouterr().out.splitlines()] == ["Who won?", "Where?"]
    assert main(["predict", str(folder), "a text"]) == 2
    assert "--question and --context" in capsys.readouterr().err
    assert main(["predict", str(folder), "--question", "Who?"]) == 2
    assert "--context TEXT or --context-file" in capsys.readouterr().err
    (tmp_path / "bad.jsonl").write_text('{"question": "Who?"}\n')
    assert main(["predict", str(folder), "--file", str(tmp_path / "bad.jsonl")]) == 2
    assert "bad.jsonl line 1" in capsys.readouterr().err


def test_a_qa_export_is_an_mlflow_pyfunc_that_answers(export_dir, tmp_path, monkeypatch):
    from conftest import logged_pyfunc
    from kdpipe.export.runtime import OnnxQuestionAnswerer

    folder, _ = export_dir
    model = logged_pyfunc(folder, tmp_path, monkeypatch, "qa")
    got = model.predict(pd.DataFrame({"question": ["Who won?", "Which season?"], "context": [CONTEXT, CONTEXT]}))
    expected = OnnxQuestionAnswerer.from_dir(folder).answer(["Who won?", "Which season?"], [CONTEXT, CONTEXT])
    assert got["answer"].tolist() == [e["answer"] for e in expected]
    assert model.metadata.signature.inputs.input_names() == ["question", "context"]


def test_int8_agreement_is_the_mean_token_f1_of_int8_answers_against_fp32_ones():
    from kdpipe.pipeline.export import prediction_agreement

    fp32 = np.array(["Denver Broncos", "Levi's Stadium", "2015", "the game"], dtype=object)
    int8 = np.array(["Denver Broncos", "Levi's Stadium in", "1999", "game"], dtype=object)
    # 1, F1("levis stadium in" vs "levis stadium") = 2 * (2/3 * 1) / (2/3 + 1) = 0.8, 0, 1 ("the" is normalised away)
    assert prediction_agreement(SQUAD_SPEC, fp32, int8) == pytest.approx((1 + 0.8 + 0 + 1) / 4)
    from kdpipe.config import ExportConfig
    from kdpipe.pipeline.export import ExportCheckError, check_gates, int8_gate

    refs = np.empty(4, dtype=object)
    refs[:] = [[a] for a in fp32]
    # QA's floor is int8_min_answer_f1, not the classifiers' int8_min_agreement
    loose = ExportConfig(int8_min_answer_f1=0.6, int8_min_agreement=1.0, int8_max_drop=1.0)
    gate = int8_gate(SQUAD_SPEC, fp32, int8, refs, loose)
    assert gate["agreement_kind"] == "answer_f1" and gate["verdict"] == "pass"
    default = ExportConfig(int8_max_drop=1.0)  # 0.8
    report = {"parity": {"max_abs_diff": 0.0}, "int8_gate": int8_gate(SQUAD_SPEC, fp32, int8, refs, default)}
    with pytest.raises(ExportCheckError, match=r"mean token F1 of 0\.700 over 4 dev questions.*int8_min_answer_f1 \(0\.8\)"):
        check_gates(report, SQUAD_SPEC, default)


def test_sentence_level_methods_ptp_and_supplementary_text_are_refused_for_qa():
    from kdpipe.pipeline.preflight import preflight

    raw = {"task": {"name": "squad", "squad_dir": str(SQUAD)},
           "distill": {"runs": {"kd": {"method": "vanilla_kd"}, "p": {"method": "pkd"}}}}
    with pytest.raises(ConfigError, match=r"distill.runs.p: pkd does not apply to extractive QA"):
        preflight(parse_params(raw))
    raw["distill"]["runs"] = {"f": {"method": "finetune", "student": {"init": "ptp"}}}
    with pytest.raises(ConfigError, match=r"distill.runs.f: student.init: ptp does not apply to extractive QA"):
        preflight(parse_params(raw))
    raw["distill"]["runs"] = {"k": {"method": "tinybert", "supplementary": {"task": "sst2"}}}
    with pytest.raises(ConfigError, match=r"distill.runs.k.supplementary: extractive QA"):
        preflight(parse_params(raw))
    raw["distill"]["runs"] = {"kd": {"method": "vanilla_kd"}, "t": {"method": "tinybert"},
                              "r": {"method": "rail_kd_l"}, "c": {"method": "cr_ild"},
                              "a": {"method": "alp_kd", "positions": "tokens"}}
    preflight(parse_params(raw))  # these apply (tests/test_e2e_qa.py runs four of them)


def test_squad_task_reads_the_official_files_and_keeps_every_reference():
    if not (SQUAD / "dev-v1.1.json").exists():
        pytest.skip(f"SQuAD files not found in {SQUAD}")
    spec, frames = load_task(TaskConfig(name="squad", squad_dir=str(SQUAD)), 42, REPO)
    assert spec == SQUAD_SPEC and len(frames["train"]) == 11877 and len(frames["dev"]) == 10570
    assert frames["dev"]["answers"].map(len).mean() == pytest.approx(3.29, abs=0.01)
    with pytest.raises(TaskDataError, match=r"task.squad_dir: .* has no train-v1.1.json or train-v1.1.part.json"):
        load_task(TaskConfig(name="squad", squad_dir=str(REPO)), 42, REPO)
    with pytest.raises(TaskDataError, match=r"task.doc_stride: only used by extractive QA"):
        load_task(TaskConfig(name="tweets", doc_stride=64), 42, REPO)


def test_your_own_squad_json_carves_dev_by_context_and_names_bad_keys(tmp_path):
    paragraphs = [{"context": f"Passage {i} says the answer is {i}.",
                   "qas": [{"id": f"{i}-{j}", "question": f"What is the answer {j}?",
                            "answers": [{"text": str(i), "answer_start": len(f"Passage {i} says the answer is ")}]}
                           for j in range(3)]} for i in range(20)]
    path = tmp_path / "qa.json"
    path.write_text(json.dumps({"data": [{"title": "t", "paragraphs": paragraphs}]}))
    cfg = TaskConfig(name="custom", problem="qa", files={"train": str(path)})
    spec, frames = load_task(cfg, 1, tmp_path)
    assert spec.problem == "qa" and spec.main_metric == "f1"
    contexts = {s: set(f["text_b"]) for s, f in frames.items()}
    assert not contexts["train"] & contexts["dev"] and not contexts["train"] & contexts.get("test", set())
    assert sum(map(len, frames.values())) == 60
    with pytest.raises(TaskDataError, match=r"task.text_columns: QA files are SQuAD JSON"):
        load_task(TaskConfig(name="custom", problem="qa", files={"train": str(path)}, text_columns=["q"]), 1, tmp_path)
    with pytest.raises(TaskDataError, match=r"task.files.dev: .* not found"):
        load_task(TaskConfig(name="custom", problem="qa", files={"train": str(path), "dev": "nope.json"}), 1, tmp_path)


def test_a_saved_span_extractor_loads_as_one(tmp_path):
    from kdpipe.models.loading import load_classifier

    tiny_qa().save_pretrained(tmp_path)
    assert model_problem(load_classifier(tmp_path)) == "qa"
