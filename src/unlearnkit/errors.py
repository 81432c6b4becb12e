"""Exceptions raised for user input.

Every error a user can cause is an ``UnlearnkitError`` with a one-line message
that names what is wrong and what is allowed; the CLI turns it into exit code 2.
"""

from __future__ import annotations


class UnlearnkitError(ValueError):
    """Bad input: a name, value, file or combination that cannot be used."""


class InvalidConfigError(UnlearnkitError, TypeError):
    """A config field has a value outside its declared constraints."""


class DivergenceError(UnlearnkitError, RuntimeError):
    """Training produced a NaN or inf loss; the caller's model is left untouched."""


def close_matches(name: str, choices) -> str:
    """A ' Did you mean ...?' suffix for an unknown name, or ''."""
    import difflib

    match = difflib.get_close_matches(str(name), [str(c) for c in choices], n=1)
    return f" Did you mean {match[0]!r}?" if match else ""


def unknown_name_error(kind: str, name: str, choices) -> UnlearnkitError:
    choices = sorted(choices)
    return UnlearnkitError(
        f"Unknown {kind} {name!r}; available: {', '.join(choices)}.{close_matches(name, choices)}"
    )
