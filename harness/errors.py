"""Errors that end the program with a documented exit code and a one-line message."""

from __future__ import annotations

__all__ = ["UsageError", "EXIT_OK", "EXIT_GATE", "EXIT_USAGE", "EXIT_INTERRUPTED"]

EXIT_OK = 0
EXIT_GATE = 1  # a gate or threshold failed
EXIT_USAGE = 2  # bad input or unusable environment
EXIT_INTERRUPTED = 130  # Ctrl-C / SIGTERM: records kept, resume with --resume


class UsageError(Exception):
    """Bad input or an unusable environment: printed as one line, exit code 2."""
