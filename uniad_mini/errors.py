"""The errors a user can fix (no part of the paper): every command prints them as one line and exits 2.

    OptionError  a bad option or argument: an unknown recipe, a window larger than the grid, --threads 0, ...
    DataError    a bad file or folder: an unreadable image, a missing mask, a foreign checkpoint, ... (`images.py`:
                 it also gathers every problem of a data set into one message)

Both are ValueErrors, so code that catches ValueError keeps working. Anything else that reaches the command
line -- a ValueError raised without one of these, a RuntimeError from torch -- is a bug and keeps its traceback.
"""
from __future__ import annotations


class UserError(ValueError):
    """An error the user can fix; its message says what to do."""


class OptionError(UserError):
    """A bad option or argument."""
