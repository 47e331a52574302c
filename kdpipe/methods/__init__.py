"""Distillation methods: one module per method (formula, pure mask-aware losses with shapes,
params, class), shared pieces (``base``, ``mapping``, ``projections``, ``relations``) and the
registry of names usable in params.yaml (``registry``)."""
