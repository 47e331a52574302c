"""Token-tagging metrics: entity-level micro F1 (the conlleval definition, through ``seqeval``)
and per-type F1, over IOB2 tag sequences.  Torch-free."""

from __future__ import annotations

from collections.abc import Sequence


def entity_scores(references: Sequence[Sequence[str]], predictions: Sequence[Sequence[str]]) -> dict:
    """``f1``, ``precision``, ``recall`` (micro, over entities: an entity counts only with its exact
    span and type) and ``per_type`` F1, from one IOB2 tag sequence per sentence.  Percent."""
    from seqeval.metrics import classification_report, f1_score, precision_score, recall_score

    if len(references) != len(predictions) or any(len(r) != len(p) for r, p in zip(references, predictions)):
        raise ValueError("references and predictions need the same sentences and the same length each")
    refs, preds = [list(r) for r in references], [list(p) for p in predictions]
    report = classification_report(refs, preds, output_dict=True, zero_division=0)
    per_type = {k: 100 * v["f1-score"] for k, v in report.items() if not k.endswith(" avg")}
    return {"f1": 100 * f1_score(refs, preds, zero_division=0),
            "precision": 100 * precision_score(refs, preds, zero_division=0),
            "recall": 100 * recall_score(refs, preds, zero_division=0), "per_type": per_type}
