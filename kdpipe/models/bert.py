"""BERT-style encoders: BERT (and MiniLM, which is a BERT), RoBERTa, XLM-R and ELECTRA share one layout."""

from __future__ import annotations

from kdpipe.models.family import AttentionModules, EncoderFamily

BERT_ATTENTION = AttentionModules(query="attention.self.query", key="attention.self.key",
                                  value="attention.self.value", output="attention.output.dense",
                                  block="attention.output", heads_attr="num_attention_heads")

BERT = EncoderFamily(name="bert", model_types=("bert", "roberta", "xlm-roberta", "electra"),
                     layers="encoder.layer", embeddings="embeddings", depth_field="num_hidden_layers",
                     width_field="hidden_size", heads_field="num_attention_heads", attention=BERT_ATTENTION)
