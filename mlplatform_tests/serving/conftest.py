"""Serving fixtures: tiny real ONNX sentiment models, registered and promoted through the real registry."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline

from mlplatform.core.data.text import TOKEN_PATTERN, lowercase_for_tokens
from mlplatform.core.platform.home import PlatformHome
from mlplatform.core.platform.settings import Settings
from mlplatform.core.release.registry import ModelRegistry
from mlplatform.core.training.export import to_onnx
from mlplatform_tests.core.scoring.models import LABELS

TRAINING_REVIEWS: tuple[tuple[str, str], ...] = (
    ("I love this dress, it fits perfectly and looks great", "positive"),
    ("Beautiful fabric, lovely colour, very happy", "positive"),
    ("Great quality and so comfortable, highly recommend", "positive"),
    ("Terrible quality, it ripped after one wash", "negative"),
    ("Awful fit, way too small and the fabric is cheap", "negative"),
    ("Returned it, poor stitching and ugly colour", "negative"),
    ("It is okay, nothing special but fine", "neutral"),
    ("Average dress, fit is so so, colour as pictured", "neutral"),
    ("Not bad not great, fine for the price", "neutral"),
)


TWO_CLASSES = ("bad", "good")
"""The classes of `tiny_model_bytes(two_classes=True)`: another contract's (negative -> bad, positive -> good)."""


def tiny_model_bytes(variant: int = 0, two_classes: bool = False) -> bytes:
    """A TF-IDF + logistic regression sentiment model as ONNX; each variant has different bytes. Its
    classes are LABELS, or TWO_CLASSES (trained on the negative and positive reviews only)."""
    texts = [text for text, _ in TRAINING_REVIEWS] + [f"variant {variant} filler words"]
    labels = [label for _, label in TRAINING_REVIEWS] + ["neutral"]
    if two_classes:
        renamed = {"negative": "bad", "positive": "good"}
        kept = [(text, renamed[label]) for text, label in zip(texts, labels, strict=True) if label in renamed]
        texts, labels = [text for text, _ in kept], [label for _, label in kept]
    pipeline = Pipeline(
        [
            (
                "tfidf",
                TfidfVectorizer(
                    token_pattern=TOKEN_PATTERN, lowercase=False, preprocessor=lowercase_for_tokens
                ),
            ),
            ("classifier", LogisticRegression(C=10.0 + variant, max_iter=1000)),
        ]
    ).fit(texts, labels)
    return to_onnx(pipeline, TWO_CLASSES if two_classes else LABELS)


@pytest.fixture(scope="session")
def tiny_models() -> dict[int, bytes]:
    """Three distinct tiny models (built once per session: conversion takes a moment)."""
    return {variant: tiny_model_bytes(variant) for variant in range(3)}


def register(registry: ModelRegistry, onnx_bytes: bytes) -> str:
    """Register and approve a model; returns its version."""
    version = registry.register(
        onnx_bytes, card={"model": "tiny test model"}, metrics={"macro_f1": 0.5}
    ).version
    registry.approve(version, by="test")
    return version


def deploy(registry: ModelRegistry, onnx_bytes: bytes) -> str:
    """Register, approve and promote a model to production; returns its version."""
    version = register(registry, onnx_bytes)
    registry.promote(version, by="test")
    return version


def damage_model_file(registry: ModelRegistry, version: str, how: str) -> None:
    """Corrupt (flip bytes) or truncate a registered model file in place, as a disk or operator might."""
    path: Path = registry.get(version).onnx_path
    data = path.read_bytes()
    os.chmod(path, 0o644)
    damaged = (
        data[: len(data) // 2]
        if how == "truncate"
        else data[:100] + bytes(b ^ 0xFF for b in data[100:200]) + data[200:]
    )
    path.write_bytes(damaged)


def with_serving(settings: Settings, **overrides: object) -> Settings:
    """The settings with some `[serving]` keys replaced."""
    return settings.with_overrides({"serving": overrides})


@pytest.fixture
def registry(home: PlatformHome) -> ModelRegistry:
    return ModelRegistry(home.registry)


@pytest.fixture
def fast_settings(settings: Settings) -> Settings:
    """Serving settings for tests: a quick swap poll."""
    return with_serving(settings, swap_poll_interval_s=0.02)
