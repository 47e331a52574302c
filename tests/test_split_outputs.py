"""A trained model's dev/test outputs, saved by its training stage and scored by evaluate."""

import numpy as np
import pandas as pd
import pytest

from conftest import tiny_bert
from kdpipe.data.batches import DistillCollator
from kdpipe.data.splits import TextDataset
from kdpipe.evaluation.predict import SPLIT_OUTPUTS_FILE, load_split_outputs, save_split_outputs, split_outputs
from kdpipe.models.loading import encoder_for, save_model

SETS = {"train": TextDataset(pd.DataFrame({"text_a": ["unused"], "label": [0]})),
        "dev": TextDataset(pd.DataFrame({"text_a": ["a fine day", "rain again, all week long and then some", "ok"],
                                         "label": [2, 0, 1]})),
        "test": TextDataset(pd.DataFrame({"text_a": ["so so", "the best phone I have ever had"], "label": [1, 2]}))}


def _model_dir(tmp_path, tokenizer):
    model = tiny_bert(3).eval()
    folder = tmp_path / "student"
    save_model(model, tokenizer, folder)
    return model, folder


def test_saved_outputs_are_predicts_and_a_stale_key_reads_none(tmp_path, tokenizer):
    model, folder = _model_dir(tmp_path, tokenizer)
    collator = DistillCollator(encoder_for(model, tokenizer, 16), None, regression=False)
    outputs = split_outputs(model, SETS, collator)
    assert set(outputs) == {"dev", "test"}  # train is never scored
    save_split_outputs(folder, outputs, key="data-1")
    assert sorted(p.name for p in folder.iterdir() if p.name.startswith("split")) == [SPLIT_OUTPUTS_FILE]  # no temporary left
    loaded = load_split_outputs(folder, "data-1")
    for split in ("dev", "test"):
        np.testing.assert_array_equal(loaded[split][0], outputs[split][0])  # logits, in dataset order
        np.testing.assert_array_equal(loaded[split][1], [r["label"] for r in SETS[split]])
        assert loaded[split][2] == pytest.approx(outputs[split][2])
    assert load_split_outputs(folder, "data-2") is None  # other data, max_length or prediction code
    assert load_split_outputs(tmp_path, "data-1") is None  # none saved


def test_evaluate_scores_the_saved_outputs_and_predicts_without_them(tmp_path, tokenizer):
    from kdpipe.config import parse_params
    from kdpipe.data.tasks import get_task
    from kdpipe.pipeline.evaluate import evaluate_model

    params = parse_params({"max_length": 16})
    spec = get_task("tweets")
    model, folder = _model_dir(tmp_path, tokenizer)
    predicted = evaluate_model(params, folder, spec, SETS, timing=False)  # nothing saved: predicts
    outputs = split_outputs(model, SETS, DistillCollator(encoder_for(model, tokenizer, 16), None, regression=False))
    # doctored outputs: a report that changes with them proves evaluate read the file
    outputs["dev"] = (np.eye(3, dtype=np.float32)[[2, 0, 1]], outputs["dev"][1], 0.5)
    save_split_outputs(folder, outputs, key="k")
    scored = evaluate_model(params, folder, spec, SETS, timing=False, outputs_key="k")
    assert scored["dev"]["accuracy"] == 1.0 and scored["dev"]["loss"] == 0.5
    assert scored["test"] == predicted["test"]
    assert evaluate_model(params, folder, spec, SETS, timing=False, outputs_key="other") == predicted
