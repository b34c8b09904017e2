"""One exception hierarchy for zarrstain.

Every error zarrstain raises on purpose derives from :class:`ZarrstainError` and from the
built-in exception a caller would expect (``ValueError`` for bad values, ``FileNotFoundError``
for missing stores, ...), so ``except ValueError`` keeps working. Messages are one line: they
name the store or value, say what was expected, and say how to fix it. The CLI prints exactly
that line and exits non-zero.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

__all__ = [
    "ChannelError",
    "ChannelExistsError",
    "DataError",
    "MetadataError",
    "ModelError",
    "NotOmeZarrError",
    "ParameterError",
    "ReadOnlyStoreError",
    "SceneNotFoundError",
    "ShapeMismatchError",
    "StoreNotFoundError",
    "UnsupportedError",
    "ZarrstainError",
    "cli_messages",
    "option",
]


class ZarrstainError(Exception):
    """Base class of every error zarrstain raises on purpose."""


class DataError(ZarrstainError, ValueError):
    """Pixel values zarrstain cannot use (NaN or inf where a model needs numbers)."""


class ParameterError(ZarrstainError, ValueError):
    """An argument with a value zarrstain cannot use (halo, time range, device, ...)."""


class StoreNotFoundError(ZarrstainError, FileNotFoundError):
    """The path or URL does not point to anything."""


class NotOmeZarrError(ZarrstainError, ValueError):
    """The path exists but holds no zarr group, or a zarr group without OME-Zarr metadata."""


class MetadataError(ZarrstainError, ValueError):
    """OME-Zarr metadata that breaks the specification.

    Parameters
    ----------
    store : str
        The store (and group inside it) the metadata belongs to.
    field : str
        The offending field, as a path into the metadata (``"multiscales[0].axes"``).
    problem : str
        What is wrong, with the offending value.
    expected : str, optional
        What the specification expects instead.
    """

    def __init__(self, store: str, field: str, problem: str, expected: str | None = None):
        self.store = store
        self.field = field
        self.problem = problem
        self.expected = expected
        msg = f"invalid OME-Zarr metadata in {store}, field {field!r}: {problem}"
        if expected:
            msg += f"; expected {expected}"
        super().__init__(msg)


class UnsupportedError(ZarrstainError, ValueError):
    """Valid data that zarrstain cannot handle (an NGFF version, an axis type, ...)."""


class SceneNotFoundError(ZarrstainError, LookupError):
    """A scene id that the store does not contain (or none given where several exist)."""

    def __str__(self) -> str:  # LookupError would otherwise repr() the message
        return str(self.args[0]) if self.args else ""


class ChannelError(ZarrstainError, ValueError):
    """A channel label that is missing, ambiguous or otherwise unusable."""


class ChannelExistsError(ChannelError):
    """A channel with the label to be written already exists and ``overwrite`` was not given."""


class ShapeMismatchError(ZarrstainError, ValueError):
    """Data whose shape or dims do not fit the image it should be written to."""


class ReadOnlyStoreError(ZarrstainError, PermissionError):
    """A store that cannot be written to was asked to be modified in place."""


class TrainingError(ZarrstainError, RuntimeError):
    """Training cannot go on (a loss that is no longer finite); the last checkpoint is intact."""


class ModelError(ZarrstainError, ValueError):
    """A model file or package that cannot be loaded (unreadable, foreign or inconsistent)."""


# Advice in messages names what the caller can change: a keyword argument from Python, a flag
# from the command line. The CLI sets this for the duration of a command. A process-wide flag,
# not a context variable: errors raised in dask's worker threads must see it too.
_CLI = [False]


def option(python: str, cli: str) -> str:
    """How to spell an option in advice: ``python`` from the API, ``cli`` under the CLI.

    Examples
    --------
    >>> f"pass {option('overwrite=True', '--overwrite')} to replace it"
    'pass overwrite=True to replace it'
    """
    return cli if _CLI[0] else python


@contextlib.contextmanager
def cli_messages() -> Iterator[None]:
    """Within this block, :func:`option` spells options as command-line flags."""
    before, _CLI[0] = _CLI[0], True
    try:
        yield
    finally:
        _CLI[0] = before
