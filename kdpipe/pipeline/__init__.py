"""One module per pipeline stage; the DVC stages in ``stages/`` are thin wrappers around these.

Usable without DVC, each step taking the validated ``Params`` and explicit folders:
``preflight`` → ``data.prepare_data`` → ``teacher.train_teacher`` → ``teacher_outputs.teacher_outputs``
→ ``ptp.pretrain_ptp`` → ``distill.distill`` → ``evaluate.evaluate_models`` → ``export.export_student``.
"""
