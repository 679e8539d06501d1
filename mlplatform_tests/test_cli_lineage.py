"""`mlplatform lineage` and `mlplatform artifacts`, in-process on a home traced end to end (built once)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from mlplatform.cli import main
from mlplatform.core.platform.artifacts import ArtifactStore
from mlplatform_tests.core.monitoring.lineage_fixtures import REQUEST_ID, TracedHome, build_traced_home

pytestmark = pytest.mark.filterwarnings("ignore")

LISTED_KEYS = {"version", "partition", "size", "rows", "created_at", "run_id"}


@pytest.fixture(scope="module")
def traced(tmp_path_factory: pytest.TempPathFactory) -> TracedHome:
    return build_traced_home(tmp_path_factory.mktemp("cli-lineage"))


def run_cli(capsys, traced: TracedHome, *argv: str) -> tuple[int, str, str]:
    code = main(["--home", str(traced.home.root), *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line_error(code: int, out: str, err: str, expected: str) -> None:
    assert code == 1 and out == "" and err.count("\n") == 1 and err.startswith("error: ") and expected in err


def test_prediction_lineage_json_and_text(capsys, traced):
    code, out, _ = run_cli(capsys, traced, "lineage", "--prediction", REQUEST_ID, "--json")
    assert code == 0
    chain = json.loads(out)
    assert chain["kind"] == "prediction" and set(chain) == {"kind", "request", "model_version", "training"}
    assert chain["request"]["request_id"] == REQUEST_ID and chain["request"]["rows"] == 2
    assert chain["model_version"]["version"] == traced.model_version
    assert [drop["hash"] for drop in chain["training"]["drops"]] == [r.hash for r in traced.landed]
    assert {"run_id", "splits", "code_version", "hyperparameters"} <= set(chain["training"])

    code, out, _ = run_cli(capsys, traced, "lineage", "--prediction", REQUEST_ID)
    assert code == 0 and out.startswith(f"request {REQUEST_ID}")
    assert all(result.hash in out and result.name in out for result in traced.landed)


def test_asset_lineage_json(capsys, traced):
    splits = ArtifactStore(traced.home.artifacts).latest("review_splits")
    code, out, _ = run_cli(
        capsys, traced, "lineage", "review_splits", "--version", splits.version[:8], "--json"
    )
    assert code == 0
    chain = json.loads(out)
    assert chain["kind"] == "asset" and chain["artifact"]["version"] == splits.version
    assert [drop["hash"] for drop in chain["upstream"]["drops"]] == [r.hash for r in traced.landed]


def test_lineage_errors_are_one_line_and_usage_exits_2(capsys, traced):
    assert_one_line_error(
        *run_cli(capsys, traced, "lineage", "--prediction", "never-sent"), "not in the capture log"
    )
    assert_one_line_error(
        *run_cli(capsys, traced, "lineage", "reviews", "--version", "0123456789"), "no stored version"
    )
    assert run_cli(capsys, traced, "lineage")[0] == 2
    assert run_cli(capsys, traced, "lineage", "reviews", "--prediction", REQUEST_ID)[0] == 2
    code, out, err = run_cli(capsys, traced, "lineage", "--prediction", REQUEST_ID, "--version", "01234567")
    assert code == 2 and out == "" and "--version applies to an asset" in err


def test_artifacts_list_json_and_table(capsys, traced):
    code, out, _ = run_cli(capsys, traced, "artifacts", "list", "raw_reviews", "--json")
    assert code == 0
    listed = json.loads(out)
    assert [entry["partition"] for entry in listed] == [result.hash for result in traced.landed]
    assert all(set(entry) >= LISTED_KEYS and entry["rows"] == 900 for entry in listed)

    code, out, _ = run_cli(capsys, traced, "artifacts", "list", "reviews")
    header, *rows = out.splitlines()
    assert code == 0 and header.split() == ["VERSION", "PARTITION", "SIZE", "ROWS", "CREATED", "RUN"]
    assert rows[-1].split()[0] == ArtifactStore(traced.home.artifacts).latest("reviews").version[:12]

    assert_one_line_error(
        *run_cli(capsys, traced, "artifacts", "list", "no_such_asset"), "no stored versions"
    )
    assert run_cli(capsys, traced, "artifacts")[0] == 2


def test_artifacts_restore_byte_for_byte(capsys, traced, tmp_path):
    stored = ArtifactStore(traced.home.artifacts).latest("best_model")
    dest = f"{tmp_path / 'restored'}/"
    code, out, _ = run_cli(capsys, traced, "artifacts", "restore", "best_model", stored.version[:12], dest)
    restored = Path(out.strip())
    assert code == 0 and restored == tmp_path / "restored" / stored.path.name
    assert restored.read_bytes() == stored.path.read_bytes()
    assert hashlib.sha256(restored.read_bytes()).hexdigest() == stored.version

    other = tmp_path / "other.tar"
    other.write_bytes(b"something else")
    assert_one_line_error(
        *run_cli(capsys, traced, "artifacts", "restore", "best_model", stored.version, str(other)),
        "will not overwrite",
    )
    assert other.read_bytes() == b"something else"
    assert_one_line_error(
        *run_cli(capsys, traced, "artifacts", "restore", "best_model", "0123456789", str(tmp_path)),
        "no stored version",
    )
    assert run_cli(capsys, traced, "artifacts", "restore", "best_model")[0] == 2
