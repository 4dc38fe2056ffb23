"""Errors a user can act on.

Every problem with input files or settings is raised as :class:`InputError`, whose
message is one line naming the file and line or field. The command-line shell turns it
into that line on standard error and a non-zero exit status; nothing else is caught
there, so programming errors still show their traceback.
"""

from __future__ import annotations


class InputError(ValueError):
    """Bad input: a file, a field in it, or a setting.

    Args:
        message: what is wrong, in one line.
        source: file path or setting name the problem is in.
        line: 1-based line number in ``source`` where known.
    """

    def __init__(self, message: str, source: str | None = None, line: int | None = None):
        self.message = message.replace("\n", " ").strip()
        self.source = source
        self.line = line
        super().__init__(str(self))

    def __str__(self) -> str:
        where = ""
        if self.source is not None:
            where = f"{self.source}"
            if self.line is not None:
                where += f":{self.line}"
            where += ": "
        return f"{where}{self.message}"
