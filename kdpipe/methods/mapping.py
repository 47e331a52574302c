"""Layer mappings: which teacher layer(s) each supervised student layer learns from.

One interface for every strategy.  Layer numbers are those of ``hidden_states``: 0 is the
embedding output, 1..L the transformer layers.  ``pairs(epoch, step)`` returns, for the
current point in training, ``[(student_layer, (teacher_layer, ...)), ...]``: one teacher layer
for one-to-one strategies, a candidate set for attention over layers (ALP-KD) and buckets.

The random strategy (RAIL-KD) is a pure function of (seed, epoch) or (seed, epoch, step), so a
resumed run re-draws exactly the layers the interrupted one would have used.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence

import numpy as np

Strategy = Literal["uniform", "last", "explicit", "random", "buckets", "all"]


class MappingError(ValueError):
    """A mapping that cannot work for these depths; the message names the param at fault."""


@dataclass(frozen=True)
class LayerMap:
    """A resolved mapping.

    ``student`` lists the supervised student layers (in order).  For the fixed strategies
    ``targets[i]`` is the teacher layer tuple of ``student[i]``; ``random`` draws them in ``pairs``.
    """

    strategy: Strategy
    student: tuple[int, ...]
    targets: tuple[tuple[int, ...], ...] = ()
    pool: tuple[int, ...] = ()          # random: teacher layers to draw from
    resample: Literal["epoch", "batch"] = "epoch"
    seed: int = 0

    def pairs(self, epoch: int = 0, step: int = 0) -> list[tuple[int, tuple[int, ...]]]:
        if self.strategy != "random":
            return list(zip(self.student, self.targets))
        drawn = self.draw(epoch, step)
        return [(s, (t,)) for s, t in zip(self.student, drawn)]

    def draw(self, epoch: int, step: int = 0) -> list[int]:
        """RAIL-KD: |student| teacher layers from ``pool`` without replacement, sorted ascending.

        Seeded from (seed, epoch) -- or (seed, epoch, step) when re-drawn per batch -- so the
        draw does not depend on, or disturb, the global RNG.
        """
        key = [self.seed, epoch] + ([step] if self.resample == "batch" else [])
        rng = np.random.default_rng(key)
        return sorted(int(t) for t in rng.choice(self.pool, size=len(self.student), replace=False))

    @property
    def teacher_layers(self) -> frozenset[int]:
        """Every teacher layer this mapping may ever read (what the teacher must expose)."""
        if self.strategy == "random":
            return frozenset(self.pool)
        return frozenset(t for ts in self.targets for t in ts)

    @property
    def student_layers(self) -> frozenset[int]:
        return frozenset(self.student)

    def table(self, epoch: int = 0, step: int = 0) -> list[dict]:
        """Readable rows (student layer -> teacher layers), for the stage log and MLflow."""
        rows = []
        for s, ts in self.pairs(epoch, step):
            rows.append({"student_layer": _name(s), "teacher_layers": ", ".join(_name(t) for t in ts)})
        if self.strategy == "random":
            pool = ", ".join(str(t) for t in self.pool)
            note = f"random sorted {len(self.student)} of [{pool}], re-drawn every {self.resample} (seed {self.seed})"
            rows = [{**r, "teacher_layers": f"{r['teacher_layers']} (epoch {epoch} draw)"} for r in rows]
            rows.append({"student_layer": "note", "teacher_layers": note})
        return rows


def _name(layer: int) -> str:
    return "embeddings" if layer == 0 else str(layer)


def format_rows(rows: list[dict], title: str) -> str:
    """A plain-text table of dict rows under ``title`` (the stage log's mapping table)."""
    keys = list(rows[0])
    widths = {k: max(len(k), *(len(str(r.get(k, ""))) for r in rows)) for k in keys}
    lines = [title, "  " + "  ".join(k.replace("_", " ").ljust(widths[k]) for k in keys)]
    lines += ["  " + "  ".join(str(r.get(k, "")).ljust(widths[k]) for k in keys) for r in rows]
    return "\n".join(lines)


def format_table(mapping: LayerMap, title: str = "layer mapping", epoch: int = 0) -> str:
    return format_rows(mapping.table(epoch), f"{title} ({mapping.strategy}):")


# --------------------------------------------------------------------------------- constructors
def uniform_targets(student_depth: int, teacher_depth: int) -> list[int]:
    """Student layer i (1..L_S) <- teacher layer round(i * L_T / L_S): TinyBERT's and PKD-skip's
    rule; with L_T divisible by L_S it is exactly i * L_T / L_S, and the last layers always meet."""
    return [round(i * teacher_depth / student_depth) for i in range(1, student_depth + 1)]


def buckets(student_depth: int, teacher_depth: int, overlap: bool) -> list[tuple[int, ...]]:
    """Contiguous teacher-layer buckets, one per student layer (ALP-NO / CKD-NO).

    Non-overlapping buckets split 1..L_T as evenly as possible (12 -> 4: {1-3}, {4-6}, {7-9},
    {10-12}).  ``overlap`` (ALP-PO) widens each by one layer on each side, within 1..L_T: the
    spec's proposal, as the paper's overlap size is not known.
    """
    parts = np.array_split(np.arange(1, teacher_depth + 1), student_depth)
    out = []
    for part in parts:
        lo, hi = int(part[0]), int(part[-1])
        if overlap:
            lo, hi = max(1, lo - 1), min(teacher_depth, hi + 1)
        out.append(tuple(range(lo, hi + 1)))
    return out


def build_mapping(strategy: Strategy, student_depth: int, teacher_depth: int, *,
                  student_layers: Sequence[int] | None = None, teacher_layers: Sequence[int] | None = None,
                  include_embeddings: bool = False, resample: Literal["epoch", "batch"] = "epoch",
                  exclude_last: int = 0, overlap: bool = False, seed: int = 0,
                  param: str = "mapping") -> LayerMap:
    """Resolve and validate a mapping; ``param`` names the params.yaml key in error messages.

    - ``uniform``: student i <- teacher round(i L_T / L_S) (skip).
    - ``last``: the student's layers <- the teacher's last ones (student i <- L_T - L_S + i).
    - ``explicit``: ``teacher_layers[j]`` for ``student_layers[j]``.
    - ``random``: RAIL-KD, drawn from teacher 1..L_T minus the last ``exclude_last``.
    - ``buckets`` (``overlap`` for partially overlapping) / ``all``: a teacher-layer set per
      student layer (ALP-NO / ALP-PO / ALP-KD).
    ``student_layers`` (default 1..L_S) picks which student layers are supervised;
    ``include_embeddings`` adds the pair embeddings <- embeddings in front (TinyBERT).
    """
    student = list(student_layers) if student_layers is not None else list(range(1, student_depth + 1))
    # Layer 0 (embeddings) is only ever paired with the teacher's embeddings, by include_embeddings.
    _check_range(student, student_depth, f"{param}: student layer", allow_zero=False)
    if len(set(student)) != len(student):
        raise MappingError(f"{param}: student layers {student} repeat a layer")
    if student_depth > teacher_depth and strategy in ("uniform", "last", "buckets"):
        raise MappingError(f"{param}: a {student_depth}-layer student cannot be mapped {strategy!r} onto a "
                           f"{teacher_depth}-layer teacher (it would reuse or invent teacher layers); "
                           f"list the teacher layers explicitly")
    targets: list[tuple[int, ...]]
    if strategy == "uniform":
        full = uniform_targets(student_depth, teacher_depth)
        targets = [(full[s - 1],) for s in student]
    elif strategy == "last":
        targets = [(teacher_depth - student_depth + s,) for s in student]
    elif strategy == "explicit":
        if teacher_layers is None:
            raise MappingError(f"{param}: the explicit strategy needs teacher_layers")
        if len(teacher_layers) != len(student):
            raise MappingError(f"{param}: teacher_layers lists {len(teacher_layers)} layers for "
                               f"{len(student)} student layers {student}")
        _check_range(list(teacher_layers), teacher_depth, f"{param}: teacher layer", allow_zero=False)
        targets = [(t,) for t in teacher_layers]
    elif strategy == "random":
        if include_embeddings:
            raise MappingError(f"{param}: the random strategy draws transformer layers only (no embeddings)")
        pool = tuple(range(1, teacher_depth + 1 - exclude_last))
        if len(pool) < len(student):
            raise MappingError(f"{param}: cannot draw {len(student)} distinct teacher layers from {len(pool)} "
                               f"(teacher depth {teacher_depth}, exclude_last {exclude_last})")
        return LayerMap("random", tuple(student), pool=pool, resample=resample, seed=seed)
    elif strategy == "buckets":
        cut = buckets(student_depth, teacher_depth, overlap)
        targets = [cut[s - 1] for s in student]
    elif strategy == "all":
        targets = [tuple(range(1, teacher_depth + 1))] * len(student)
    else:
        raise MappingError(f"{param}: unknown strategy {strategy!r}")
    if include_embeddings:
        student, targets = [0, *student], [(0,), *targets]
    return LayerMap(strategy, tuple(student), tuple(targets))


def _check_range(layers: list[int], depth: int, what: str, allow_zero: bool) -> None:
    lo = 0 if allow_zero else 1
    bad = [x for x in layers if not lo <= x <= depth]
    if bad:
        raise MappingError(f"{what} {bad} out of range: layers are numbered {lo}..{depth} "
                           f"(0 = embeddings, as in hidden_states)")
