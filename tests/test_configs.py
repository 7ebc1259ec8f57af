"""The GPU configs build the reference tutorial's models: parameter counts pinned exactly.

Each config's modules are built on CPU from the yaml (no data, no training) and counted as
SpeechBrain and the README count them: the sum of ``p.numel()`` over the parameters of the
``modules`` dict. A size-affecting edit to a config (kernel, pooling, tokens, attention) shows up
here as a changed number instead of silently drifting from the reference.
"""

from __future__ import annotations

import pytest
from conftest import ROOT

from fedspeech.speech import config as config_file

# The reference (Flower-SpeechBrain, used by SpeechBrain's "Federated Speech Model Training via
# Flower and SpeechBrain" tutorial) reports these as 46.3M and 158.9M trainable parameters.
PARAMETERS = {
    "template.yaml": 46_337_102,  # 1 CNN block, 4 x 512 BiLSTM, 2 x 512 DNN, 512 GRU, 250 tokens
    "CRDNN.yaml": 158_907_410,  # 2 CNN blocks, 5 x 1024 BiLSTM, 2 x 1024 DNN, 1024 GRU, 500 tokens
}
CPU_CONFIGS = {"small_cpu.yaml", "real_cpu.yaml"}


def test_every_gpu_config_is_pinned():
    found = {p.name for p in (ROOT / "configs").glob("*.yaml")} - CPU_CONFIGS
    assert found == set(PARAMETERS)


@pytest.mark.parametrize("config", sorted(PARAMETERS))
def test_parameter_count_matches_reference(tmp_path, config):
    path = ROOT / "configs" / config
    hparams = config_file.load_hparams(path, {"output_folder": str(tmp_path)})
    config_file.check_config_keys(path, hparams)
    modules = hparams["modules"]
    assert "dec" in modules and hparams["decode_method"] == "beam"
    # SpeechBrain's recipes: a narrow beam for validation, the tutorial's 80 for the final test.
    assert (hparams["valid_search"].beam_size, hparams["test_search"].beam_size) == (10, 80)
    count = sum(p.numel() for module in modules.values() for p in module.parameters())
    assert count == PARAMETERS[config]
