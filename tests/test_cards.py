"""Model cards (evaluation.cards) from constructed reports: the Hugging Face metadata parses and
carries the numbers, each folder's card says what its stage knows and no more."""

from __future__ import annotations

import yaml

from kdpipe.config import Params
from kdpipe.evaluation import cards
from kdpipe.pipeline.export import export_card_facts
from kdpipe.data.tasks import TaskSpec

SPEC = TaskSpec(name="tweets", problem="classification", labels=("negative", "neutral", "positive"),
                num_text_fields=1, metrics=("accuracy", "macro_f1"), main_metric="accuracy")
PARAMS = Params.model_validate({"distill": {"seeds": [42, 43], "runs": {"pkd": {"method": "pkd"}}}})


def _distill_report(accuracy: float, selected: str = "best") -> dict:
    return {"selected": selected, "best_dev": {"accuracy": accuracy}, "last_dev": {"accuracy": accuracy - 0.01},
            "method": "pkd", "total_steps": 64, "train_seconds": 30.0,
            "student": {"num_layers": 3, "effective_layers": 3, "parameters": 17_390_979, "init_source": "teacher"}}


EXPORT = {"parity": {"max_abs_diff": 7e-7},
          "fp32": {"dev": {"accuracy": 0.70}, "latency_ms": {"batch_1": 1.5, "batch_32": 30.0}, "size_mb": 66.7},
          "int8": {"dev": {"accuracy": 0.69}, "latency_ms": {"batch_1": 0.9, "batch_32": 20.0}, "size_mb": 17.0},
          "int8_gate": {"agreement": 0.98, "drop": 0.01, "drop_interval": {"low": 0.0, "high": 0.02},
                        "examples": 500, "verdict": "pass"}}


def _split(card: str) -> tuple[dict, str]:
    assert card.startswith("---\n")
    front, body = card[4:].split("\n---\n", 1)
    return yaml.safe_load(front), body


def test_student_folder_card_is_one_seed_and_points_to_the_verdicts():
    facts = cards.student_card_facts(PARAMS, "pkd", 43, _distill_report(0.68), SPEC.to_dict())
    meta, body = _split(cards.model_card(facts))
    assert meta["base_model"] == "sentence-transformers/all-MiniLM-L6-v2" and meta["library_name"] == "transformers"
    assert "pkd" in meta["tags"] and "onnx" not in meta["tags"]
    [result] = meta["model-index"][0]["results"]
    assert result["metrics"][0]["value"] == 0.68 and result["dataset"]["split"] == "dev"
    assert "seed 43 (evidence only: the first seed ships)" in body
    assert "negative, neutral, positive" in body and "17,390,979 parameters" in body
    assert "reports/cards/pkd/README.md" in body  # the verdict is not known in this folder
    assert "## Deployment" not in body


def test_export_card_has_the_mean_over_seeds_and_what_ships():
    reports = {42: _distill_report(0.70), 43: _distill_report(0.68, selected="last")}  # last_dev: 0.67
    facts = export_card_facts(PARAMS, "pkd", 42, reports, SPEC, EXPORT)
    assert facts.seeds == [42, 43] and abs(facts.dev - 0.685) < 1e-12
    assert abs(facts.dev_std - 0.0212132) < 1e-6  # sample std of 0.70, 0.67
    meta, body = _split(cards.model_card(facts))
    values = [m["value"] for m in meta["model-index"][0]["results"][0]["metrics"]]
    assert values == [0.685, 0.69] and meta["library_name"] == "onnx"
    assert "**0.6850** ± 0.0212 (n=2) over seeds 42, 43" in body
    assert "seed 42 (the seed that ships)" in body
    assert "Ships `model.int8.onnx` (int8, 17.0 MB): dev accuracy 0.6900; latency 0.90 ms at batch 1, 20.00 ms at batch 32" in body
    assert "drop +0.0100 [+0.0000, +0.0200], agreement 0.980 on 500 dev examples: pass" in body


def test_export_card_without_int8_ships_fp32():
    export = {k: v for k, v in EXPORT.items() if k not in ("int8", "int8_gate")}
    facts = export_card_facts(PARAMS, "pkd", 42, {42: _distill_report(0.70)}, SPEC, export)
    _, body = _split(cards.model_card(facts))
    assert "Ships `model.onnx` (fp32, 66.7 MB)" in body and "int8 vs fp32" not in body
    assert "Dev accuracy: **0.7000** over seeds 42." in body  # one seed: no spread to show


def test_report_card_carries_evaluates_verdicts():
    vs = {"run": "finetune", "difference": 0.03, "low": 0.01, "high": 0.05, "verdict": "better"}
    tie = {"run": "vanilla_kd", "difference": 0.004, "low": -0.01, "high": 0.02, "verdict": "no detectable difference"}
    evaluation = {"task": "tweets", "main_metric": "accuracy", "spec": SPEC.to_dict(),
                  "teacher": {"dev": {"accuracy": 0.70}},
                  "students": {"pkd": {"method": "pkd", "dev": {"accuracy": 0.69}, "dev_std": {"accuracy": 0.004},
                                       "seeds": [42, 43], "dev_interval": {"low": 0.66, "high": 0.72},
                                       "layers": 3, "physical_layers": 3, "parameters": 17_390_979,
                                       "versus": {"finetune": vs, "vanilla_kd": tie}}}}
    facts = cards.report_card_facts(PARAMS, evaluation, "pkd", EXPORT, _distill_report(0.7))
    _, body = _split(cards.model_card(facts))
    assert "Against the same student without KD (finetune): +0.0300 [+0.0100, +0.0500], **better**" in body
    assert "Against vanilla KD (vanilla_kd): +0.0040 [-0.0100, +0.0200], **no detectable difference**" in body
    assert "95 % interval [0.6600, 0.7200]" in body and "retention 98.6 %" in body
    assert "reports/cards/pkd/README.md" not in body  # this is that card


def test_a_tagging_card_is_a_token_classification_card():
    from kdpipe.data.tasks import CONLL_SPEC

    export = {**EXPORT, "fp32": {**EXPORT["fp32"], "dev": {"entity_f1": 0.74}},
              "int8": {**EXPORT["int8"], "dev": {"entity_f1": 0.74}},
              "int8_gate": {**EXPORT["int8_gate"], "agreement_kind": "same_tag"}}
    facts = export_card_facts(PARAMS, "tinybert", 42, {}, CONLL_SPEC, export)
    meta, body = _split(cards.model_card(facts))
    assert meta["pipeline_tag"] == "token-classification"
    assert meta["model-index"][0]["results"][0]["task"]["type"] == "token-classification"
    assert "agreement 0.980 of the words on 500 dev examples" in body
    assert cards.metadata(cards.student_card_facts(PARAMS, "pkd", 43, _distill_report(0.68), SPEC.to_dict()))[
        "pipeline_tag"] == "text-classification"
