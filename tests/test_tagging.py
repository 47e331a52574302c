"""Token tagging (CoNLL-2003 NER) through the package: the task and its data, word-level batches
and logits, entity F1 and its bootstrap, the methods that apply, and teacher -> students ->
evaluate on a slice of the real CoNLL-2003 files with the real MiniLM."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from transformers import AutoTokenizer

from conftest import REPO
from kdpipe.config import ConfigError, TaskConfig, parse_params
from kdpipe.data.batches import DistillCollator, Encoder, split_labels
from kdpipe.data.conll import IGNORE
from kdpipe.data.splits import TextDataset
from kdpipe.data.tasks import CONLL_SPEC, TaskDataError, TaskSpec, load_task
from kdpipe.evaluation.metrics import compute_metrics, entity_counts, entity_f1
from kdpipe.evaluation.significance import metric_interval, paired_difference
from kdpipe.models.loading import encoder_for, load_classifier
from kdpipe.models.taps import word_logits

CONLL = REPO.parent / "shared" / "data" / "conll2003"
O, B_LOC, I_LOC, B_PER, I_PER = (CONLL_SPEC.labels.index(t) for t in ("O", "B-LOC", "I-LOC", "B-PER", "I-PER"))


@pytest.fixture(scope="module")
def encoder(minilm_path):
    return encoder_for(load_classifier(minilm_path, CONLL_SPEC.num_labels, "tagging"),
                       AutoTokenizer.from_pretrained(minilm_path), max_length=64)


def test_conll2003_is_read_as_words_and_iob2_tag_ids():
    spec, frames = load_task(TaskConfig(name="conll2003", conll_dir=str(CONLL)), seed=1, root=REPO)
    assert spec == CONLL_SPEC and {k: len(v) for k, v in frames.items()} == {"train": 14_041, "dev": 3_250,
                                                                               "test": 3_453}
    first = frames["train"].iloc[0]  # "EU rejects German call to boycott British lamb ." (IOB1: I-ORG O I-MISC ...)
    assert list(first["text_a"][:3]) == ["EU", "rejects", "German"]
    assert [CONLL_SPEC.labels[t] for t in first["label"][:3]] == ["B-ORG", "O", "B-MISC"]
    capped = load_task(TaskConfig(name="conll2003", conll_dir=str(CONLL), max_train_examples=50), 1, REPO)[1]
    assert len(capped["train"]) == 50


def test_bad_conll_inputs_name_the_key(tmp_path):
    with pytest.raises(TaskDataError, match=r"task.conll_dir: .*eng.train not found"):
        load_task(TaskConfig(name="conll2003", conll_dir=str(tmp_path)), 1, tmp_path)
    with pytest.raises(TaskDataError, match="'O' first"):
        TaskSpec("t", "tagging", ("B-X", "O"), 1, ("entity_f1",), "entity_f1")
    with pytest.raises(TaskDataError, match="not sentence pairs"):
        TaskSpec("t", "tagging", ("O", "B-X"), 2, ("entity_f1",), "entity_f1")
    with pytest.raises(TaskDataError, match="do not apply to tagging"):
        TaskSpec("t", "tagging", ("O", "B-X"), 1, ("accuracy",), "accuracy")


def _write_own_tagging_files(folder):
    """A JSON-lines train file (IOB2) and a CoNLL-column dev file (IOB1, as CoNLL-2003's)."""
    import json

    rows = [{"tokens": ["Ada", "Lovelace", "met", "Babbage", "in", "London"],
             "tags": ["B-PER", "I-PER", "O", "B-PER", "O", "B-LOC"]},
            {"tokens": ["Paris", "is", "big"], "tags": ["B-LOC", "O", "O"]}] * 10
    (folder / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "dev.conll").write_text("-DOCSTART- O\n\nAda NNP I-PER\nwent VBD O\nto TO O\nRome NNP I-LOC\n\n"
                                      "London NNP I-LOC\nBridge NNP I-LOC\n")


def test_own_tagging_files_are_read_in_either_format(tmp_path):
    _write_own_tagging_files(tmp_path)
    cfg = TaskConfig(name="custom", problem="tagging", files={"train": "train.jsonl", "dev": "dev.conll"})
    spec, frames = load_task(cfg, 1, tmp_path)
    assert spec.problem == "tagging" and spec.labels == ("O", "B-LOC", "I-LOC", "B-PER", "I-PER")
    assert spec.main_metric == "entity_f1" and set(frames) == {"train", "dev"} and len(frames["train"]) == 20
    dev = frames["dev"]
    assert list(dev["text_a"][1]) == ["London", "Bridge"]
    assert [spec.labels[t] for t in dev["label"][0]] == ["B-PER", "O", "O", "B-LOC"]  # IOB1 -> IOB2
    assert [spec.labels[t] for t in dev["label"][1]] == ["B-LOC", "I-LOC"]
    carved = load_task(TaskConfig(name="custom", problem="tagging", files={"train": "train.jsonl"}), 1, tmp_path)[1]
    assert set(carved) == {"train", "dev", "test"} and sum(map(len, carved.values())) == 20


def test_bad_own_tagging_files_name_the_file_and_key(tmp_path):
    _write_own_tagging_files(tmp_path)
    (tmp_path / "odd.conll").write_text("Ada B-PER\nran B-VERB\n")
    with pytest.raises(TaskDataError, match=r"task.files.dev: tag\(s\) \['B-VERB'\] are not in the train file's"):
        load_task(TaskConfig(name="custom", problem="tagging", files={"train": "train.jsonl", "dev": "odd.conll"}),
                  1, tmp_path)
    with pytest.raises(TaskDataError, match="task.text_columns: tagging files carry words and tags"):
        load_task(TaskConfig(name="custom", problem="tagging", files={"train": "train.jsonl"}, text_columns=["t"]),
                  1, tmp_path)
    with pytest.raises(TaskDataError, match="task.files.dev: .*missing.conll not found"):
        load_task(TaskConfig(name="custom", problem="tagging", files={"train": "train.jsonl", "dev": "missing.conll"}),
                  1, tmp_path)
    with pytest.raises(TaskDataError, match=r"task.labels: .*'O' first"):
        load_task(TaskConfig(name="custom", problem="tagging", files={"train": "train.jsonl"}, labels=["B-PER", "O"]),
                  1, tmp_path)


def test_word_batches_point_at_first_sub_tokens_and_drop_cut_words(encoder, tokenizer):
    words = [["Huggingface", "is", "in", "Brooklyn"], ["Paris"]]
    inputs, first = encoder.words(words)
    for b, sentence in enumerate(words):
        ids = inputs["input_ids"][b]
        for w, word in enumerate(sentence):  # the position holds the word's first piece
            assert tokenizer.convert_ids_to_tokens(int(ids[first[b, w]])) == tokenizer.tokenize(word)[0]
    assert first[1, 1:].tolist() == [-1, -1, -1]  # padding words
    # a max length that cuts the last words: their labels are IGNORE, in batches and in split_labels
    short = Encoder(tokenizer, encoder.input_names, max_length=5)
    rows = [{"index": 0, "text_a": words[0], "text_b": None, "label": [B_PER, O, O, B_LOC]}]
    batch = DistillCollator(short, short, regression=False)(rows)
    kept = int((batch["student_words"][0] >= 0).sum())
    assert 0 < kept < 4 and batch["labels"][0].tolist() == [B_PER, O, O, B_LOC][:kept] + [IGNORE] * (4 - kept)
    dataset = TextDataset(pd.DataFrame({"text_a": [words[0], words[1]], "label": [[B_PER, O, O, B_LOC], [B_LOC]]}))
    assert split_labels(dataset, short).tolist() == [batch["labels"][0].tolist(), [B_LOC] + [IGNORE] * 3]


def test_word_logits_read_each_words_first_token():
    logits = torch.arange(2 * 4 * 3, dtype=torch.float32).reshape(2, 4, 3)
    first = torch.tensor([[1, 3], [2, -1]])
    out = word_logits(logits, first)
    assert out.shape == (2, 2, 3)
    assert torch.equal(out[0, 0], logits[0, 1]) and torch.equal(out[0, 1], logits[0, 3])
    assert torch.equal(out[1, 0], logits[1, 2]) and torch.equal(out[1, 1], torch.zeros(3))


def _one_hot(ids: np.ndarray) -> np.ndarray:
    return np.eye(CONLL_SPEC.num_labels)[ids] * 5.0


def test_entity_f1_matches_seqeval_and_its_bootstrap_sums_per_sentence_counts():
    from seqeval.metrics import f1_score

    rng = np.random.default_rng(0)
    gold = rng.integers(0, CONLL_SPEC.num_labels, size=(40, 7))
    gold[:, 5:] = IGNORE  # padding words
    pred = np.where(rng.random(gold.shape) < 0.7, gold, rng.integers(0, CONLL_SPEC.num_labels, size=gold.shape))
    pred[gold == IGNORE] = 0
    names = np.asarray(CONLL_SPEC.labels)
    ref = f1_score([list(names[g[:5]]) for g in gold], [list(names[p[:5]]) for p in pred])  # an independent F1
    assert compute_metrics(CONLL_SPEC, _one_hot(pred), gold)["entity_f1"] == pytest.approx(ref)
    assert entity_f1(entity_counts(CONLL_SPEC, pred, gold)) == pytest.approx(ref)
    # a hand case: gold [B-PER I-PER O B-LOC], predicted [B-PER I-PER O O] -> TP 1, predicted 1, gold 2
    counts = entity_counts(CONLL_SPEC, np.array([[B_PER, I_PER, O, O]]), np.array([[B_PER, I_PER, O, B_LOC]]))
    assert counts.tolist() == [[1, 1, 2]] and entity_f1(counts) == pytest.approx(2 / 3)
    # the paired bootstrap: identical models tie; a model that loses a fifth of the other's entities is worse
    same = paired_difference(CONLL_SPEC, _one_hot(pred), _one_hot(pred), gold)
    assert (same.observed, same.verdict) == (0.0, "no detectable difference")
    truth = np.where(gold == IGNORE, 0, gold)
    worse = truth.copy()
    worse[::5] = O  # every fifth sentence untagged
    d = paired_difference(CONLL_SPEC, _one_hot(worse), _one_hot(truth), gold)
    assert d.observed < 0 and d.verdict == "worse"
    value, low, high = metric_interval(CONLL_SPEC, [_one_hot(pred), _one_hot(truth)], gold)
    assert low <= value <= high


def test_methods_that_do_not_apply_to_tagging_are_refused_before_any_work():
    from kdpipe.pipeline.preflight import preflight

    raw = {"task": {"name": "conll2003", "conll_dir": str(CONLL)},
           "distill": {"runs": {"kd": {"method": "vanilla_kd"}, "p": {"method": "pkd"}}}}
    with pytest.raises(ConfigError, match=r"distill.runs.p: pkd does not apply to token tagging"):
        preflight(parse_params(raw))
    raw["distill"]["runs"] = {"a": {"method": "alp_kd_no"}}
    with pytest.raises(ConfigError, match=r"distill.runs.a: alp_kd_no does not apply to token tagging.*\[CLS\]"):
        preflight(parse_params(raw))
    raw["distill"]["runs"] = {"kd": {"method": "vanilla_kd"}, "t": {"method": "tinybert"},
                              "r": {"method": "rail_kd_l"}, "c": {"method": "cr_ild"},
                              "a": {"method": "alp_kd", "positions": "tokens"}}
    preflight(parse_params(raw))  # these apply (test_every_tagging_method_trains_a_word_level_student)


def test_ner_teacher_and_students_through_the_python_api(tmp_path, minilm_path):
    from kdpipe.pipeline.data import prepare_data
    from kdpipe.pipeline.distill import distill
    from kdpipe.pipeline.evaluate import evaluate_models
    from kdpipe.pipeline.export import export_student
    from kdpipe.pipeline.teacher import train_teacher

    params = parse_params({
        "seed": 1, "max_length": 64,
        "task": {"name": "conll2003", "conll_dir": str(CONLL), "max_train_examples": 400, "max_eval_examples": 100},
        "teacher": {"model": "minilm", "train": {"epochs": 2, "batch_size": 16, "lr": 1e-4}},
        "student": {"num_layers": 2},
        "distill": {"train": {"epochs": 1, "batch_size": 16, "lr": 1e-4}, "seeds": [1],
                    "runs": {"finetune": {"method": "finetune"}, "vanilla_kd": {"method": "vanilla_kd"},
                             "tinybert": {"method": "tinybert", "phases": {"ild": {"epochs": 1}}}}},
        "evaluate": {"latency_batch_sizes": [1], "latency_warmup": 1, "latency_repeats": 2},
        "tracking": {"enabled": False}})
    prepare_data(params, tmp_path, tmp_path / "data")
    teacher = train_teacher(params, tmp_path / "data", tmp_path / "teacher", tmp_path / "ck/t", tmp_path / "plots")
    assert teacher["best_dev"]["entity_f1"] > 0.15  # it learned entities (all-O scores 0): 0.28 measured
    for run in params.distill.runs:
        distill(params, run, tmp_path / "data", tmp_path / "teacher", tmp_path / f"students/{run}/seed-1",
                tmp_path / f"ck/{run}", tmp_path / "plots", seed=1)
    report = evaluate_models(params, tmp_path / "data", tmp_path / "teacher", tmp_path / "students",
                             predictions_dir=tmp_path / "predictions")
    assert report["main_metric"] == "entity_f1"
    assert report["teacher"]["dev"]["entity_f1"] == pytest.approx(teacher["best_dev"]["entity_f1"], abs=1e-6)
    for run, r in report["students"].items():
        assert 0 <= r["dev_interval"]["low"] <= r["dev"]["entity_f1"] <= r["dev_interval"]["high"] <= 1, run
        if run != "finetune":  # every student is compared with the no-KD one, on entity F1
            assert r["versus"]["finetune"]["verdict"] in ("better", "worse", "no detectable difference"), run
    saved = pd.read_parquet(tmp_path / "predictions/teacher.parquet")
    assert len(saved) == 200 and len(saved["prediction"][0]) == len(saved["label"][0])
    # export: ONNX parity on token logits, the torch-free tagger's per-word dev F1 equal to PyTorch's
    exported = export_student(params, tmp_path / "students/vanilla_kd/seed-1", tmp_path / "data", tmp_path / "export")
    assert exported["parity"]["max_abs_diff"] < 1e-4
    assert exported["fp32"]["dev"]["entity_f1"] == pytest.approx(report["students"]["vanilla_kd"]["dev"]["entity_f1"],
                                                                 abs=1e-6)
    gate = exported["int8_gate"]
    assert gate["agreement_kind"] == "same_tag" and 0.9 <= gate["agreement"] <= 1 and gate["examples"] == 100
    from kdpipe.export.runtime import OnnxTokenTagger, open_export
    tagger = open_export(tmp_path / "export", variant="int8")
    assert isinstance(tagger, OnnxTokenTagger)
    text = "Peter Blackburn flew to Germany ."
    result = tagger.predict([text])[0]
    assert result["tokens"] == ["Peter", "Blackburn", "flew", "to", "Germany", "."]
    assert len(result["tags"]) == 6
    for e in result["entities"]:  # character spans into the raw text
        assert text[e["start"]:e["end"]] == e["text"] and e["type"] in ("PER", "LOC", "ORG", "MISC")


def test_per_word_soft_losses_skip_padding_words():
    from kdpipe.methods.base import kd_kl_loss
    from kdpipe.methods.tinybert import soft_cross_entropy

    g = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(2, 3, 4, generator=g), torch.randn(2, 3, 4, generator=g)
    words = torch.tensor([[True, True, False], [True, False, False]])
    by_hand = -(torch.softmax(teacher, -1) * torch.log_softmax(student, -1))[words].mean()  # 3 words x 4 tags
    assert soft_cross_entropy(student, teacher, 1.0, words).item() == pytest.approx(by_hand.item(), rel=1e-6)
    moved = student.clone()
    moved[~words] += 100.0  # padding words' logits do not count
    assert soft_cross_entropy(moved, teacher, 1.0, words).item() == pytest.approx(by_hand.item(), rel=1e-6)
    assert kd_kl_loss(moved, teacher, 2.0, words).item() == pytest.approx(kd_kl_loss(student, teacher, 2.0, words).item())
    with pytest.raises(ValueError, match="need the words that count"):
        kd_kl_loss(student, teacher, 2.0)


def _tiny_tagger(layers: int):
    from transformers import BertConfig, BertForTokenClassification

    torch.manual_seed(layers)
    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=layers, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=128, num_labels=CONLL_SPEC.num_labels,
                        attn_implementation="eager")
    return BertForTokenClassification(config)


@pytest.mark.parametrize("name", ["finetune", "vanilla_kd", "tinybert", "rail_kd_l", "rail_kd_c", "cr_ild",
                                  "alp_kd:tokens", "alp_kd_no:tokens"])
def test_every_tagging_method_trains_a_word_level_student(name, tokenizer):
    """One step of every phase, as the engine runs it (live teacher, mixup and the clean pass for
    CR-ILD): a finite loss whose gradient reaches the student."""
    from kdpipe.methods.registry import build_method
    from kdpipe.models.adapters import ModelShape, Shapes
    from kdpipe.training.engine import teacher_signal
    from kdpipe.models.taps import run_model

    teacher, student = _tiny_tagger(4).eval(), _tiny_tagger(2)
    name, _, positions = name.partition(":")
    method = build_method(name, {"positions": positions} if positions else {}, regression=False,
                          shapes=Shapes(student=ModelShape(2, 32, 4), teacher=ModelShape(4, 32, 4)))
    encoder = Encoder(tokenizer, ["input_ids", "attention_mask", "token_type_ids"], max_length=32)
    rows = [{"index": 0, "text_a": ["Huggingface", "is", "in", "Brooklyn"], "text_b": None, "label": [5, 0, 0, 1]},
            {"index": 1, "text_a": ["Paris"], "text_b": None, "label": [1]}]
    batch = DistillCollator(encoder, encoder, regression=False)(rows)
    for phase in method.phases:
        method.set_phase(phase)
        method.begin_training(2)
        method.begin_step(1, 0)  # the second epoch: CR-ILD's consistency ramp is on
        mix = method.mixup(2, "cpu")
        teacher_out = teacher_signal(method, batch, teacher, None, torch.device("cpu"), mix)
        student_out = run_model(student, batch["student"], method.student_needs, mix, batch["student_words"])
        if mix is not None and method.needs_clean_pass:
            with torch.no_grad():
                student_out.clean = run_model(student, batch["student"], method.student_needs, words=batch["student_words"])
        losses = method.losses(student_out, teacher_out, batch["labels"])
        assert torch.isfinite(losses["loss"]), (name, phase, losses)
        student.zero_grad()
        losses["loss"].backward()
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters()), (name, phase)
