"""Batches cut on the accelerator (``data.features_on_device``) and training batches split into a model's optimizer steps."""

from __future__ import annotations

import warnings
from typing import Optional

import numpy as np
import torch


class FeaturesOnDevice:
    """Each split's features and labels, copied to the device once, so that only row ids
    cross to it per step (the dataset serves ids: ``FrameDataset(ids_only=True)``)."""

    def __init__(self):
        self._copies: dict[str, tuple[torch.Tensor, Optional[torch.Tensor]]] = {}

    def __bool__(self) -> bool:
        return bool(self._copies)

    def add(self, key: str, features, labels: Optional[np.ndarray], device: torch.device) -> None:
        """Copy ``key``'s features (a matrix, or ContextWindows) and labels, once."""
        if key in self._copies:
            return
        with warnings.catch_warnings():  # the map is read-only, and so are the tensors read from it
            warnings.filterwarnings("ignore", message=".*not writable.*")
            self._copies[key] = (
                torch.from_numpy(features).to(device) if isinstance(features, np.ndarray) else features.to(device),
                torch.from_numpy(labels).to(device) if labels is not None else None,
            )

    def batch(self, key: str, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(features, labels)`` of the row ids ``ids`` (the ids themselves where there are no labels)."""
        features, labels = self._copies[key]
        return features[ids], labels[ids] if labels is not None else ids


def optimizer_batches(batch, batch_size: int) -> list:
    """A training batch of several optimizer batches, cut into those (``PhoneModel.steps_per_call``)."""
    x, y = batch
    return list(zip(x.split(batch_size), y.split(batch_size)))
