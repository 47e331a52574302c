import pandas as pd
import torch

from kdpipe.data.batches import DistillCollator, Encoder, EpochShuffleSampler
from kdpipe.data.splits import TextDataset
from kdpipe.models.family import EncoderFamily

from conftest import tiny_bert, tiny_distilbert


def test_teacher_and_student_inputs_are_built_separately(tokenizer):
    """A DistilBERT student takes no token_type_ids; the BERT teacher must still get real ones."""
    teacher, student = tiny_bert(), tiny_distilbert()
    assert EncoderFamily.input_names(student, tokenizer) == ["input_ids", "attention_mask"]
    assert "token_type_ids" in EncoderFamily.input_names(teacher, tokenizer)
    collator = DistillCollator(Encoder(tokenizer, EncoderFamily.input_names(student, tokenizer), 32),
                               Encoder(tokenizer, EncoderFamily.input_names(teacher, tokenizer), 32), regression=False)
    data = TextDataset(pd.DataFrame({"text_a": ["first one", "a second, longer premise here"],
                                     "text_b": ["hypothesis", "another"], "label": [0, 2]}))
    batch = collator([data[0], data[1]])
    assert set(batch["student"]) == {"input_ids", "attention_mask"}
    tt = batch["teacher"]["token_type_ids"]
    assert tt.sum() > 0  # the second segment is marked, not all zeros
    assert batch["labels"].dtype == torch.long and batch["index"].tolist() == [0, 1]
    # dynamic padding: to the longest in the batch, not max_length
    assert batch["teacher"]["input_ids"].shape[1] < 32


def test_regression_labels_are_float(tokenizer):
    enc = Encoder(tokenizer, ["input_ids", "attention_mask"], 16)
    data = TextDataset(pd.DataFrame({"text_a": ["x"], "label": [3.5]}))
    assert DistillCollator(enc, None, regression=True)([data[0]])["labels"].dtype == torch.float32


def test_truncation_respects_max_length(tokenizer):
    enc = Encoder(tokenizer, ["input_ids", "attention_mask"], 8)
    assert enc(["word " * 50], None)["input_ids"].shape == (1, 8)


def test_epoch_order_depends_only_on_seed_and_epoch():
    a, b = EpochShuffleSampler(10, seed=3), EpochShuffleSampler(10, seed=3)
    b.set_epoch(1)
    b.set_epoch(0)
    assert list(a) == list(b) and sorted(a) == list(range(10))
    a.set_epoch(1)
    assert list(a) != list(b)
