"""What a client hands to secure aggregation, and how the server reads the sum back.

SecAgg+ (Flower's ``secaggplus_mod``) clips every coordinate to ``[-R, R]`` and quantises it
before masking, so a client sends its *change* from the global model, whose coordinates are
small, rather than its weights. Integer arrays (counters such as a normalisation's ``count``)
move by whole batches, far beyond R: they travel divided by :data:`INT_SCALE` and come back
rounded.
"""

from __future__ import annotations

import numpy as np

from fedspeech.math.aggregate import NDArrays

INT_SCALE = 1000.0  # an integer counter may move by up to INT_SCALE * R in one round


def encode_change(trained: NDArrays, reference: NDArrays) -> NDArrays:
    """A client's change ``trained - reference`` as floats, integer arrays scaled down."""
    out = []
    for t, r in zip(trained, reference, strict=True):
        change = t.astype(np.float64) - r.astype(np.float64)
        out.append(change if np.issubdtype(r.dtype, np.floating) else change / INT_SCALE)
    return out


def apply_change(reference: NDArrays, change: NDArrays) -> NDArrays:
    """The model ``reference + change`` in the reference's dtypes (the inverse of
    :func:`encode_change`, applied to the clients' weighted mean change)."""
    out = []
    for r, c in zip(reference, change, strict=True):
        c = np.asarray(c, dtype=np.float64)
        if np.issubdtype(r.dtype, np.floating):
            out.append((r.astype(np.float64) + c).astype(r.dtype))
        else:
            out.append(np.rint(r.astype(np.float64) + c * INT_SCALE).astype(r.dtype))
    return out


def beyond_range(change: NDArrays, clipping_range: float) -> int:
    """How many coordinates of an encoded change SecAgg+ will clip to ``[-R, R]``."""
    return int(sum(np.count_nonzero(np.abs(c) > clipping_range) for c in change))
