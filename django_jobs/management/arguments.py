"""argparse ``type=`` helpers shared by the management commands.

Each one raises ``argparse.ArgumentTypeError`` for a bad value, so the command exits
with a usage error (status 2) that names the value, never with a traceback.
"""

import argparse
from collections.abc import Callable


def positive_int(text: str) -> int:
    """A whole number >= 1, or a usage error that says what was given."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def positive_int_at_most(maximum: int) -> Callable[[str], int]:
    """A ``type=`` for a whole number from 1 to ``maximum``."""

    def parse(text: str) -> int:
        value = positive_int(text)
        if value > maximum:
            raise argparse.ArgumentTypeError(f"must be at most {maximum}, got {value}")
        return value

    parse.__name__ = f"positive_int_at_most_{maximum}"
    return parse
