"""Export: ONNX conversion, int8 quantisation and parity (``convert``), and the torch-free runtime
(``runtime``) that deployments use.  ``runtime`` imports nothing else of kdpipe, and this
``__init__`` imports nothing, so ``kdpipe.export.runtime`` loads without torch."""
