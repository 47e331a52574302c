"""Evaluation: task metrics (``metrics``), predictions over a split (``predict``), latency (``latency``) and charts (``charts``)."""
