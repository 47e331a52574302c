"""kdpipe: knowledge distillation for BERT-style encoders.

Importing the package is cheap and torch-free (the ONNX runtime path must not pull torch);
import the submodules you need: ``kdpipe.models``, ``kdpipe.engine``, ``kdpipe.methods``, ...
"""

__version__ = "0.1.0"
