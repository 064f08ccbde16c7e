"""Tensor element types as GGUF/ggml number them: block size and bytes per block.

A row of ``n`` elements of type ``t`` occupies ``n // block_size(t) * type_size(t)`` bytes and
``n`` must be a multiple of ``block_size(t)``. The layer below everything else: formats,
kernels' Python wrappers and the model all name types through this table.
"""
from dataclasses import dataclass


@dataclass(frozen=True)
class QType:
    id: int          # ggml_type value stored in GGUF files
    name: str        # "Q4_K", ...
    block_size: int  # elements per block
    type_size: int   # bytes per block


_TYPES = [
    QType(0, "F32", 1, 4),
    QType(1, "F16", 1, 2),
    QType(2, "Q4_0", 32, 18),
    QType(3, "Q4_1", 32, 20),
    QType(6, "Q5_0", 32, 22),
    QType(7, "Q5_1", 32, 24),
    QType(8, "Q8_0", 32, 34),
    QType(9, "Q8_1", 32, 36),
    QType(10, "Q2_K", 256, 84),
    QType(11, "Q3_K", 256, 110),
    QType(12, "Q4_K", 256, 144),
    QType(13, "Q5_K", 256, 176),
    QType(14, "Q6_K", 256, 210),
    QType(15, "Q8_K", 256, 292),
    QType(24, "I8", 1, 1),
    QType(25, "I16", 1, 2),
    QType(26, "I32", 1, 4),
    QType(27, "I64", 1, 8),
    QType(28, "F64", 1, 8),
    QType(30, "BF16", 1, 2),
]

BY_ID = {t.id: t for t in _TYPES}
BY_NAME = {t.name: t for t in _TYPES}

F32, F16, Q4_0, Q5_0, Q8_0, Q4_K, Q5_K, Q6_K, BF16 = (BY_NAME[n].id for n in
                                                     ("F32", "F16", "Q4_0", "Q5_0", "Q8_0", "Q4_K", "Q5_K", "Q6_K", "BF16"))
Q4_1, Q5_1 = BY_NAME["Q4_1"].id, BY_NAME["Q5_1"].id

# Types slmx's kernels compute with (dequantize, dot products).
SUPPORTED = ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q5_0", "Q4_1", "Q5_1", "Q4_K", "Q5_K", "Q6_K")


def qtype(t):
    """The QType for an id, a name (case-insensitive) or a QType."""
    if isinstance(t, QType):
        return t
    if isinstance(t, str):
        try:
            return BY_NAME[t.upper()]
        except KeyError:
            raise ValueError(f"unknown tensor type {t!r}; known: {', '.join(BY_NAME)}") from None
    try:
        return BY_ID[int(t)]
    except (KeyError, ValueError, TypeError):
        raise ValueError(f"unknown tensor type id {t!r}") from None


def row_bytes(t, n):
    """Bytes of one row of n elements of type t (n must be a multiple of the block size)."""
    q = qtype(t)
    if n % q.block_size:
        raise ValueError(f"row length {n} is not a multiple of {q.name}'s block size {q.block_size}")
    return n // q.block_size * q.type_size
