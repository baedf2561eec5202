"""The error hierarchy. Everything raises these; only the CLI maps them to exit codes."""

from __future__ import annotations


class AdvbenchError(Exception):
    """A problem the user can fix (exit code 2). The message is written for the user."""


class ConfigError(AdvbenchError):
    """The benchmark file is invalid. Carries every problem found, one per line."""

    def __init__(self, path: str, problems: list[str]):
        self.path = path
        self.problems = problems
        super().__init__("\n".join(f"{path}: {p}" for p in problems))


class PluginError(AdvbenchError):
    """A plugin is missing, clashes with another, or was written for another API version."""


class DataError(AdvbenchError):
    """Input data (images, checkpoints, weights) is missing or unreadable."""


class StoreError(AdvbenchError):
    """The results store cannot be opened or holds no such run."""
