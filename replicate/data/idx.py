"""`read_idx(path)`: the IDX file format of MNIST and Fashion-MNIST, plain or gzipped.

An IDX file is a 4-byte magic number (two zero bytes, a type code, the number of dimensions),
one big-endian uint32 per dimension, then the values in C order. Anything that does not
follow that layout raises `CorruptFileError` (a `ValueError`) naming the file, so a truncated download is reported
as such rather than as a reshape error deep inside torch.
"""

from __future__ import annotations

import gzip
import math
import zlib
from pathlib import Path

import numpy as np
import torch

from ..errors import CorruptFileError

# Type code -> big-endian numpy dtype (the IDX specification's six types).
_DTYPES: dict[int, str] = {
    0x08: "u1",
    0x09: "i1",
    0x0B: ">i2",
    0x0C: ">i4",
    0x0D: ">f4",
    0x0E: ">f8",
}


def _read_bytes(path: Path) -> bytes:
    try:
        if path.name.endswith(".gz"):
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (OSError, EOFError, zlib.error) as error:
        if isinstance(error, FileNotFoundError):
            raise
        raise CorruptFileError(f"{path}: not a readable gzip/IDX file ({error}); delete it and fetch it again.") from error


def parse_idx(raw: bytes, source: str = "<bytes>") -> torch.Tensor:
    """Decode the bytes of one IDX file; `source` names it in error messages."""
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _DTYPES:
        raise CorruptFileError(
            f"{source}: bad IDX magic number {raw[:4].hex() or '(empty file)'}; expected 0000 followed by a "
            f"type code in {{{', '.join(f'{c:02x}' for c in _DTYPES)}}} and the number of dimensions. "
            "The file is corrupt or not an IDX file; delete it and fetch it again."
        )
    dtype = np.dtype(_DTYPES[raw[2]])
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise CorruptFileError(f"{source}: truncated IDX header ({len(raw)} bytes, {ndim} dimensions announced).")
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    expected = header + math.prod(shape) * dtype.itemsize
    if len(raw) != expected:
        state = "truncated" if len(raw) < expected else "longer than its header says"
        raise CorruptFileError(
            f"{source}: IDX file {state}: shape {shape} needs {expected} bytes, found {len(raw)}. "
            "Delete it and fetch it again."
        )
    values = np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)
    # Native byte order and a writable copy: torch refuses big-endian or read-only buffers.
    return torch.from_numpy(values.astype(dtype.newbyteorder("="), copy=True))


def read_idx(path: str | Path) -> torch.Tensor:
    """The array stored in an IDX file (`.gz` is decompressed on the fly), as a torch tensor."""
    path = Path(path)
    return parse_idx(_read_bytes(path), str(path))
