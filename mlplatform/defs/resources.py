"""Resources: the only door from Dagster wiring to the outside world (the platform home)."""

from __future__ import annotations

import os
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg
import httpx

from mlplatform.core.data.contract import DatasetContract, load_contract
from mlplatform.core.data.lake import Lake
from mlplatform.core.monitoring.product_report import Explainer
from mlplatform.core.platform.errors import UserError
from mlplatform.core.platform.home import PlatformHome, api_keys_from_env
from mlplatform.core.platform.settings import Settings
from mlplatform.core.release.registry import PRODUCTION, ModelRegistry, ModelVersion
from mlplatform.core.scoring.model import Contribution, ScoringModel, load_model


class PlatformResource(dg.ConfigurableResource):
    """The deployment's home: its settings, its dataset contract, its lake and its registry."""

    home: str

    def platform_home(self) -> PlatformHome:
        return PlatformHome.at(Path(self.home))

    def settings(self) -> Settings:
        return Settings.load(self.platform_home().settings_file)

    def contract(self) -> DatasetContract:
        return load_contract(self.platform_home().dataset_file)

    def registry(self) -> ModelRegistry:
        return ModelRegistry.for_home(self.platform_home().ensure(), self.settings().storage)

    def lake(self) -> Lake:
        return Lake.from_settings(self.platform_home(), self.settings())

    def explainer(self) -> Explainer:
        """Explanations by the registered version that made a prediction (its file verified, loaded once);
        None for a version that cannot explain (registered before the sparse graph) or is gone."""
        settings = self.settings()
        registry, rules = self.registry(), settings.scoring
        top_k = settings.serving.explain_top_k
        models: dict[str, ScoringModel | None] = {}

        def explain(version: str, texts: Sequence[str]) -> Sequence[Sequence[Contribution]] | None:
            if version not in models:
                try:
                    model = load_model(registry.verify(version), registry.get(version).sha256, rules)
                    models[version] = model if model.explains else None
                except UserError:
                    models[version] = None
            model = models[version]
            return None if model is None else model.predict(list(texts), explain_top_k=top_k).explanations

        return explain


class EndpointError(UserError, RuntimeError):
    """The endpoint could not be asked (unreachable, timed out, or answered an error)."""


@dataclass(frozen=True)
class EndpointAnswer:
    """A `/predict` answer: its JSON body and how long the request took."""

    body: dict[str, Any]
    latency_ms: float


class EndpointResource(dg.ConfigurableResource, ABC):
    """Where the production model serves: what sentiment_endpoint deploys to and smoke-tests.

    Two implementations, picked from settings by `endpoint_resource` (the pattern of Dagster's
    project_fully_featured example): a live HTTP endpoint that follows the registry's production
    alias, and an in-process one that scores a given version's ONNX file directly.
    """

    @property
    @abstractmethod
    def live(self) -> bool:
        """True: it serves whatever the production alias names (promote first, then smoke-test)."""

    @abstractmethod
    def location(self) -> str | None:
        """The endpoint's URL, None for the in-process one."""

    @abstractmethod
    def reported_version(self) -> str | None:
        """The model version the endpoint says it serves now (None: nothing servable)."""

    @abstractmethod
    def predict(self, request: dict[str, Any], model: ModelVersion) -> EndpointAnswer:
        """Answer a `POST /predict` body; `model` is the version the caller expects to answer."""

    def metrics_text(self) -> str | None:
        """The endpoint's Prometheus `/metrics` text; None when there is no endpoint to scrape."""
        return None

    def wait_for_version(self, version: str, timeout_s: float, poll_interval_s: float) -> str | None:
        """Poll until the endpoint reports `version`; None when it did, else why it did not in time."""
        deadline = time.monotonic() + timeout_s
        last = "it was never asked"
        while True:
            try:
                reported = self.reported_version()
            except EndpointError as exc:
                last = str(exc)
            else:
                if reported == version:
                    return None
                last = f"it still reports {reported!r}"
            if time.monotonic() >= deadline:
                return f"the endpoint did not report {version} within {timeout_s:g} s: {last}"
            time.sleep(poll_interval_s)


def _first_api_key(environ: Mapping[str, str]) -> str | None:
    keys = api_keys_from_env(environ)
    return keys[0] if keys else None


class HttpEndpointResource(EndpointResource):
    """The real-time endpoint over HTTP (the API key, if any, is the first of MLPLATFORM_API_KEYS)."""

    url: str
    model_name: str
    request_timeout_s: float

    @property
    def live(self) -> bool:
        return True

    def location(self) -> str | None:
        return self.url

    def _client(self) -> httpx.Client:
        key = _first_api_key(os.environ)
        headers = {"X-API-Key": key} if key else {}
        return httpx.Client(base_url=self.url, timeout=self.request_timeout_s, headers=headers)

    def _json(self, response: httpx.Response, what: str) -> dict[str, Any]:
        try:
            body = response.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            raise EndpointError(f"{what} answered {response.status_code} without a JSON object")
        if response.status_code >= 400 and what.startswith("POST"):
            raise EndpointError(f"{what} answered {response.status_code}: {body.get('error', body)}")
        return body

    def reported_version(self) -> str | None:
        what = f"GET {self.url}/v2/models/{self.model_name}"
        try:
            with self._client() as client:
                response = client.get(f"/v2/models/{self.model_name}")
        except httpx.HTTPError as exc:
            raise EndpointError(f"{what} failed: {exc}") from exc
        version = self._json(response, what).get("version")
        return version if isinstance(version, str) else None

    def metrics_text(self) -> str | None:
        what = f"GET {self.url}/metrics"
        try:
            with self._client() as client:
                response = client.get("/metrics")
        except httpx.HTTPError as exc:
            raise EndpointError(f"{what} failed: {exc}") from exc
        if response.status_code != 200:
            raise EndpointError(f"{what} answered {response.status_code}")
        return response.text

    def predict(self, request: dict[str, Any], model: ModelVersion) -> EndpointAnswer:
        what = f"POST {self.url}/predict"
        try:
            with self._client() as client:
                started = time.perf_counter()
                response = client.post("/predict", json=request)
                latency_ms = (time.perf_counter() - started) * 1000
        except httpx.HTTPError as exc:
            raise EndpointError(f"{what} failed: {exc}") from exc
        return EndpointAnswer(self._json(response, what), latency_ms)


class OfflineEndpointResource(EndpointResource):
    """No endpoint configured: score the given version's ONNX file in-process, as the endpoint would."""

    home: str

    @property
    def live(self) -> bool:
        return False

    def location(self) -> str | None:
        return None

    def _settings(self) -> Settings:
        return Settings.load(PlatformHome.at(Path(self.home)).settings_file)

    def reported_version(self) -> str | None:
        home = PlatformHome.at(Path(self.home))
        return ModelRegistry.for_home(home, self._settings().storage).aliases().get(PRODUCTION)

    def predict(self, request: dict[str, Any], model: ModelVersion) -> EndpointAnswer:
        scoring_model = load_model(model.onnx_path, model.sha256, self._settings().scoring)
        texts = [review["text"] for review in request["reviews"]]
        started = time.perf_counter()
        prediction = scoring_model.predict(texts)
        latency_ms = (time.perf_counter() - started) * 1000
        predictions = [
            {
                "label": str(label),
                "probabilities": dict(zip(scoring_model.classes, map(float, row), strict=True)),
            }
            for label, row in zip(prediction.labels, prediction.probabilities, strict=True)
        ]
        return EndpointAnswer({"model_version": model.version, "predictions": predictions}, latency_ms)


def endpoint_resource(home: PlatformHome, settings: Settings) -> EndpointResource:
    """The HTTP endpoint when `[deployment] endpoint_url` is set, else the in-process one."""
    rules = settings.deployment
    if rules.endpoint_url is None:
        return OfflineEndpointResource(home=str(home.root))
    return HttpEndpointResource(
        url=rules.endpoint_url,
        model_name=settings.serving.model_name,
        request_timeout_s=rules.request_timeout_s,
    )
