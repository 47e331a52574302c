"""Relation losses shared by MLKD-BERT and CR-ILD (docs/methods.md §1.4, §5.3-5.4, §6.5, §8.4).

A relation is a row-softmax over similarities: token x token within an example (embedding
relation, MHA-split relation, MiniLMv2's Q/K/V self-relations, attention maps) or example x
example within a batch (sample relation).  The teacher's rows are the target everywhere:
KL(R_T || R_S), never the other direction.  Relations never need a projection: an n x n (or
b x b) matrix has the same shape whatever the widths, which is why a student may split its
vectors into a different number of heads than the teacher.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from kdpipe.methods.base import row_kl, upcast

__all__ = ["masked_row_kl", "relation_logits", "token_relation_kl", "sample_relation_kl", "merge_heads",
           "supervised_contrastive"]


def masked_row_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                  attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """KL(softmax(teacher row) || softmax(student row)) over real keys, averaged over each
    example's real query rows and its relation heads, then over the batch.

    Args: student_logits, teacher_logits [B, H, n, n] pre-softmax relation scores (row = query);
    attention_mask [B, n], 1 = real token (None: every position is real).  Padding keys get no
    probability on either side and padding query rows are not counted, so appending padding
    leaves the loss unchanged.  Returns a scalar.
    """
    s, t = upcast(student_logits), upcast(teacher_logits)
    b, h, n, _ = s.shape
    if attention_mask is None:
        attention_mask = s.new_ones(b, n)
    real = attention_mask.to(s.dtype)
    kl = row_kl(s, t, real[:, None, None, :].bool())                     # [B, H, n]
    per_example = (kl * real[:, None, :]).sum((1, 2)) / (real.sum(1) * h).clamp_min(1)
    return per_example.mean()


def relation_logits(x: torch.Tensor, splits: int) -> torch.Tensor:
    """Scaled self-similarities per split: [B, n, d] -> [B, splits, n, n].

    The width d is cut into ``splits`` contiguous chunks of d / splits (heads, MHA-splits or
    MiniLMv2 relation heads); each gives X_a X_a^T / sqrt(d / splits).
    """
    b, n, d = x.shape
    if d % splits:
        raise ValueError(f"cannot split width {d} into {splits} equal parts")
    # fp32 even under bf16 autocast: the softmax targets are sharp, bf16 scores would blur them
    with torch.autocast(device_type=x.device.type, enabled=False):
        parts = upcast(x).reshape(b, n, splits, d // splits).transpose(1, 2)  # [B, splits, n, d/splits]
        return torch.matmul(parts, parts.transpose(-1, -2)) / math.sqrt(d // splits)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """Per-head vectors back to one width: [B, A, n, d_k] -> [B, n, A * d_k]."""
    b, a, n, dk = x.shape
    return x.transpose(1, 2).reshape(b, n, a * dk)


def token_relation_kl(student_x: torch.Tensor, teacher_x: torch.Tensor, attention_mask: torch.Tensor | None,
                      splits: int = 1) -> torch.Tensor:
    """Token-token relation distillation (MLKD's L_EMB with splits = 1, its L_MHA with splits =
    A_S, MiniLMv2's Q/K/V relations with splits = relation heads).

    Args: student_x [B, n, d_S]; teacher_x [B, n, d_T] (its own width: no projection);
    attention_mask [B, n].  Both widths must divide by ``splits``.  Returns a scalar.
    """
    return masked_row_kl(relation_logits(student_x, splits), relation_logits(teacher_x, splits).detach(),
                         attention_mask)


def sample_relation_kl(student_vectors: torch.Tensor, teacher_vectors: torch.Tensor) -> torch.Tensor:
    """Example-example relation over a batch (MLKD's L_SS): (1/b) sum_i KL(R_T,i || R_S,i) with
    R = softmax(h h^T / sqrt(d)) row-wise.

    Args: student_vectors [b, d_S], teacher_vectors [b, d_T].  Returns a scalar.
    """
    return masked_row_kl(relation_logits(student_vectors[None], 1),
                         relation_logits(teacher_vectors[None], 1).detach())


def supervised_contrastive(student_features: torch.Tensor, teacher_features: torch.Tensor,
                           labels: torch.Tensor, temperature: float = 0.07,
                           anchors: str = "both") -> torch.Tensor:
    """Supervised InfoNCE over student and teacher vectors together (MLKD's L_SC).

    Args: student_features [b, d] (already projected into the teacher's space), teacher_features
    [b, d] (detached here: the teacher is the fixed reference), labels [b] class ids.  Over the
    2b L2-normalised vectors with cosine similarity s, for each anchor i with positives P(i)
    (other vectors of the same class, including its counterpart from the other model):

        l_i = (1/|P(i)|) sum_{p in P(i)} -log( exp(s_ip / tau) / sum_{k != i} exp(s_ik / tau) )

    averaged over the anchors (all 2b for ``both``, the b student vectors for ``student``).
    Anchors without a positive are skipped; with none left the loss is 0.  Returns a scalar.
    """
    y = torch.cat([labels, labels])
    n = y.shape[0]
    self_pair = torch.eye(n, dtype=torch.bool, device=y.device)
    with torch.autocast(device_type=y.device.type, enabled=False):  # fp32 similarities, also under bf16
        z = F.normalize(torch.cat([upcast(student_features), upcast(teacher_features).detach()]).float(), dim=-1)
        sim = (z @ z.T / temperature).masked_fill(self_pair, torch.finfo(z.dtype).min)
    log_prob = sim - torch.logsumexp(sim, dim=1, keepdim=True)             # row i: log p(k | i), k != i
    positives = (y[:, None] == y[None, :]) & ~self_pair
    count = positives.sum(1)
    per_anchor = -(log_prob.masked_fill(~positives, 0.0)).sum(1) / count.clamp_min(1)
    keep = count > 0
    if anchors == "student":
        keep = keep & (torch.arange(n, device=z.device) < n // 2)
    if not keep.any():
        return per_anchor.sum() * 0.0  # keeps the graph: every rank of a DDP run takes a step
    return per_anchor[keep].mean()
