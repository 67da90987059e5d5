"""The errors a user can fix (no part of the paper): every command prints them as one line and exits 2.

    OptionError  a bad option or argument: an unknown recipe, a window larger than the grid, --threads 0, ...
    DataError    a bad file or folder: an unreadable image, a missing mask, a foreign checkpoint, ...; it also
                 gathers every problem of a data set into one message (`DataError.of`)

Both are ValueErrors, so code that catches ValueError keeps working. Anything else that reaches the command
line -- a ValueError raised without one of these, a RuntimeError from torch -- is a bug and keeps its traceback.
"""
from __future__ import annotations


class UserError(ValueError):
    """An error the user can fix; its message says what to do."""


class OptionError(UserError):
    """A bad option or argument."""


class DataError(UserError):
    """A data file or folder is missing, misplaced or unreadable; the message names it.

    `problems` lists every problem found together (one line each); `DataError.of` builds the one message.
    """

    def __init__(self, message: str, problems: list[str] | None = None):
        super().__init__(message)
        self.problems = list(problems) if problems else [message]

    @classmethod
    def of(cls, problems: list[str]) -> "DataError":
        """One error for every problem found: the problem itself when it is alone, else all of them numbered."""
        if len(problems) == 1:
            return cls(problems[0])
        listed = "; ".join(f"({i}) {p}" for i, p in enumerate(problems, 1))
        return cls(f"{len(problems)} problems in the data, nothing was trained or scored: {listed}", problems)
