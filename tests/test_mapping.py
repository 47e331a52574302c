"""Layer mappings: fixed strategies' exact pairs, buckets' coverage, RAIL-KD's random draws
(sorted, distinct, seeded, independent of global RNGs, reproducible after resume), validation
errors naming the param, and the readable table."""

import random
from collections import Counter

import numpy as np
import pytest
import torch

from kdpipe.methods.mapping import LayerMap, MappingError, build_mapping, format_table


# ------------------------------------------------------------------------- one-to-one strategies
@pytest.mark.parametrize("ls, lt, expected", [
    (3, 6, {1: 2, 2: 4, 3: 6}),
    (4, 12, {1: 3, 2: 6, 3: 9, 4: 12}),
    (6, 12, {1: 2, 2: 4, 3: 6, 4: 8, 5: 10, 6: 12}),
    (3, 3, {1: 1, 2: 2, 3: 3}),
    (5, 12, {1: 2, 2: 5, 3: 7, 4: 10, 5: 12}),   # rounded to nearest: 2.4, 4.8, 7.2, 9.6, 12
    (3, 8, {1: 3, 2: 5, 3: 8}),                  # 2.67, 5.33, 8
])
def test_uniform(ls, lt, expected):
    m = build_mapping("uniform", ls, lt)
    assert m.pairs() == [(s, (t,)) for s, t in expected.items()]
    assert m.pairs(epoch=5, step=7) == m.pairs()  # fixed strategies ignore the training point
    assert m.student == tuple(expected)
    assert m.student_layers == frozenset(expected)
    assert m.teacher_layers == frozenset(expected.values())


def test_uniform_with_embeddings_puts_the_embedding_pair_first():
    m = build_mapping("uniform", 3, 6, include_embeddings=True)
    assert m.pairs() == [(0, (0,)), (1, (2,)), (2, (4,)), (3, (6,))]
    assert 0 in m.teacher_layers and 0 in m.student_layers


def test_uniform_subset_of_student_layers_keeps_their_own_targets():
    m = build_mapping("uniform", 6, 12, student_layers=[2, 5])
    assert m.pairs() == [(2, (4,)), (5, (10,))]


def test_last():
    assert build_mapping("last", 3, 6, student_layers=[1, 2]).pairs() == [(1, (4,)), (2, (5,))]
    assert build_mapping("last", 3, 6).pairs() == [(1, (4,)), (2, (5,)), (3, (6,))]
    assert build_mapping("last", 4, 12).pairs() == [(1, (9,)), (2, (10,)), (3, (11,)), (4, (12,))]


def test_explicit():
    m = build_mapping("explicit", 3, 12, student_layers=[1, 3], teacher_layers=[5, 11])
    assert m.pairs() == [(1, (5,)), (3, (11,))]
    m = build_mapping("explicit", 3, 12, teacher_layers=[2, 7, 12])
    assert m.pairs() == [(1, (2,)), (2, (7,)), (3, (12,))]
    assert m.teacher_layers == frozenset({2, 7, 12})


# -------------------------------------------------------------------------------------- buckets
def test_buckets_12_to_4_non_overlapping_partition():
    m = build_mapping("buckets", 4, 12)
    assert m.pairs() == [(1, (1, 2, 3)), (2, (4, 5, 6)), (3, (7, 8, 9)), (4, (10, 11, 12))]
    counts = Counter(t for _, ts in m.pairs() for t in ts)
    assert sorted(counts) == list(range(1, 13)) and set(counts.values()) == {1}
    assert m.teacher_layers == frozenset(range(1, 13))


def test_buckets_partial_overlap_widens_by_one_within_range():
    m = build_mapping("buckets", 4, 12, overlap=True)
    assert m.pairs() == [(1, (1, 2, 3, 4)), (2, (3, 4, 5, 6, 7)), (3, (6, 7, 8, 9, 10)),
                         (4, (9, 10, 11, 12))]
    # each bucket is contiguous, neighbours share exactly two layers
    ts = [set(t) for _, t in m.pairs()]
    assert all(len(a & b) == 2 for a, b in zip(ts, ts[1:]))
    assert all(min(t) >= 1 and max(t) <= 12 for t in ts)


@pytest.mark.parametrize("ls, lt", [(3, 7), (4, 10), (5, 12), (6, 6), (1, 5)])
def test_uneven_buckets_cover_every_teacher_layer_exactly_once(ls, lt):
    pairs = build_mapping("buckets", ls, lt).pairs()
    assert [s for s, _ in pairs] == list(range(1, ls + 1))
    flat = [t for _, ts in pairs for t in ts]
    assert flat == list(range(1, lt + 1))  # in order, each once, contiguous buckets
    sizes = [len(ts) for _, ts in pairs]
    assert max(sizes) - min(sizes) <= 1   # as even as possible


def test_buckets_7_to_3_exact():
    assert build_mapping("buckets", 3, 7).pairs() == [(1, (1, 2, 3)), (2, (4, 5)), (3, (6, 7))]
    assert build_mapping("buckets", 3, 7, overlap=True).pairs() == [
        (1, (1, 2, 3, 4)), (2, (3, 4, 5, 6)), (3, (5, 6, 7))]


def test_buckets_for_a_subset_of_student_layers():
    assert build_mapping("buckets", 4, 12, student_layers=[2, 4]).pairs() == [(2, (4, 5, 6)), (4, (10, 11, 12))]


def test_all_gives_every_teacher_layer_to_every_student_layer():
    m = build_mapping("all", 3, 6)
    assert m.pairs() == [(s, (1, 2, 3, 4, 5, 6)) for s in (1, 2, 3)]
    m = build_mapping("all", 2, 4, include_embeddings=True)
    assert m.pairs() == [(0, (0,)), (1, (1, 2, 3, 4)), (2, (1, 2, 3, 4))]


# ---------------------------------------------------------------------------------- random
def _random(ls=3, lt=6, **kw) -> LayerMap:
    return build_mapping("random", ls, lt, **kw)


@pytest.mark.parametrize("ls, lt, exclude", [(3, 6, 0), (6, 12, 0), (4, 12, 2), (6, 6, 0)])
def test_random_draws_are_sorted_distinct_from_the_pool(ls, lt, exclude):
    m = _random(ls, lt, exclude_last=exclude, seed=11)
    pool = set(range(1, lt - exclude + 1))
    assert set(m.pool) == pool and m.teacher_layers == frozenset(pool)
    for epoch in range(20):
        drawn = m.draw(epoch)
        assert len(drawn) == ls
        assert drawn == sorted(set(drawn))           # ascending, no repeats
        assert set(drawn) <= pool
        assert all(type(t) is int for t in drawn)
        assert m.pairs(epoch) == [(s, (t,)) for s, t in zip(range(1, ls + 1), drawn)]


def test_random_is_reproducible_from_the_seed():
    a, b, c = _random(6, 12, seed=3), _random(6, 12, seed=3), _random(6, 12, seed=4)
    draws_a = [a.draw(e) for e in range(6)]
    assert draws_a == [b.draw(e) for e in range(6)]
    assert draws_a != [c.draw(e) for e in range(6)]
    assert len({tuple(d) for d in draws_a}) > 1  # it is not a constant mapping


def test_random_epoch_resample_is_constant_within_an_epoch_and_changes_across_epochs():
    m = _random(6, 12, seed=0, resample="epoch")
    for epoch in range(5):
        first = m.pairs(epoch, 0)
        assert all(m.pairs(epoch, step) == first for step in (1, 2, 17, 1000))
    draws = {tuple(m.draw(e)) for e in range(10)}
    assert len(draws) >= 5  # C(12, 6) = 924 possibilities


def test_random_batch_resample_changes_across_steps():
    m = _random(6, 12, seed=0, resample="batch")
    draws = [tuple(m.draw(0, step)) for step in range(10)]
    assert len(set(draws)) >= 5
    assert m.draw(0, 3) == m.draw(0, 3)                 # still a pure function of (seed, epoch, step)
    assert [m.draw(1, s) for s in range(10)] != [list(d) for d in draws]  # and of the epoch


def test_random_exclude_last_removes_the_top_layers():
    m = _random(3, 12, exclude_last=3, seed=1)
    assert m.pool == tuple(range(1, 10))
    seen = {t for e in range(60) for t in m.draw(e)}
    assert seen == set(range(1, 10))  # 10, 11, 12 never drawn, the rest all are


@pytest.mark.parametrize("ls, lt", [(3, 6), (6, 12)])
@pytest.mark.parametrize("seed", [0, 42])
def test_random_covers_every_pool_layer_over_training(ls, lt, seed):
    m = _random(ls, lt, seed=seed)
    counts = Counter(t for e in range(30) for t in m.draw(e))
    assert set(counts) == set(range(1, lt + 1))
    assert sum(counts.values()) == 30 * ls


def test_random_draw_neither_reads_nor_disturbs_global_rngs():
    m = _random(6, 12, seed=5)

    def seed_all(s):
        random.seed(s)
        np.random.seed(s)
        torch.manual_seed(s)

    seed_all(1)
    under_one = [m.draw(e) for e in range(5)] + [m.draw(0, s) for s in range(3)]
    seed_all(2)
    under_two = [m.draw(e) for e in range(5)] + [m.draw(0, s) for s in range(3)]
    assert under_one == under_two

    def next_globals():
        return random.random(), np.random.rand(), torch.rand(1).item()

    seed_all(7)
    untouched = next_globals()
    seed_all(7)
    m.draw(3)
    _random(6, 12, seed=5, resample="batch").draw(3, 9)
    m.table(2)
    assert next_globals() == untouched


@pytest.mark.parametrize("resample", ["epoch", "batch"])
def test_random_fresh_mapping_redraws_what_the_original_drew(resample):
    """Resume: a LayerMap rebuilt from the same args, asked for epoch e directly (without the
    epochs before it), returns the draw the original run used for epoch e."""
    original = _random(6, 12, seed=9, resample=resample)
    history = {(e, s): original.draw(e, s) for e in range(6) for s in range(3)}
    for (e, s), drawn in reversed(list(history.items())):
        resumed = _random(6, 12, seed=9, resample=resample)
        assert resumed.draw(e, s) == drawn
        assert resumed.pairs(e, s) == original.pairs(e, s)
    # asking out of order and repeatedly leaves the original unchanged: no hidden state
    assert {(e, s): original.draw(e, s) for e in range(6) for s in range(3)} == history
    assert _random(6, 12, seed=9, resample=resample) == original  # value-equal, frozen


def test_random_with_a_subset_of_student_layers():
    m = _random(6, 12, student_layers=[2, 4, 6], seed=0)
    assert [s for s, _ in m.pairs(3)] == [2, 4, 6]
    assert len(m.draw(3)) == 3


# ----------------------------------------------------------------------------------- errors
def _error(param="distill.mapping", **kw):
    with pytest.raises(MappingError) as info:
        build_mapping(param=param, **kw)
    assert param in str(info.value)
    return str(info.value)


@pytest.mark.parametrize("strategy", ["uniform", "last", "buckets", "all", "random"])
def test_out_of_range_student_layers(strategy):
    msg = _error(strategy=strategy, student_depth=3, teacher_depth=6, student_layers=[1, 4])
    assert "[4]" in msg and "1..3" in msg
    msg = _error(strategy=strategy, student_depth=3, teacher_depth=6, student_layers=[0, 1])
    assert "[0]" in msg  # 0 (embeddings) only with include_embeddings
    _error(strategy=strategy, student_depth=3, teacher_depth=6, student_layers=[-1])


def test_repeated_student_layers():
    assert "repeat" in _error(strategy="uniform", student_depth=3, teacher_depth=6, student_layers=[2, 2])


def test_explicit_out_of_range_teacher_layers():
    msg = _error(strategy="explicit", student_depth=2, teacher_depth=6, teacher_layers=[3, 7])
    assert "[7]" in msg and "1..6" in msg
    _error(strategy="explicit", student_depth=2, teacher_depth=6, teacher_layers=[0, 3])


def test_explicit_needs_teacher_layers_of_the_right_length():
    assert "teacher_layers" in _error(strategy="explicit", student_depth=3, teacher_depth=6)
    msg = _error(strategy="explicit", student_depth=3, teacher_depth=6, teacher_layers=[2, 4])
    assert "2 layers" in msg and "3 student layers" in msg
    _error(strategy="explicit", student_depth=3, teacher_depth=6, student_layers=[1], teacher_layers=[2, 4])


def test_random_pool_smaller_than_the_student():
    msg = _error(strategy="random", student_depth=6, teacher_depth=6, exclude_last=1, param="rail_kd")
    assert "6" in msg and "5" in msg and "exclude_last 1" in msg
    _error(strategy="random", student_depth=6, teacher_depth=4)
    _error(strategy="random", student_depth=2, teacher_depth=4, exclude_last=4)
    # exactly enough is fine
    assert _random(6, 7, exclude_last=1).draw(0) == [1, 2, 3, 4, 5, 6]


def test_buckets_with_more_student_than_teacher_layers():
    msg = _error(strategy="buckets", student_depth=4, teacher_depth=3, param="alp_kd")
    assert "4" in msg and "3" in msg


def test_unknown_strategy():
    assert "'skip'" in _error(strategy="skip", student_depth=3, teacher_depth=6)


def test_mapping_error_is_a_value_error():
    assert issubclass(MappingError, ValueError)


# ------------------------------------------------------- validation gaps found in review (fixed)
@pytest.mark.parametrize("strategy", ["last", "uniform"])
def test_student_deeper_than_teacher_is_rejected(strategy):
    _error(strategy=strategy, student_depth=6, teacher_depth=3)


def test_embeddings_in_student_layers_is_not_duplicated():
    try:
        m = build_mapping("uniform", 3, 6, student_layers=[0, 1, 2], include_embeddings=True)
    except MappingError:
        return  # rejecting it is fine too
    assert [s for s, _ in m.pairs()] == [0, 1, 2]
    assert dict(m.pairs())[0] == (0,)


def test_random_honours_or_rejects_include_embeddings():
    try:
        m = _random(3, 6, include_embeddings=True)
    except MappingError:
        return
    assert m.pairs(0)[0] == (0, (0,))


# ------------------------------------------------------------------------------------ tables
def test_table_rows_for_a_fixed_mapping():
    m = build_mapping("uniform", 3, 6, include_embeddings=True)
    assert m.table() == [
        {"student_layer": "embeddings", "teacher_layers": "embeddings"},
        {"student_layer": "1", "teacher_layers": "2"},
        {"student_layer": "2", "teacher_layers": "4"},
        {"student_layer": "3", "teacher_layers": "6"},
    ]
    rows = build_mapping("buckets", 2, 4).table()
    assert rows == [{"student_layer": "1", "teacher_layers": "1, 2"},
                    {"student_layer": "2", "teacher_layers": "3, 4"}]


def test_format_table_lists_every_pair():
    text = format_table(build_mapping("uniform", 3, 6, include_embeddings=True), title="tinybert")
    lines = text.splitlines()
    assert lines[0] == "tinybert (uniform):"
    assert "student layer" in lines[1] and "teacher layer" in lines[1]
    body = [line.split() for line in lines[2:]]
    assert body == [["embeddings", "embeddings"], ["1", "2"], ["2", "4"], ["3", "6"]]


def test_random_table_shows_the_epochs_draw_and_a_note_on_the_pool():
    m = _random(3, 8, exclude_last=2, seed=4)
    for epoch in (0, 5):
        rows = m.table(epoch)
        drawn = m.draw(epoch)
        assert [r["student_layer"] for r in rows] == ["1", "2", "3", "note"]
        assert [r["teacher_layers"] for r in rows[:3]] == [f"{t} (epoch {epoch} draw)" for t in drawn]
        note = rows[-1]["teacher_layers"]
        assert "[1, 2, 3, 4, 5, 6]" in note and "epoch" in note and "seed 4" in note and "3 of" in note
        text = format_table(m, epoch=epoch)
        assert "(random)" in text.splitlines()[0]
        for s, t in zip((1, 2, 3), drawn):
            assert any(line.split()[:2] == [str(s), str(t)] for line in text.splitlines()[2:])
        assert "[1, 2, 3, 4, 5, 6]" in text
    assert "batch" in _random(3, 8, resample="batch").table(0)[-1]["teacher_layers"]
