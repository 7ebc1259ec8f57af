"""A real ``client.py`` that trains normally and then lies in its reply, for the attack bench.

    python -m fedspeech.tools.attacks --attack scaled <every client.py flag>

The attacks (what the reply carries instead of the honest one; ``g`` is the global model the
server sent, ``u`` the honestly trained one, changes are over floating-point arrays only):

- ``honest``: the honest reply (the baseline);
- ``scaled``: ``g + 20 (g - u)``: the honest change reversed and twenty times as large;
- ``sign_flip``: ``g - (u - g)``: the honest change reversed;
- ``random``: ``g`` plus a random direction with the honest change's norm;
- ``inflated_count``: the scaled update, claiming 1000x its sample count;
- ``claimed_wer0``: the scaled update, claiming a validation WER of 0;
- ``shuffled``: the honest reply of a client whose transcripts are shuffled (data poisoning:
  the attack bench gives this client a shuffled TSV; the reply itself is unchanged).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

import numpy as np

from fedspeech.core import protocol

NDArrays = list[np.ndarray]
SCALE = 20.0


def _change(update: NDArrays, reference: NDArrays, f: Callable[[np.ndarray], np.ndarray]
            ) -> NDArrays:
    """``reference + f(update - reference)`` on float arrays; the others as the client has them."""
    out = []
    for u, g in zip(update, reference, strict=True):
        if np.issubdtype(u.dtype, np.floating):
            d = u.astype(np.float64) - g.astype(np.float64)
            out.append((g.astype(np.float64) + f(d)).astype(u.dtype))
        else:
            out.append(u)
    return out


def random_like(update: NDArrays, reference: NDArrays, seed: int) -> NDArrays:
    """The global model plus a random direction whose norm is the honest change's."""
    rng = np.random.default_rng(seed)
    deltas = [u.astype(np.float64) - g.astype(np.float64)
              for u, g in zip(update, reference, strict=True)
              if np.issubdtype(u.dtype, np.floating)]
    norm = np.sqrt(sum(float(np.sum(d * d)) for d in deltas))
    noise = [rng.standard_normal(d.shape) for d in deltas]
    noise_norm = np.sqrt(sum(float(np.sum(n * n)) for n in noise)) or 1.0
    it = iter(noise)
    return _change(update, reference, lambda d: next(it) * norm / noise_norm)


def attack(name: str, reference: NDArrays, update: NDArrays, samples: int, metrics: dict,
           seed: int = 0) -> tuple[NDArrays, int, dict]:
    """The lying reply of attack ``name`` for an honest ``(update, samples, metrics)``."""
    metrics = dict(metrics)
    if name in ("honest", "shuffled"):
        return update, samples, metrics
    if name == "sign_flip":
        return _change(update, reference, lambda d: -d), samples, metrics
    if name == "random":
        return random_like(update, reference, seed), samples, metrics
    scaled = _change(update, reference, lambda d: -SCALE * d)
    if name == "scaled":
        return scaled, samples, metrics
    if name == "inflated_count":
        return scaled, samples * 1000, metrics
    if name == "claimed_wer0":
        metrics[protocol.VALID_WER] = 0.0
        return scaled, samples, metrics
    raise ValueError(f"unknown attack {name}")


ATTACKS = ("honest", "scaled", "sign_flip", "random", "inflated_count", "claimed_wer0",
           "shuffled")


def attacking_client_class(name: str, seed: int = 0) -> type:
    """``client.SpeechBrainClient`` whose ``fit`` trains honestly, then lies as ``name`` says."""
    import client

    class AttackingClient(client.SpeechBrainClient):
        def fit(self, parameters, config):
            update, samples, metrics = super().fit(parameters, config)
            reply = attack(name, list(parameters), update, samples, metrics,
                           seed=seed + int(config[protocol.ROUND]))
            client.logger.warning("client %s: attack %s", self.trainer.cid, name)
            return reply

    return AttackingClient


def main(argv: list[str] | None = None) -> None:
    import client

    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--attack", choices=ATTACKS, required=True)
    known, rest = pre.parse_known_args(sys.argv[1:] if argv is None else argv)
    client.main(rest, make_client=attacking_client_class(known.attack))


if __name__ == "__main__":
    main()
