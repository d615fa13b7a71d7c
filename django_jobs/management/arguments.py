"""argparse ``type=`` helpers shared by the management commands."""

import argparse


def positive_int(text: str) -> int:
    """A whole number >= 1, or a usage error that says what was given."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value
