"""The one user-facing exception type and its subclasses; each carries its exit code.

Exit codes (docs/design.md): 0 success, 1 a check failed, 2 bad usage or bad input,
3 the environment cannot do what was asked.
"""

from __future__ import annotations


class EdgekitError(Exception):
    """An error the user can act on: printed as one line, no traceback."""

    exit_code = 2

    def __init__(self, message: str, *, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


def one_line(exc: BaseException, limit: int = 2000) -> str:
    """An exception as one line: its first non-empty line, or its type name when it says nothing."""
    text = str(exc).strip()
    lines = [line for line in text.splitlines() if line.strip()]
    return (lines[0] if lines else type(exc).__name__)[:limit]


class BadInput(EdgekitError):
    """Unknown model, unreadable or invalid file, empty calibration set, wrong shapes (exit 2)."""

    exit_code = 2


class CheckFailed(EdgekitError):
    """A tolerance, accuracy gate or structural invariant failed (exit 1)."""

    exit_code = 1


class EnvironmentUnavailable(EdgekitError):
    """A requested execution provider, device, library or file cache is missing (exit 3)."""

    exit_code = 3


class ProviderUnavailable(EnvironmentUnavailable):
    """An ONNX Runtime execution provider was asked for and did not start (exit 3)."""


# Kinds of failed check, each still exit 1: scripts and tests catch them by type, not by message text.
class GateFailed(CheckFailed):
    """An accuracy or tolerance gate failed: against PyTorch, against the fp32 parent, --max-drop, a bundle's gates."""


class SaturationFailed(GateFailed):
    """This CPU's default int8 kernels saturate a file meant for it (verify names the cause and the fix)."""


class ShapeMismatch(CheckFailed):
    """An output's shape differs from the reference's (never broadcast)."""


class InvariantBroken(CheckFailed):
    """A structural invariant: the opset asked for, grouped convs and concats kept, a quantized file quantized."""


class BundleTampered(CheckFailed):
    """A bundle's file does not match its manifest, or the manifest is not the one pinned."""
