"""Data: the task registry and loaders (``tasks``), prepared splits (``splits``), batches (``batches``)."""
