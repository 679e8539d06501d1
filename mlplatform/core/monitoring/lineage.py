"""Lineage: trace a prediction, or any stored asset version, back to the raw drops and code that made it.

Everything here is read from stored records, never inferred: the capture log (which model version
answered a request), the registry's model card (run, split versions, drop hashes, code versions,
hyperparameters), the artifact store's version records (run and code version of each version, the
`drop_hash` column of stored frames) and the lake (names and landing times of each drop). A link that
should exist but cannot be found raises LineageError naming the missing link.

The chains are JSON-ready dicts (what `mlplatform lineage --json` prints); `render_lineage_text`
turns one into an indented, human-readable chain.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import polars as pl

from mlplatform.core.data.lake import Lake, LakeError
from mlplatform.core.monitoring.capture import CAPTURE_COLUMNS, answered_only, probabilities_of
from mlplatform.core.platform.artifacts import ArtifactError, ArtifactStore, StoredArtifact
from mlplatform.core.platform.errors import UserError
from mlplatform.core.platform.home import PlatformHome
from mlplatform.core.platform.settings import StorageRules
from mlplatform.core.release.registry import ModelRegistry, ModelVersion, RegistryError
from mlplatform.core.training.evaluation import LINEAGE_KEYS
from mlplatform.core.training.selection import (
    CANDIDATES_GROUP_PREFIX,
    MODEL_CARD_FILE,
    MODEL_FILE,
    CandidateRecord,
    SelectionError,
)

RAW_REVIEWS = "raw_reviews"
# Assets whose stored frame carries the drop each row came from.
FRAME_ASSETS_WITH_DROPS = ("reviews", "review_splits")
BEST_MODEL = "best_model"
CANDIDATES_PREFIX = f"{CANDIDATES_GROUP_PREFIX}/"
DROP_HASH_COLUMN = "drop_hash"
TEXT_PREVIEW_CHARS = 60


class LineageError(UserError):
    """A lineage chain cannot be built: unknown request or version, or a missing link (named)."""


# --- records --------------------------------------------------------------------------------------


def artifact_record(artifact: StoredArtifact) -> dict[str, Any]:
    """One stored version as lineage shows it: where it is, how big, when and by which run and code."""
    return {
        "asset": artifact.asset,
        "partition": artifact.partition,
        "version": artifact.version,
        "path": str(artifact.path),
        "size": artifact.size,
        "format": artifact.fmt,
        "rows": artifact.rows,
        "created_at": artifact.created_at,
        "run_id": artifact.extra.get("run_id"),
        "code_version": artifact.extra.get("code_version"),
    }


def list_artifact_versions(store: ArtifactStore, asset: str) -> list[dict[str, Any]]:
    """Every stored version of `asset` (all partitions), oldest first; ArtifactError when it has none."""
    return [artifact_record(artifact) for artifact in store.versions(asset, "*")]


def _drop_link(lake: Lake, digest: str, where: str) -> dict[str, Any]:
    try:
        drop = lake.drop(digest)
    except LakeError as exc:
        raise LineageError(f"{where}: drop {digest} is not in the lake ({exc})") from exc
    return {
        "hash": drop.hash,
        "names": list(drop.names),
        "landed_at": drop.landed_at,
        "state": drop.state,
        "decided_at": drop.decided_at,
        "size": drop.size,
        "format": drop.format,
    }


def _drop_links(home: PlatformHome, digests: list[str], where: str) -> list[dict[str, Any]]:
    """The drops with these hashes, oldest landing first."""
    lake = Lake(home)
    links = [_drop_link(lake, digest, where) for digest in digests]
    return sorted(links, key=lambda link: (link["landed_at"], link["hash"]))


def _split_link(store: ArtifactStore, asset: str, version: str, where: str) -> dict[str, Any]:
    try:
        return artifact_record(store.get(asset, version, partition=None))
    except (ArtifactError, ValueError) as exc:
        raise LineageError(f"{where}: split version {asset} {version} is not in the artifact store") from exc


# --- model card lineage ---------------------------------------------------------------------------


def _card_lineage(
    home: PlatformHome, store: ArtifactStore, card: Mapping[str, Any], where: str
) -> dict[str, Any]:
    """The training side of a model: its run, split versions, drops, code versions and hyperparameters."""
    lineage = card.get("lineage")
    if not isinstance(lineage, Mapping):
        raise LineageError(f"{where}: the model card has no lineage section")
    missing = [key for key in LINEAGE_KEYS if key not in lineage]
    if missing:
        raise LineageError(f"{where}: the model card lineage lacks {', '.join(missing)}")
    model = card.get("model") or {}
    return {
        "model_name": model.get("name"),
        "family": model.get("family"),
        "onnx_sha256": (card.get("onnx") or {}).get("sha256"),
        "hyperparameters": card.get("hyperparameters"),
        "run_id": lineage["run_id"],
        "trained_at": lineage["created_at"],
        "code_version": lineage["code_version"],
        "candidate_code_version": lineage.get("candidate_code_version"),
        "training_config": lineage.get("training_config"),
        "splits": [
            _split_link(store, asset, version, where)
            for asset, version in sorted(lineage["split_versions"].items())
        ],
        "drops": _drop_links(home, list(lineage["drop_hashes"]), where),
    }


def _model_version_record(model: ModelVersion) -> dict[str, Any]:
    return {
        "version": model.version,
        "sha256": model.sha256,
        "status": model.status,
        "aliases": list(model.aliases),
        "created_at": model.created_at,
        "metrics": model.metrics,
    }


def _registry_version(registry: ModelRegistry, version: str, where: str) -> ModelVersion:
    try:
        return registry.get(version)
    except RegistryError as exc:
        raise LineageError(f"{where}: model version {version} is not in the registry ({exc})") from exc


def _registered_with_sha256(registry: ModelRegistry, sha256: str | None) -> ModelVersion | None:
    """The registry version holding exactly these ONNX bytes, if any."""
    if sha256 is None or not registry.root.is_dir():
        return None
    return next((model for model in registry.list() if model.sha256 == sha256), None)


# --- predictions ----------------------------------------------------------------------------------


def _request_rows(capture: pl.DataFrame, request_id: str) -> pl.DataFrame:
    """The rows of one captured request, named by its request id or its capture id (the endpoint's own
    key, answered in `X-Capture-ID`: what tells apart requests a client sent with one request id)."""
    missing = [column for column in CAPTURE_COLUMNS if column not in capture.columns]
    if missing:
        raise LineageError(f"the capture frame lacks columns {', '.join(missing)}")
    if "capture_id" not in capture.columns:  # captured before capture ids: one request per time
        capture = capture.with_columns(pl.lit(None, pl.String).alias("capture_id"))
    named = (pl.col("request_id") == request_id) | (pl.col("capture_id") == request_id).fill_null(False)
    rows = answered_only(capture.filter(named)).sort("time", "row")
    if rows.is_empty():
        raise LineageError(f"request {request_id!r} is not in the capture log")
    requests = rows.select("capture_id", "time").unique(maintain_order=True)
    if requests.height > 1:
        # Clients may send their own X-Request-ID: a reused id names several requests.
        named_by = ", ".join(
            f"capture id {key} at {moment.isoformat()}" if key else f"at {moment.isoformat()}"
            for key, moment in requests.iter_rows()
        )
        raise LineageError(
            f"request id {request_id!r} names {requests.height} requests ({named_by}); "
            "pass one capture id to `--prediction` instead"
        )
    return rows.sort("row")


def _request_record(rows: pl.DataFrame) -> dict[str, Any]:
    first = rows.row(0, named=True)
    answered_at: datetime = first["time"]
    return {
        "request_id": first["request_id"],
        "capture_id": first.get("capture_id"),
        "time": answered_at.isoformat(),
        "route": first["route"],
        "rows": rows.height,
        "latency_ms": first["latency_ms"],
        "inputs": [
            {
                "row": row["row"],
                "review_id": row["review_id"],
                "product_id": row["product_id"],
                "text": row["text"],
            }
            for row in rows.iter_rows(named=True)
        ],
        "outputs": [
            {
                "row": row["row"],
                "label": row["label"],
                "probabilities": probabilities_of(row),
            }
            for row in rows.iter_rows(named=True)
        ],
    }


def prediction_lineage(
    home: PlatformHome, storage: StorageRules, request_id: str, capture: pl.DataFrame
) -> dict[str, Any]:
    """The chain of one captured request: request -> model version -> run, splits, drops, code.

    `capture` is the endpoint's capture log as read by `mlplatform.core.monitoring.capture.read_capture`;
    `storage` says where the home keeps its registry and artifacts. Raises LineageError for an unknown
    (or reused) request id and for any missing link.
    """
    rows = _request_rows(capture, request_id)
    versions = rows["model_version"].unique().to_list()
    if len(versions) != 1:
        raise LineageError(f"request {request_id!r}: capture names {len(versions)} model versions {versions}")
    where = f"request {request_id!r}"
    model = _registry_version(ModelRegistry.for_home(home, storage), versions[0], where)
    where = f"model version {model.version}"
    training = _card_lineage(home, ArtifactStore.from_settings(home, storage), model.card, where)
    if training["onnx_sha256"] != model.sha256:
        raise LineageError(
            f"{where}: its card describes ONNX {training['onnx_sha256']}, the registry holds {model.sha256}"
        )
    return {
        "kind": "prediction",
        "request": _request_record(rows),
        "model_version": _model_version_record(model),
        "training": training,
    }


# --- asset versions -------------------------------------------------------------------------------


def _stored_version(store: ArtifactStore, asset: str, version: str | None) -> StoredArtifact:
    try:
        if version is None:
            return store.versions(asset, "*")[-1]
        return store.get(asset, version)
    except (ArtifactError, ValueError) as exc:
        raise LineageError(str(exc)) from exc


def _load(store: ArtifactStore, artifact: StoredArtifact) -> Any:
    try:
        return store.load(artifact)
    except ArtifactError as exc:
        raise LineageError(str(exc)) from exc


def _raw_reviews_upstream(home: PlatformHome, artifact: StoredArtifact, where: str) -> dict[str, Any]:
    digest = artifact.extra.get("drop_hash") or artifact.partition
    if digest is None:
        raise LineageError(f"{where}: the version record names no drop (no drop_hash, no partition)")
    return {"drops": _drop_links(home, [digest], where)}


def _frame_upstream(
    home: PlatformHome, store: ArtifactStore, artifact: StoredArtifact, where: str
) -> dict[str, Any]:
    frame = _load(store, artifact)
    if not isinstance(frame, pl.DataFrame) or DROP_HASH_COLUMN not in frame.columns:
        raise LineageError(f"{where}: the stored frame has no {DROP_HASH_COLUMN!r} column")
    digests = frame[DROP_HASH_COLUMN].unique().sort().to_list()
    return {"drops": _drop_links(home, digests, where)}


def _best_model_card(store: ArtifactStore, artifact: StoredArtifact, where: str) -> dict[str, Any]:
    files = _load(store, artifact).files
    if MODEL_CARD_FILE not in files:
        raise LineageError(f"{where}: the bundle has no {MODEL_CARD_FILE}")
    return json.loads(files[MODEL_CARD_FILE])


def _best_model_upstream(
    home: PlatformHome, storage: StorageRules, store: ArtifactStore, artifact: StoredArtifact, where: str
) -> dict[str, Any]:
    card = _best_model_card(store, artifact, where)
    training = _card_lineage(home, store, card, where)
    registered = _registered_with_sha256(ModelRegistry.for_home(home, storage), training["onnx_sha256"])
    return {
        "training": training,
        "registered_as": _model_version_record(registered) if registered else None,
    }


def _candidate_upstream(
    home: PlatformHome, store: ArtifactStore, artifact: StoredArtifact, where: str
) -> dict[str, Any]:
    """A candidate's own record, and the training lineage of the best_model its run selected.

    Candidates carry no model card; the best_model version written by the same run read the same
    split version, and its card records that version with its drops.
    """
    try:
        candidate = CandidateRecord.from_files(_load(store, artifact).files)
    except SelectionError as exc:
        raise LineageError(f"{where}: {exc}") from exc
    upstream: dict[str, Any] = {
        "candidate": {
            "name": candidate.name,
            "family": candidate.family,
            "hyperparameters": candidate.hyperparameters,
            "validation_metrics": candidate.validation_metrics,
            "parity_passed": candidate.parity_passed,
        },
        "training": None,
        "selected": None,
    }
    run_id = artifact.extra.get("run_id")
    same_run = [
        best for best in _versions_or_none(store, BEST_MODEL) if run_id and best.extra.get("run_id") == run_id
    ]
    if not same_run:
        upstream["note"] = f"run {run_id} stored no best_model version: no model card records its splits"
        return upstream
    best = same_run[-1]
    card = _best_model_card(store, best, f"{where} (best_model {best.version[:12]} of the same run)")
    upstream["training"] = _card_lineage(home, store, card, where)
    upstream["best_model_version"] = best.version
    upstream["selected"] = _load(store, best).files.get(MODEL_FILE) == candidate.onnx_bytes
    return upstream


def _versions_or_none(store: ArtifactStore, asset: str) -> list[StoredArtifact]:
    try:
        return store.versions(asset)
    except ArtifactError:
        return []


def asset_lineage(
    home: PlatformHome, storage: StorageRules, asset: str, version: str | None = None
) -> dict[str, Any]:
    """The chain of one stored asset version (default: the latest stored): its record and upstream.

    `version` is a sha256 or a unique prefix of at least 8 hex characters. Upstream is what the stored
    records give: raw_reviews -> its drop; reviews / review_splits -> the drops in their drop_hash
    column; best_model -> its model card lineage; candidate_models/* -> the lineage of its run's
    best_model. Other assets record no upstream (said in "note"). Raises LineageError.
    """
    store = ArtifactStore.from_settings(home, storage)
    artifact = _stored_version(store, asset, version)
    where = f"{asset} {artifact.version[:12]}"
    if asset == RAW_REVIEWS:
        upstream = _raw_reviews_upstream(home, artifact, where)
    elif asset in FRAME_ASSETS_WITH_DROPS:
        upstream = _frame_upstream(home, store, artifact, where)
    elif asset == BEST_MODEL:
        upstream = _best_model_upstream(home, storage, store, artifact, where)
    elif asset.startswith(CANDIDATES_PREFIX):
        upstream = _candidate_upstream(home, store, artifact, where)
    else:
        upstream = {"note": f"asset {asset!r} records no upstream lineage"}
    return {"kind": "asset", "artifact": artifact_record(artifact), "upstream": upstream}


# --- text -----------------------------------------------------------------------------------------


def _preview(text: str | None) -> str:
    if text is None:
        return "-"
    flat = " ".join(text.split())
    return flat if len(flat) <= TEXT_PREVIEW_CHARS else flat[: TEXT_PREVIEW_CHARS - 3] + "..."


def _drop_lines(drops: list[dict[str, Any]], indent: str) -> list[str]:
    lines = [f"{indent}drops ({len(drops)}):"]
    for drop in drops:
        lines.append(f"{indent}  {drop['hash']}  {', '.join(drop['names'])}")
        lines.append(
            f"{indent}    landed {drop['landed_at']}, {drop['state']} {drop['decided_at'] or ''}".rstrip()
        )
    return lines


def _training_lines(training: dict[str, Any], indent: str) -> list[str]:
    hyperparameters = json.dumps(training["hyperparameters"], sort_keys=True)
    lines = [
        f"{indent}trained by run {training['run_id']} at {training['trained_at']}",
        f"{indent}model {training['model_name']} (onnx {training['onnx_sha256']})",
        f"{indent}hyperparameters {hyperparameters}",
        f"{indent}code version {training['code_version']}, candidates' {training['candidate_code_version']}, "
        f"training config {training['training_config']}",
        f"{indent}splits:",
    ]
    for split in training["splits"]:
        lines.append(
            f"{indent}  {split['asset']} {split['version']}  "
            f"({split['rows']} rows, run {split['run_id']}, code {split['code_version']})"
        )
    return lines + _drop_lines(training["drops"], indent)


def _prediction_lines(chain: dict[str, Any]) -> list[str]:
    request, model = chain["request"], chain["model_version"]
    capture_id = f"  capture id {request['capture_id']}" if request.get("capture_id") else ""
    lines = [
        f"request {request['request_id']}{capture_id}  {request['time']}  {request['route']}  "
        f"{request['rows']} row(s)"
    ]
    for given, answer in zip(request["inputs"], request["outputs"], strict=True):
        score = answer["probabilities"][answer["label"]]
        lines.append(
            f"  row {given['row']}: review {given['review_id'] or '-'}, product {given['product_id'] or '-'}: "
            f"{_preview(given['text'])!r} -> {answer['label']} ({score:.3f})"
        )
    aliases = ", ".join(model["aliases"]) or "no alias"
    lines.append(
        f"  answered by model {model['version']} ({model['status']}, {aliases}, sha256 {model['sha256']})"
    )
    return lines + _training_lines(chain["training"], "    ")


def _asset_lines(chain: dict[str, Any]) -> list[str]:
    record, upstream = chain["artifact"], chain["upstream"]
    partition = f" [{record['partition']}]" if record["partition"] else ""
    lines = [
        f"{record['asset']}{partition} {record['version']}",
        f"  {record['path']} ({record['size']} bytes, {record['rows'] if record['rows'] is not None else '-'} rows)",
        f"  stored {record['created_at']} by run {record['run_id']}, code {record['code_version']}",
    ]
    if "candidate" in upstream:
        candidate = upstream["candidate"]
        lines.append(
            f"  candidate {candidate['name']} {json.dumps(candidate['hyperparameters'], sort_keys=True)}"
        )
    if upstream.get("registered_as"):
        lines.append(
            f"  registered as {upstream['registered_as']['version']} ({upstream['registered_as']['status']})"
        )
    if upstream.get("best_model_version"):
        chosen = "selected" if upstream["selected"] else "not selected"
        lines.append(
            f"  {chosen} by best_model {upstream['best_model_version']} of the same run, whose lineage is:"
        )
    if upstream.get("training"):
        lines += _training_lines(upstream["training"], "    ")
    elif "drops" in upstream:
        lines += _drop_lines(upstream["drops"], "    ")
    if upstream.get("note"):
        lines.append(f"  note: {upstream['note']}")
    return lines


def render_lineage_text(chain: dict[str, Any]) -> str:
    """A chain from `prediction_lineage` or `asset_lineage` as indented text, newest link first."""
    lines = _prediction_lines(chain) if chain["kind"] == "prediction" else _asset_lines(chain)
    return "\n".join(lines) + "\n"
