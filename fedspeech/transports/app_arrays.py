"""Model weights <-> Flower's ``ArrayRecord``, order and dtypes kept (0-d arrays included).

The keys are zero-padded indices, so the order survives any re-sorting of the record.
"""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord

from fedspeech.core.round import NDArrays


def to_record(arrays: NDArrays) -> ArrayRecord:
    return ArrayRecord({f"{i:05d}": Array(np.asarray(a)) for i, a in enumerate(arrays)})


def from_record(record: ArrayRecord) -> NDArrays:
    return [record[key].numpy() for key in sorted(record.keys())]


def record_bytes(record: ArrayRecord) -> int:
    """The serialised size of the arrays (what travels, less the message framing)."""
    return sum(len(array.data) for array in record.values())
