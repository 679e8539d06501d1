"""Rebuild a registered model from its recorded data version and code version, and prove it identical.

The model card records the split version it was trained on and the fingerprint of the search config
(which includes the library versions that shape the ONNX bytes). Training is deterministic, so
refitting the recorded candidate on the recorded split must give the registered ONNX file byte for
byte; anything else means the recorded inputs or code are not what produced the model.

The caller hands in what the registry holds of the version (its card and the registered file's SHA-256)
and the artifact store the splits are read from: training comes before release, so this module never
reads the registry itself.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import polars as pl

from mlplatform.core.platform.artifacts import ArtifactStore
from mlplatform.core.platform.errors import UserError
from mlplatform.core.platform.settings import ScoringRules
from mlplatform.core.training.evaluation import card_classes
from mlplatform.core.training.fit import (
    TrainingConfig,
    candidate_specs,
    config_fingerprint,
    split_frames,
    train_candidate,
)


class RebuildError(UserError, RuntimeError):
    """The recorded inputs cannot be found, or the current code differs from the recorded code version."""


@dataclass(frozen=True)
class Rebuild:
    version: str
    registered_sha256: str
    rebuilt_sha256: str
    split_version: str
    candidate: str

    @property
    def identical(self) -> bool:
        return self.registered_sha256 == self.rebuilt_sha256


def recorded_splits(store: ArtifactStore, card: Mapping[str, Any]) -> tuple[str, pl.DataFrame]:
    """The `review_splits` version a model card records, and that frame loaded from the artifact store.

    Raises ArtifactNotFound when that version is no longer stored.
    """
    split_version = card["lineage"]["split_versions"]["review_splits"]
    return split_version, store.load(store.get("review_splits", split_version))


def rebuild_model(
    store: ArtifactStore,
    version: str,
    card: Mapping[str, Any],
    registered_sha256: str,
    config: TrainingConfig,
    scoring: ScoringRules,
) -> Rebuild:
    """Refit the model registered as `version` (its model card and file hash as the registry records them)
    from its recorded split version with `config`."""
    lineage, candidate = card["lineage"], card["model"]["name"]
    recorded = lineage.get("training_config")
    if recorded != config_fingerprint(config):
        raise RebuildError(
            f"{version} was trained with search config {recorded}; the current one is "
            f"{config_fingerprint(config)} (check out the code version {lineage.get('candidate_code_version')})"
        )
    specs = [spec for spec in candidate_specs(config) if spec.name == candidate]
    if not specs:
        raise RebuildError(f"{version}: candidate {candidate!r} is not in the current search config")
    split_version, splits = recorded_splits(store, card)
    rebuilt = train_candidate(specs[0], split_frames(splits), config, scoring, card_classes(card))
    return Rebuild(
        version=version,
        registered_sha256=registered_sha256,
        rebuilt_sha256=hashlib.sha256(rebuilt.onnx_bytes).hexdigest(),
        split_version=split_version,
        candidate=candidate,
    )
