"""The scoring tests' shared model: one small real pipeline per test module, and its sparse ONNX graph
loaded as a ScoringModel."""

from __future__ import annotations

import pytest

from mlplatform.core.scoring.model import ScoringModel
from mlplatform_tests.core.scoring.models import RULES, fitted_pipeline, sparse_model_bytes


@pytest.fixture(scope="module")
def pipeline():
    return fitted_pipeline()


@pytest.fixture(scope="module")
def model(pipeline) -> ScoringModel:
    return ScoringModel.from_bytes(sparse_model_bytes(pipeline), RULES, "test model")
