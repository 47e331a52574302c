"""Training: the one loop (``engine``), checkpoints and fingerprints, multi-phase runs, the teacher cache."""
