"""Who holds which utterances: seeded partitions of one corpus into client shards (pure).

``scripts/partition.py`` writes the shards as TSV files for the process-per-client flow; the
Flower App computes one virtual client's shard on the fly from the same rows, so thousands of
simulated clients need no per-client files.

- ``speaker``: every speaker to exactly one client, the largest speakers first to the emptiest
  client (non-IID, like real federations).
- ``iid``: the rows shuffled and dealt out.

When clients outnumber speakers (or rows), :func:`client_shard` gives each client its own seeded
sample instead: ``samples`` rows of one speaker (``speaker``) or of the whole corpus (``iid``).
Clients then overlap, as devices of one population do.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import TypeVar

from fedspeech.base.errors import UserError

Row = TypeVar("Row", bound=dict)
PARTITION_BY = ("speaker", "iid")


def by_speaker(rows: Sequence[Row], key: str = "client_id") -> dict[str, list[Row]]:
    speakers: dict[str, list[Row]] = {}
    for row in rows:
        speakers.setdefault(row.get(key, "") or "unknown", []).append(row)
    return speakers


def split_by_speaker(
    rows: Sequence[Row], num_clients: int, seed: int, key: str = "client_id"
) -> list[list[Row]]:
    """Each speaker to one client; the largest speakers go first to the emptiest client."""
    speakers = by_speaker(rows, key)
    if len(speakers) < num_clients:
        raise UserError(f"only {len(speakers)} speakers for {num_clients} clients: "
                        "use --by iid or fewer clients")
    order = sorted(speakers)
    random.Random(seed).shuffle(order)
    order.sort(key=lambda s: -len(speakers[s]))  # stable: ties keep the seeded order
    parts: list[list[Row]] = [[] for _ in range(num_clients)]
    for speaker in order:
        min(parts, key=len).extend(speakers[speaker])
    return parts


def split_iid(rows: Sequence[Row], num_clients: int, seed: int) -> list[list[Row]]:
    """Shuffle, then deal the rows into ``num_clients`` nearly equal parts."""
    if len(rows) < num_clients:
        raise UserError(f"only {len(rows)} rows for {num_clients} clients")
    shuffled = list(rows)
    random.Random(seed).shuffle(shuffled)
    return [shuffled[i::num_clients] for i in range(num_clients)]


def client_shard(
    rows: Sequence[Row],
    partition_id: int,
    num_partitions: int,
    *,
    by: str = "speaker",
    seed: int = 1234,
    samples: int = 20,
    key: str = "client_id",
) -> list[Row]:
    """The rows of client ``partition_id`` out of ``num_partitions`` (see the module docstring)."""
    if by not in PARTITION_BY:
        raise UserError(f"partition-by '{by}': expected one of {', '.join(PARTITION_BY)}")
    if not 0 <= partition_id < num_partitions:
        raise UserError(f"partition-id {partition_id} is not within [0, {num_partitions})")
    speakers = by_speaker(rows, key) if by == "speaker" else {}
    enough = len(speakers) >= num_partitions if by == "speaker" else len(rows) >= num_partitions
    if enough:
        split = split_by_speaker(rows, num_partitions, seed, key) if by == "speaker" \
            else split_iid(rows, num_partitions, seed)
        return split[partition_id]
    rng = random.Random(f"{seed}:{partition_id}")  # each client its own, reproducible draw
    if by == "speaker":
        pool = speakers[rng.choice(sorted(speakers))]
    else:
        pool = list(rows)
    return rng.sample(pool, min(samples, len(pool)))
