"""Evaluation: task metrics (``metrics``), predictions over a split (``predict``), latency (``latency``), charts (``charts``) and the comparison table (``table``, torch-free)."""
