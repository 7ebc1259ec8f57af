"""Files kept for later: their mode, their hash, the resolved config; and a quiet start-up."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

from conftest import ROOT
from hyperpyyaml import load_hyperpyyaml

from fedspeech.base.files import atomic_write, file_sha256
from fedspeech.speech.config import save_resolved_config


def test_kept_files_get_the_umask_mode_not_mkstemps_private_one(tmp_path: Path) -> None:
    mask = os.umask(0o022)  # read the process's umask (and put it back at once)
    os.umask(mask)
    with atomic_write(tmp_path / "kept.json", "w") as f:
        f.write("{}")
    mode = (tmp_path / "kept.json").stat().st_mode & 0o777
    assert mode == 0o666 & ~mask  # what open() would give; mkstemp alone gives 0600


def test_file_sha256_is_the_sha256_of_the_bytes(tmp_path: Path) -> None:
    data = os.urandom(3 << 20)  # several of its 1 MiB chunks
    (tmp_path / "blob").write_bytes(data)
    assert file_sha256(tmp_path / "blob") == hashlib.sha256(data).hexdigest()


def test_saved_config_is_resolved_with_its_overrides(tmp_path: Path) -> None:
    target = tmp_path / "hyperparams.yaml"
    overrides = {"batch_size": 3, "output_folder": str(tmp_path / "out")}
    save_resolved_config(ROOT / "configs" / "small_cpu.yaml", overrides, target)
    text = target.read_text()
    assert "batch_size: 3" in text and "!ref" not in text
    hparams = load_hyperpyyaml(text)  # and it loads back, as the run used it
    assert hparams["dataloader_options"]["batch_size"] == 3


def test_no_torchvision_warning_and_passive_openmp_at_start_up() -> None:
    code = "import server, client, os; print(os.environ['OMP_WAIT_POLICY'])"
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "torchvision" not in result.stderr
    assert result.stdout.strip() == "PASSIVE"  # set before torch loaded its OpenMP runtime
