"""Exceptions raised by slmx."""


class SlmxError(Exception):
    """Base class of slmx's own errors."""


class FormatError(SlmxError, ValueError):
    """A model, tokenizer or weights file is malformed or unsupported.

    The message names the field and, for binary files, the byte offset where it went wrong.
    """


class ModelNotFoundError(SlmxError, FileNotFoundError):
    """A model name or path could not be resolved."""
