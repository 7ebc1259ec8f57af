"""How a SpeechBrain model becomes a list of arrays, and back.

The federated weights are the modules' ``state_dict`` in order, followed by the running statistics
that some modules keep outside ``state_dict`` (SpeechBrain's ``InputNormalization`` with
``norm_type: global`` stores ``glob_mean``, ``glob_std`` and ``count`` as plain attributes). Without
them, clients would never share their feature statistics and a fresh server model could not run in
eval mode. Every saved model in this project is :func:`model_state_dict`, so it carries them too.

Only torch and numpy are used here: modules with such statistics are recognised by their attributes.
"""

from __future__ import annotations

import pickle
import re
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from fedspeech.base.errors import UserError
from fedspeech.base.files import atomic_write


class WeightsError(UserError):
    """A checkpoint or weight list that does not fit the model (or is no checkpoint at all)."""


# Attributes holding running statistics outside state_dict, in the order they are exported.
_STAT_ATTRS = ("glob_mean", "glob_std", "count")


def _stat_modules(modules: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    """Submodules that keep global normalisation statistics outside ``state_dict``."""
    return [
        (name, m)
        for name, m in modules.named_modules()
        if all(hasattr(m, a) for a in _STAT_ATTRS)
        and getattr(m, "norm_type", "global") == "global"
    ]


def _stat_tensor(module: torch.nn.Module, attr: str) -> torch.Tensor:
    value = getattr(module, attr)
    if attr == "count":
        return torch.tensor(int(value), dtype=torch.int64)
    return value.detach()


def model_state_dict(modules: torch.nn.Module) -> OrderedDict[str, torch.Tensor]:
    """``state_dict`` plus out-of-band normalisation statistics, on CPU, in a fixed order."""
    state: OrderedDict[str, torch.Tensor] = OrderedDict(
        (k, v.detach().cpu()) for k, v in modules.state_dict().items()
    )
    for name, module in _stat_modules(modules):
        prefix = f"{name}." if name else ""
        for attr in _STAT_ATTRS:
            state[f"{prefix}{attr}"] = _stat_tensor(module, attr).cpu()
    return state


def weight_keys(modules: torch.nn.Module) -> list[str]:
    """Names of the arrays returned by :func:`get_weights`, in the same order."""
    return list(model_state_dict(modules).keys())


def get_weights(modules: torch.nn.Module) -> list[np.ndarray]:
    """All model arrays (``state_dict`` order, then normalisation statistics), dtypes kept."""
    return [v.numpy().copy() for v in model_state_dict(modules).values()]


def _dtype_name(dtype: object) -> str:
    """'float32', 'int64', ... for numpy and torch dtypes alike."""
    return str(dtype).replace("torch.", "")


def _check(key: str, expected: torch.Tensor, shape: tuple, dtype: object) -> None:
    exp_dtype = _dtype_name(expected.dtype)
    got_dtype = _dtype_name(dtype)
    if tuple(expected.shape) != tuple(shape):
        raise WeightsError(
            f"weight '{key}': expected shape {tuple(expected.shape)}, got {tuple(shape)}"
        )
    if exp_dtype != got_dtype:
        raise WeightsError(f"weight '{key}': expected dtype {exp_dtype}, got {got_dtype}")


def load_model_state_dict(
    modules: torch.nn.Module, state: Mapping[str, torch.Tensor], device: str | None = None
) -> None:
    """Load a :func:`model_state_dict` exactly (same keys, shapes, dtypes), else WeightsError."""
    reference = model_state_dict(modules)
    missing = [k for k in reference if k not in state]
    if missing:
        raise WeightsError(f"weight '{missing[0]}' is missing ({len(missing)} keys missing)")
    unexpected = [k for k in state if k not in reference]
    if unexpected:
        raise WeightsError(f"unexpected weight '{unexpected[0]}' ({len(unexpected)} unexpected)")
    for key, ref in reference.items():
        value = state[key]
        if not isinstance(value, torch.Tensor):
            raise WeightsError(f"weight '{key}': expected a tensor, got {type(value).__name__}")
        _check(key, ref, tuple(value.shape), value.dtype)
    _assign(modules, state, device)


def _assign(
    modules: torch.nn.Module, state: Mapping[str, torch.Tensor], device: str | None
) -> None:
    if device is None:
        first = next(iter(modules.parameters()), None)
        device = str(first.device) if first is not None else "cpu"
    own_keys = modules.state_dict().keys()
    modules.load_state_dict(OrderedDict((k, state[k]) for k in own_keys), strict=True)
    for name, module in _stat_modules(modules):
        prefix = f"{name}." if name else ""
        module.glob_mean = state[f"{prefix}glob_mean"].clone().to(device)
        module.glob_std = state[f"{prefix}glob_std"].clone().to(device)
        module.count = int(state[f"{prefix}count"])


def set_weights(
    weights: Sequence[np.ndarray], modules: torch.nn.Module, device: str | None = None
) -> None:
    """Load arrays from :func:`get_weights` into ``modules``; wrong count/shape/dtype: WeightsError.

    The check runs over every array before anything is assigned, so a bad update never leaves the
    model half-loaded.
    """
    reference = model_state_dict(modules)
    if len(weights) != len(reference):
        raise WeightsError(f"expected {len(reference)} weight arrays, got {len(weights)}")
    state: OrderedDict[str, torch.Tensor] = OrderedDict()
    for (key, ref), array in zip(reference.items(), weights, strict=True):
        array = np.asarray(array)
        _check(key, ref, array.shape, array.dtype)
        state[key] = torch.from_numpy(np.array(array, order="C", copy=True))
    _assign(modules, state, device)


def init_norm_stats(modules: torch.nn.Module, num_features: int) -> None:
    """Give empty global statistics a fixed shape (mean 0, std 1, count 0).

    A fresh ``InputNormalization`` holds empty tensors until its first training batch, so its
    exported shape would differ between a trained client and a fresh server. With count 0 the first
    training batch still re-initialises the statistics from data.
    """
    for _, module in _stat_modules(modules):
        if module.glob_mean.numel() == 0:
            module.glob_mean = torch.zeros(num_features)
            module.glob_std = torch.ones(num_features)
            module.count = 0


def move_modules(modules: torch.nn.Module, device: str | torch.device) -> None:
    """``modules.to(device)``, global normalisation statistics included.

    ``Module.to`` moves parameters and buffers only; statistics kept as plain attributes would stay
    behind and the first forward pass on the other device would fail.
    """
    modules.to(device)
    for _, module in _stat_modules(modules):
        module.glob_mean = module.glob_mean.to(device)
        module.glob_std = module.glob_std.to(device)


def save_checkpoint(state: Mapping[str, torch.Tensor], path: str | Path) -> None:
    """Write a plain tensor dict atomically: temp file in the same folder, fsync, then rename.

    A crash (or a full disk) at any moment leaves the previous file at ``path`` intact.
    """
    try:
        with atomic_write(path) as f:
            torch.save(OrderedDict(state), f)
    except OSError as err:
        raise WeightsError(f"cannot write {path} ({err.strerror or err})") from err


def load_checkpoint(path: str | Path) -> OrderedDict[str, torch.Tensor]:
    """Read a checkpoint with ``weights_only=True`` (no pickled code runs); errors are one line."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: checkpoint not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:  # torch's weights_only unpickler said no
        found = re.search(r"WeightsUnpickler error:\s*(.+?)(?: was not an allowed|\n\n|$)",
                          str(err), re.S)
        why = " ".join(found.group(1).split())[:120] if found else "not plain tensors"
        raise WeightsError(
            f"{path}: refused: holds pickled code or objects other than tensors ({why}); "
            "nothing in it was run"
        ) from err
    except Exception as err:
        text = re.sub(r"\x1b\[[0-9;]*m", "", str(err)).strip()
        first = (text.splitlines() or [""])[0].split(". ")[0][:160]
        detail = f"{type(err).__name__}: {first}" if first else type(err).__name__
        what = ("truncated or corrupt" if "PytorchStreamReader" in text or isinstance(err, EOFError)
                else "not a torch checkpoint")
        raise WeightsError(f"{path}: cannot load checkpoint: {what} ({detail})") from err
    if not isinstance(state, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise WeightsError(f"{path}: not a model checkpoint (expected a dict of tensors)")
    return OrderedDict(state)


def load_model_file(modules: torch.nn.Module, path: str | Path, device: str | None = None) -> None:
    """Load a checkpoint written by :func:`save_checkpoint` into ``modules``, checked exactly."""
    try:
        load_model_state_dict(modules, load_checkpoint(path), device)
    except WeightsError as err:
        msg = str(err)
        raise WeightsError(msg if msg.startswith(str(path)) else f"{path}: {msg}") from err


def weights_to_state_dict(
    weights: Sequence[np.ndarray], keys: Sequence[str]
) -> OrderedDict[str, torch.Tensor]:
    """Pair :func:`get_weights` arrays with :func:`weight_keys` names (for saving)."""
    if len(weights) != len(keys):
        raise WeightsError(f"expected {len(keys)} weight arrays, got {len(weights)}")
    pairs = zip(keys, weights, strict=True)
    return OrderedDict((k, torch.from_numpy(np.array(w, order="C", copy=True))) for k, w in pairs)
