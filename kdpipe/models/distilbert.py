"""DistilBERT: its own field names (n_layers, dim, n_heads) and attention layout (q_lin, ...)."""

from __future__ import annotations

from kdpipe.models.family import AttentionModules, EncoderFamily

DISTILBERT = EncoderFamily(
    name="distilbert", model_types=("distilbert",), layers="transformer.layer", embeddings="embeddings",
    depth_field="n_layers", width_field="dim", heads_field="n_heads",
    attention=AttentionModules(query="attention.q_lin", key="attention.k_lin", value="attention.v_lin",
                               output="attention.out_lin", block="sa_layer_norm",
                               heads_attr="n_heads"))
