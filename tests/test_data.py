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


def _padded_tokens(order: list[int], lengths: list[int], batch_size: int) -> int:
    return sum(max(lengths[i] for i in order[s:s + batch_size]) * len(order[s:s + batch_size])
               for s in range(0, len(order), batch_size))


def test_length_grouped_epochs_are_seeded_permutations_with_less_padding():
    """Every example once per epoch, the order a function of (seed, epoch) only (exact resume),
    and batches that pad far less than a random order: the point of grouping."""
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(3, 64, (640,), generator=g).tolist()
    a = EpochShuffleSampler(640, seed=3, lengths=lengths, batch_size=16)
    b = EpochShuffleSampler(640, seed=3, lengths=lengths, batch_size=16)
    b.set_epoch(1)
    b.set_epoch(0)
    assert list(a) == list(b) and sorted(a) == list(range(640))
    a.set_epoch(1)
    assert list(a) != list(b) and sorted(a) == list(range(640))
    grouped = _padded_tokens(list(a), lengths, 16)
    plain = _padded_tokens(list(EpochShuffleSampler(640, seed=3)), lengths, 16)
    assert grouped < 0.7 * plain and grouped >= sum(lengths)


def test_length_grouping_needs_a_length_per_example():
    import pytest
    with pytest.raises(ValueError, match="one length per example"):
        EpochShuffleSampler(5, seed=0, lengths=[1, 2], batch_size=2)


def test_inference_loader_goes_longest_first_and_predict_restores_dataset_order(tokenizer):
    """Predictions come back in dataset order whatever order the loader visits examples in."""
    from kdpipe.data.batches import inference_loader
    from kdpipe.evaluation.predict import predict
    model = tiny_bert().eval()
    texts = ["short", "a much longer sentence with many more words in it", "mid length one", "x y"]
    data = TextDataset(pd.DataFrame({"text_a": texts, "label": [0, 1, 2, 0]}))
    collator = DistillCollator(Encoder(tokenizer, ["input_ids", "attention_mask", "token_type_ids"], 32), None, False)
    loader = inference_loader(data, collator, batch_size=2)
    assert [i for batch in loader for i in batch["index"].tolist()] == [1, 2, 3, 0]
    logits, labels, _ = predict(model, loader)
    one_by_one = torch.cat([model(**collator([data[i]])["student"]).logits for i in range(4)])
    assert labels.tolist() == [0, 1, 2, 0]
    torch.testing.assert_close(torch.from_numpy(logits), one_by_one.detach(), atol=1e-5, rtol=1e-4)


def test_lengths_cover_a_concatenation_of_train_and_supplementary_text(tokenizer):
    """Label-free phases train on train + supplementary text (a ConcatDataset): grouping needs
    the length of every row of it, in order."""
    from torch.utils.data import ConcatDataset
    enc = Encoder(tokenizer, ["input_ids", "attention_mask"], 8)
    train = TextDataset(pd.DataFrame({"text_a": ["one two three", "x"], "label": [0, 1]}))
    extra = TextDataset(pd.DataFrame({"text_a": ["word " * 20], "label": [0]}))
    assert enc.lengths(ConcatDataset([train, extra])) == enc.lengths(train) + [8]  # truncated at max_length
    assert enc.lengths(train) == [len(enc(["one two three"], None)["input_ids"][0]), 3]
