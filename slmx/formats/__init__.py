"""Files <-> tensors. The only part of slmx that parses untrusted bytes.

- ``slmx.formats.gguf``: hardened, zero-copy (mmap) GGUF v2/v3 reader; atomic GGUF writer;
  ``describe`` (the summary behind ``slmx info``).

Submodules are imported on use (``from slmx.formats import gguf``) so importing the package
costs nothing.
"""
