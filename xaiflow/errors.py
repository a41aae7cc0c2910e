"""The root of every error xaiflow reports to its users.

Each part of the library raises its own subclass (``ConfigError``, ``IngestError``,
``AttributionError``, ...), and every one of them derives from :class:`XaiflowError`, so a
caller (the CLI, a flow, a notebook) catches one class to tell "the input or the workspace
is wrong, here is why" from a bug. The message is written for the user: it names the file,
field, group or value and, where there is one, what to do. The CLI prints it without a
traceback and exits with status 2.

:class:`XaiflowError` is a ``ValueError``: most of these errors are about values (a config
field, a model id, a mask class), and code that caught ``ValueError`` before the common root
existed keeps working.
"""

from __future__ import annotations


class XaiflowError(ValueError):
    """A user-facing error: the message says what is wrong and where (file, field, group, value)."""
