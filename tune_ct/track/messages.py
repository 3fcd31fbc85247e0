"""One-line error messages: what a warning, a tag or a stop message quotes of an exception."""

from __future__ import annotations


def first_line(exc: BaseException) -> str:
    """An error's first line (or its type), at most 300 characters."""
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:300]
