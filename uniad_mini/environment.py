"""True / false switches read from the environment (no part of the paper: how the package is told to,
e.g., run Triton in its interpreter or skip autotuning)."""
from __future__ import annotations

import os

from .errors import OptionError

TRUE_WORDS, FALSE_WORDS = ("1", "true", "yes", "on"), ("", "0", "false", "no", "off")


def env_flag(name: str, default: bool = False) -> bool:
    """True / false from the environment variable `name`: 1/true/yes/on or 0/false/no/off (any case).

    Unset gives `default`; any other word is an OptionError that names the variable.
    """
    value = os.environ.get(name)
    if value is None:
        return default
    word = value.strip().lower()
    if word not in TRUE_WORDS + FALSE_WORDS:
        raise OptionError(f"{name}={value!r} is not a true/false value; use one of {', '.join(TRUE_WORDS + FALSE_WORDS[1:])}")
    return word in TRUE_WORDS
