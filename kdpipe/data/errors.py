"""The data error every reader raises: stages print it as one line naming the file, column or
key at fault, and exit 2 (``kdpipe.stage``).  Its own module so the format readers
(``data.conll``, ``data.squad``) and the task registry (``data.tasks``) can share it."""


class TaskDataError(ValueError):
    """The task's data or its ``task`` params are unusable; the message names the file, column or key."""
