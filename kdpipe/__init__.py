"""kdpipe: knowledge distillation for BERT-style encoders.

Importing the package is cheap and torch-free (the ONNX runtime path must not pull torch);
import the submodules you need.  Layers, each importing only those before it (README
"Architecture"): ``env``, ``files``, ``codebase`` → ``config`` → ``data`` → ``models`` →
``methods`` → ``evaluation`` → ``training`` → ``export`` → ``pipeline`` → ``tracking``,
``stage``, ``cli``.
"""

__version__ = "0.1.0"
