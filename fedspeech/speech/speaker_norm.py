"""Per-speaker mean normalisation of features (``norm_type: speaker``), which SpeechBrain 1.1 no
longer offers.

Each speaker's mean log-mel spectrum is measured over all of that speaker's utterances at hand and
subtracted from each of them. Like a per-utterance mean it removes the speaker's microphone colour
and loudness, but it keeps what a single utterance's mean would take away with it: the average
spectrum of the word said, which for a short isolated word is much of what identifies it.

The statistics are local data, never weights: every site (client or server) measures the speakers
in its own datasets, from unaugmented audio, without labels; nothing about them travels. An
utterance of a speaker never measured falls back to its own mean (``norm_type: sentence``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch
from speechbrain.processing.features import InputNormalization, make_padding_mask


class SpeakerNormalization(InputNormalization):
    """``InputNormalization`` with a ``speaker`` mode; other norm types behave as the parent's."""

    def __init__(self, norm_type: str = "speaker", std_norm: bool = False, **kwargs) -> None:
        speaker = norm_type == "speaker"
        if speaker and std_norm:
            raise ValueError("norm_type speaker subtracts a mean only: set std_norm False")
        parent_type = "sentence" if speaker else norm_type
        super().__init__(norm_type=parent_type, std_norm=std_norm, **kwargs)
        self.norm_type = norm_type
        self._sums: dict[str, torch.Tensor] = {}
        self._counts: dict[str, int] = {}
        self._seen: set[str] = set()

    @property
    def speakers(self) -> list[str]:
        return sorted(self._counts)

    def has_measured(self, uid: str) -> bool:
        return uid in self._seen

    def add_utterances(
        self, utterances: Iterable[tuple[str, str, torch.Tensor]],
        features: Callable[[torch.Tensor], torch.Tensor],
    ) -> None:
        """Add ``(id, speaker, waveform)`` utterances to their speakers' means (each id once)."""
        with torch.no_grad():
            for uid, speaker, wav in utterances:
                if uid in self._seen:
                    continue
                self._seen.add(uid)
                frame_mean = features(wav.unsqueeze(0))[0].mean(0).cpu()
                self._sums[speaker] = self._sums.get(speaker, 0) + frame_mean
                self._counts[speaker] = self._counts.get(speaker, 0) + 1

    def speaker_mean(self, speaker: str) -> torch.Tensor | None:
        if speaker not in self._counts:
            return None
        return self._sums[speaker] / self._counts[speaker]

    def forward(self, x, lengths=None, epoch=None, spk_ids: Sequence[str] | None = None):
        if self.norm_type != "speaker":
            return super().forward(x, lengths, epoch=epoch)
        means = utterance_means(x, lengths)  # the fallback for speakers never measured
        for i, speaker in enumerate(spk_ids or ()):
            mean = self.speaker_mean(speaker)
            if mean is not None:
                means[i] = mean.to(x.device, x.dtype)
        return x - means.unsqueeze(1)


def utterance_means(x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
    """Each utterance's mean feature vector over its frames, padding excluded: [batch, feats]
    (SpeechBrain's padding mask, so the fallback is exactly ``norm_type: sentence``)."""
    mask = make_padding_mask(x, lengths)
    return (x * mask).sum(1) / mask.sum(1)
