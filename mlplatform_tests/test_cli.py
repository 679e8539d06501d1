"""The `mlplatform` command, in-process: exit codes, one-line errors, JSON shapes scripts rely on."""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from mlplatform.cli import HomeUse, build_parser, main
from mlplatform.core.data.lake import Lake
from mlplatform.core.data.synthetic import generate_reviews, to_published_csv, write_demo_drops
from mlplatform.core.platform.home import PlatformHome
from mlplatform.core.platform.settings import Settings
from mlplatform_tests.core.data.contract_fixtures import SENTENCES_TOML
from mlplatform_tests.core.platform.test_settings import BAD_VALUES
from mlplatform_tests.integration.processes import free_port

pytestmark = pytest.mark.filterwarnings("ignore")


def run_cli(capsys, home, *argv: str) -> tuple[int, str, str]:
    code = main(["--home", str(home.root), *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_usage_error_exits_2(capsys, home):
    code, _, err = run_cli(capsys, home, "lake", "frobnicate")
    assert code == 2 and "invalid choice" in err


def test_land_prints_each_hash_and_refuses_missing_files(capsys, home, tmp_path):
    drop = tmp_path / "a.csv"
    drop.write_bytes(to_published_csv(generate_reviews(50, seed=1)))
    code, out, _ = run_cli(capsys, home, "lake", "land", str(drop))
    assert code == 0
    digest, name, status = out.split()[:3]
    assert len(digest) == 64 and name == "a.csv" and status == "landed"

    code, out, _ = run_cli(capsys, home, "lake", "land", str(drop))
    assert code == 0 and "duplicate" in out

    code, out, err = run_cli(capsys, home, "lake", "land", str(tmp_path / "missing.csv"))
    assert code == 1 and out == "" and err.count("\n") == 1 and "not a file" in err


def test_run_status_checkout_and_audit(capsys, home, tmp_path):
    files = write_demo_drops(tmp_path / "drops", n_drops=1, rows_per_drop=600, seed=5)
    bad = tmp_path / "bad.csv"
    bad.write_bytes(b"\xff\xfe not a csv at all")
    assert run_cli(capsys, home, "lake", "land", str(files[0]), str(bad))[0] == 0

    code, out, _ = run_cli(capsys, home, "run")
    assert code == 1
    blocked = [line for line in out.splitlines() if line.startswith("blocked:")]
    assert len(blocked) == 1 and "raw_reviews" in blocked[0] and "schema" in blocked[0]

    code, out, _ = run_cli(capsys, home, "status", "--json")
    assert code == 0
    status = json.loads(out)
    states = {drop["name"]: drop for drop in status["drops"]}
    assert states["bad.csv"]["state"] == "quarantined" and states["bad.csv"]["reason"]
    assert states[files[0].name]["state"] == "accepted" and states[files[0].name]["reason"] is None
    for drop in status["drops"]:
        assert {"name", "hash", "state", "reason", "landed_at"} <= drop.keys()
    splits = status["assets"]["review_splits"]
    assert len(splits["version"]) == 64
    assert splits["checks"]["no_leakage"] == {
        "passed": True,
        "severity": "ERROR",
        "description": splits["checks"]["no_leakage"]["description"],
    }

    dest = tmp_path / "out"
    code, out, _ = run_cli(
        capsys,
        home,
        "lake",
        "checkout",
        "reviews",
        "--as",
        "ana",
        "--purpose",
        "error analysis",
        "--to",
        str(dest),
    )
    assert code == 0 and splits["version"] not in out
    assert len(list(dest.iterdir())) == 1

    policy = home.lake / "access_policy.toml"
    policy.write_text('[[rules]]\nreaders = ["pipeline"]\ndatasets = ["*"]\nallow = true\n')
    code, out, err = run_cli(
        capsys, home, "lake", "checkout", "reviews", "--as", "mallory", "--purpose", "curious"
    )
    assert code == 1 and err.startswith("error:") and err.count("\n") == 1 and "mallory" in err

    code, out, _ = run_cli(capsys, home, "lake", "audit", "--json")
    assert code == 0
    ledger = json.loads(out)
    assert all({"time", "consumer", "dataset", "version", "purpose", "allowed"} <= e.keys() for e in ledger)
    people = [(e["consumer"], e["allowed"]) for e in ledger if e["kind"] == "person"]
    assert people == [("ana", True), ("mallory", False)]


def test_status_in_plain_text(capsys, home):
    code, out, _ = run_cli(capsys, home, "status")
    assert code == 0 and "drops (0)" in out and "review_splits" in out


def test_home_defaults_to_dot_mlplatform_in_the_working_directory(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLPLATFORM_HOME", raising=False)
    drop = tmp_path / "a.csv"
    drop.write_bytes(to_published_csv(generate_reviews(20, seed=1)))
    assert main(["lake", "land", str(drop)]) == 0  # a command that creates its home
    assert (tmp_path / ".mlplatform" / "lake").is_dir()
    assert main(["lake", "audit", "--json"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1]) == []


# Every command that must not create a home, with arguments that would otherwise get it going.
NEEDS_A_HOME = {
    ("status",): ["status", "--json"],
    ("lake", "checkout"): ["lake", "checkout", "reviews", "--as", "ana", "--purpose", "a look"],
    ("lake", "audit"): ["lake", "audit"],
    ("models", "list"): ["models", "list"],
    ("models", "approve"): ["models", "approve", "v1"],
    ("models", "reject"): ["models", "reject", "v1", "--reason", "bad"],
    ("models", "rollback"): ["models", "rollback"],
    ("models", "rebuild"): ["models", "rebuild", "v1"],
    ("score",): ["score", "in.csv", "out.csv"],
    ("lineage",): ["lineage", "reviews"],
    ("artifacts", "list"): ["artifacts", "list", "reviews"],
    ("artifacts", "restore"): ["artifacts", "restore", "reviews", "0123456789abcdef", "out/"],
    ("alerts",): ["alerts"],
    ("dataset", "check"): ["dataset", "check", "in.csv"],
    ("dataset", "show"): ["dataset", "show"],
    ("rollout", "shadow"): ["rollout", "shadow", "v2"],
    ("rollout", "canary"): ["rollout", "canary", "v2", "--percent", "5"],
    ("rollout", "status"): ["rollout", "status"],
    ("rollout", "stop"): ["rollout", "stop"],
}
READS_NO_HOME = {("dataset", "draft")}


def leaf_commands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    """(command words, home_use) for every runnable command of the parser."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from leaf_commands(sub, (*path, name))
            return
    yield path, parser.get_default("home_use")


def test_only_the_documented_commands_may_create_a_home():
    leaves = dict(leaf_commands(build_parser()))
    creating = {path for path, use in leaves.items() if use not in (None, HomeUse.NEEDS, HomeUse.NONE)}
    assert {path for path, use in leaves.items() if use is HomeUse.NONE} == READS_NO_HOME
    assert creating == {("demo",), ("run",), ("ui",), ("lake", "land"), ("serve",)}
    assert leaves[("serve",)] is HomeUse.CREATES_IN_EMPTY_DIRECTORY
    assert set(leaves) - creating - READS_NO_HOME == set(NEEDS_A_HOME), (
        "a new command: add it to NEEDS_A_HOME"
    )


@pytest.mark.parametrize("where", ["missing", "empty directory"])
@pytest.mark.parametrize("argv", NEEDS_A_HOME.values(), ids=[" ".join(key) for key in NEEDS_A_HOME])
def test_a_command_that_needs_a_home_refuses_a_path_without_one(capsys, tmp_path, monkeypatch, argv, where):
    monkeypatch.chdir(tmp_path)
    root = tmp_path / "no" / "such" / "home"
    if where == "empty directory":
        root.mkdir(parents=True)
    code = main(["--home", str(root), *argv])
    captured = capsys.readouterr()
    assert code == 1 and captured.out == "" and captured.err.count("\n") == 1
    assert captured.err.startswith(f"error: no platform home at {root}: create one with")
    assert (not root.exists()) if where == "missing" else not any(root.iterdir())
    assert sorted(path.name for path in tmp_path.iterdir()) == (["no"] if where != "missing" else [])


def test_serve_lays_out_a_home_only_in_an_existing_empty_directory(capsys, tmp_path, monkeypatch):
    # The database is down, so a serve that gets past the home check stops right after laying it out.
    monkeypatch.setenv("MLPLATFORM_PG_URL", f"postgresql://bob@127.0.0.1:{free_port()}/ml")
    missing, crowded, empty = tmp_path / "missing", tmp_path / "crowded", tmp_path / "empty"
    crowded.mkdir()
    (crowded / "notes.txt").write_text("not a home")
    empty.mkdir()
    for root, reason in ((missing, "it does not exist"), (crowded, "it is not empty")):
        code = main(["--home", str(root), "serve", "--port", str(free_port())])
        err = capsys.readouterr().err
        assert code == 1 and err.count("\n") == 1 and f"no platform home at {root}" in err and reason in err
    assert not missing.exists() and [path.name for path in crowded.iterdir()] == ["notes.txt"]

    code = main(["--home", str(empty), "serve", "--port", str(free_port())])
    assert code == 1 and "the endpoint cannot start" in capsys.readouterr().err
    assert PlatformHome(empty).exists()


def test_unexpected_errors_are_one_line_with_the_traceback_logged(capsys, home, monkeypatch):
    import mlplatform.cli as cli

    def explode(args, home, settings):
        raise RuntimeError("disk on fire\nsecond line")

    monkeypatch.setattr(cli, "cmd_lake_audit", explode)
    code, _, err = run_cli(capsys, home, "lake", "audit")
    assert code == 1 and err.count("\n") == 1 and "disk on fire" in err
    assert "RuntimeError" in (home.root / "logs" / "cli-errors.log").read_text()
    assert Path(home.root / "logs" / "cli-errors.log").stat().st_size > 0


def test_user_errors_are_one_line_and_bugs_leave_their_traceback_by_type(capsys, home, monkeypatch):
    import mlplatform.cli as cli
    from mlplatform.core.platform.errors import PlatformError, UserError

    class Refused(UserError):
        pass

    class Broken(PlatformError):
        pass

    def refuse(args, home, settings):
        raise Refused("version v9 is not registered")

    monkeypatch.setattr(cli, "cmd_lake_audit", refuse)
    code, _, err = run_cli(capsys, home, "lake", "audit")
    assert (code, err) == (1, "error: version v9 is not registered\n")
    assert not (home.root / "logs" / "cli-errors.log").exists()

    def break_down(args, home, settings):
        raise Broken("frames of different lengths")

    monkeypatch.setattr(cli, "cmd_lake_audit", break_down)
    code, _, err = run_cli(capsys, home, "lake", "audit")
    assert code == 1 and err.startswith(
        "error: unexpected Broken: frames of different lengths (traceback in "
    )
    assert "Broken: frames of different lengths" in (home.root / "logs" / "cli-errors.log").read_text()


def test_models_rollback_moves_production_back_and_waits_for_a_deployment(capsys, home):
    from mlplatform.core.release.deploy import deployment_lock
    from mlplatform.core.release.registry import ModelRegistry

    registry = ModelRegistry.for_home(home.ensure(), Settings.load(home.settings_file).storage)
    for tag in ("one", "two"):
        version = registry.register(f"model {tag}".encode(), {"name": tag}, {"macro_f1": 0.5}).version
        registry.approve(version, by="test")
        registry.promote(version, by="test")
    (home.root / "platform.toml").write_text("[deployment]\nlock_timeout_s = 0.3\n")

    with deployment_lock(home, timeout_s=1.0):  # a deployment in progress
        code, out, err = run_cli(capsys, home, "models", "rollback")
    assert code == 1 and out == "" and err.count("\n") == 1 and "deployment lock" in err
    assert registry.production().version == "v2"  # untouched while the deployment held the lock

    code, out, _ = run_cli(capsys, home, "models", "rollback")
    assert code == 0 and out.strip() == "production v2 -> v1"
    assert registry.production().version == "v1"


MALFORMED_PG_URLS = [
    "postgresql://bob:pa%ss-s3cret@localhost:5432/db",  # a raw '%' in the password
    "postgresql://bob:pa-s3cret@[::1:5432/db",  # an unclosed '['
]


@pytest.mark.parametrize("url", MALFORMED_PG_URLS)
@pytest.mark.parametrize("command", [["status"], ["run"], ["models", "list"], ["lake", "audit"], ["alerts"]])
def test_a_malformed_database_url_is_one_line_that_shows_no_credentials(
    capsys, home, monkeypatch, url, command
):
    monkeypatch.setenv("MLPLATFORM_PG_URL", url)
    code, out, err = run_cli(capsys, home, *command)
    assert code == 1 and out == "" and err.count("\n") == 1
    assert "not a valid PostgreSQL URL" in err and "s3cret" not in err
    # Nor anything the command left in the home (dagster.yaml is never written with it, logs are clean).
    assert not [path for path in home.root.rglob("*") if path.is_file() and b"s3cret" in path.read_bytes()]


def test_the_traceback_log_holds_no_credentials(capsys, home, monkeypatch):
    import mlplatform.cli as cli

    url = "postgresql://bob:db-s3cret@db.example/ml"
    monkeypatch.setenv("MLPLATFORM_PG_URL", url)
    home.settings_file.write_text('[storage]\nartifacts = "ftp://ann:st0re-s3cret@files.example/a"\n')

    def explode(args, home, settings):
        try:  # a driver quoting both secrets, deep in the chain
            raise ValueError(f'driver: token "db-s3cret" for {url}; then "st0re-s3cret" refused')
        except ValueError as exc:
            raise RuntimeError("storage failed: st0re-s3cret") from exc

    monkeypatch.setattr(cli, "cmd_lake_audit", explode)
    code, _, err = run_cli(capsys, home, "lake", "audit")
    log = (home.root / "logs" / "cli-errors.log").read_text()
    assert code == 1 and "storage failed: ***" in err and "driver: token" in log
    assert "s3cret" not in err + log


def test_serve_with_the_database_down_is_one_line_and_exit_1(capsys, home, monkeypatch):
    monkeypatch.setenv("MLPLATFORM_PG_URL", f"postgresql://bob:db-s3cret@127.0.0.1:{free_port()}/ml")
    code, out, err = run_cli(capsys, home, "serve", "--port", str(free_port()))
    assert code == 1 and out == "" and err.count("\n") == 1
    assert err.startswith("error: the endpoint cannot start: PostgreSQL records unavailable (database ml on")
    assert "Traceback" not in err and "s3cret" not in err


def test_the_server_module_with_the_database_down_is_one_line_and_exit_1(home):
    env = {
        **os.environ,
        "MLPLATFORM_HOME": str(home.root),
        "MLPLATFORM_PG_URL": f"postgresql://bob:db-s3cret@127.0.0.1:{free_port()}/ml",
    }
    command = [sys.executable, "-m", "mlplatform.serving.server", "--port", str(free_port())]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and done.stderr.count("\n") == 1, done.stderr
    assert "the endpoint cannot start: PostgreSQL records unavailable" in done.stderr
    assert "s3cret" not in done.stderr + done.stdout


# ---- settings: validated when they load, before any command runs ---------------------------------


@pytest.mark.parametrize(("text", "line"), BAD_VALUES)
@pytest.mark.parametrize("command", [["status"], ["models", "list"], ["lake", "land", "DROP"], ["serve"]])
def test_a_bad_setting_stops_every_command_in_one_line(capsys, home, text, line, command):
    home.settings_file.write_text(text)
    drop = home.root.parent / "drop.csv"
    drop.write_text("a,b\n1,2\n")
    code, out, err = run_cli(capsys, home, *[str(drop) if arg == "DROP" else arg for arg in command])
    assert (code, out, err) == (1, "", f"error: {line} (in {home.settings_file})\n")
    assert not Lake(home).drops()  # nothing ran: nothing landed
    assert not (home.dagster / "dagster.yaml").exists()


def test_a_command_that_reads_no_home_ignores_its_settings(capsys, home, tmp_path):
    home.settings_file.write_text(BAD_VALUES[0][0])
    data = tmp_path / "reviews.csv"
    data.write_text("text,stars\n" + "".join(f"review {n},{n % 5 + 1}\n" for n in range(50)))
    code, out, _ = run_cli(capsys, home, "dataset", "draft", str(data))
    assert code == 0 and "from_rating" in out


@pytest.mark.parametrize(("text", "line"), BAD_VALUES)
def test_the_server_module_refuses_a_bad_setting_in_one_line(home, text, line):
    home.settings_file.write_text(text)
    env = {**os.environ, "MLPLATFORM_HOME": str(home.root)}
    command = [sys.executable, "-m", "mlplatform.serving.server", "--port", str(free_port())]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert (done.returncode, done.stderr) == (1, f"error: {line} (in {home.settings_file})\n")


# ---- dataset draft | check | show -----------------------------------------------------------------

UCI_FILE = (
    Path(__file__).resolve().parents[1].parent
    / "shared"
    / "data"
    / "uci_sentiment_sentences"
    / "yelp_labelled.txt"
)


@pytest.mark.realdata
def test_dataset_draft_of_the_real_uci_file_loads_as_the_homes_contract(capsys, home):
    if not UCI_FILE.exists():
        pytest.skip(f"{UCI_FILE} not found (see ../shared/data/README.md)")
    code, out, err = run_cli(capsys, home, "dataset", "draft", str(UCI_FILE))
    assert code == 0 and err == ""
    home.dataset_file.write_text(out)
    code, out, _ = run_cli(capsys, home, "dataset", "show", "--json")
    assert code == 0
    shown = json.loads(out)
    assert shown["source"] == str(home.dataset_file)
    assert shown["dataset"] == {"format": "tsv", "header": False, "unknown_columns": "refuse"}
    assert [(column["name"], column["role"]) for column in shown["columns"]] == [
        ("text", "text"),
        ("label", "label"),
    ]
    assert shown["labels"]["classes"] == ["negative", "positive"]
    code, out, _ = run_cli(capsys, home, "dataset", "check", str(UCI_FILE))
    assert code == 0 and out.startswith(
        f"ok: yelp_labelled.txt matches the contract {shown['fingerprint']} (1,000 rows"
    )


def test_a_directory_holding_only_a_dataset_contract_is_a_home_to_check_files_against(capsys, tmp_path):
    # The page's first steps (docs/data.md): save the edited draft as dataset.toml, then check a file
    # against it before anything is landed.
    root = tmp_path / "new-home"
    root.mkdir()
    (root / "dataset.toml").write_text(SENTENCES_TOML)
    sentences = tmp_path / "sentences.txt"
    sentences.write_text("Loved it.\t1\nNever again.\t0\n")
    assert PlatformHome(root).exists()
    code = main(["--home", str(root), "dataset", "check", str(sentences)])
    out = capsys.readouterr().out
    assert code == 0 and out.startswith("ok: sentences.txt matches the contract ")
    assert sorted(path.name for path in root.iterdir()) == ["dataset.toml"]  # checked, nothing laid out


def test_dataset_check_exit_codes_and_one_line_per_problem(capsys, home, tmp_path):
    good = tmp_path / "good.csv"
    good.write_bytes(to_published_csv(generate_reviews(80, seed=2)))
    code, out, _ = run_cli(capsys, home, "dataset", "check", str(good))
    assert code == 0 and out.startswith("ok: good.csv matches the contract ") and "80 rows" in out
    code, out, _ = run_cli(capsys, home, "dataset", "check", str(good), "--json")
    assert (code, json.loads(out)) == (0, [])
    assert Lake(home).drops() == []  # checked, never landed

    frame = generate_reviews(80, seed=2)
    bad = tmp_path / "bad.csv"
    broken = frame.with_columns(
        age=pl.when(pl.col("source_row") == 3).then(7).otherwise(pl.col("age")),
        rating=pl.when(pl.col("source_row").is_in([5, 9])).then(9).otherwise(pl.col("rating")),
    )
    bad.write_bytes(to_published_csv(broken))
    code, out, _ = run_cli(capsys, home, "dataset", "check", str(bad))
    assert code == 1
    assert out.splitlines() == [
        "bad.csv: schema: age in_range(14, 110): '7' at row 4 (source_row 3)",
        "bad.csv: schema: rating in_range(1, 5): '9' at row 6 (source_row 5)",
        "bad.csv: schema: rating in_range(1, 5): '9' at row 10 (source_row 9)",
    ]
    code, out, _ = run_cli(capsys, home, "dataset", "check", str(bad), "--json", "--max-problems", "1")
    problems = json.loads(out)
    assert code == 1
    assert problems[0] == {
        "check": "schema",
        "column": "age",
        "row": 4,
        "line": None,
        "value": "7",
        "message": "age in_range(14, 110): '7' at row 4 (source_row 3)",
    }
    assert problems[1]["message"] == "and 2 more contract violation(s)"

    unreadable = tmp_path / "cut.csv"
    unreadable.write_bytes(good.read_bytes()[:-30])
    code, out, _ = run_cli(capsys, home, "dataset", "check", str(unreadable))
    assert code == 1 and out.count("\n") == 1 and out.startswith("cut.csv: schema: ")
    code, _, err = run_cli(capsys, home, "dataset", "check", str(tmp_path / "absent.csv"))
    assert code == 1 and err.count("\n") == 1 and "not a file" in err


def test_dataset_show_describes_the_packaged_default(capsys, home):
    code, out, _ = run_cli(capsys, home, "dataset", "show", "--json")
    shown = json.loads(out)
    assert code == 0 and shown["source"].startswith("packaged default")
    assert {"fingerprint", "dataset", "columns", "labels"} <= shown.keys()
    assert shown["columns"][0] | {} == {**shown["columns"][0], "source": "", "name": "source_row"}
    code, out, _ = run_cli(capsys, home, "dataset", "show")
    assert code == 0 and out.startswith("contract: packaged default (fingerprint ")
    assert re.search(r"'Rating' +rating +rating +int +no +1..5\n", out)
    assert re.search(r"'Age' +age +facet +int +no +14..110, bins \[25, 35, 45, 55, 65\]\n", out)


def test_a_malformed_contract_is_refused_in_one_line_by_every_command_that_loads_it(capsys, home, tmp_path):
    drop = tmp_path / "a.csv"
    drop.write_bytes(to_published_csv(generate_reviews(20, seed=1)))
    home.dataset_file.write_text('[dataset]\nformat = "xlsx"\n[columns.text]\nrole = "text"\n')
    for argv in (
        ["dataset", "show"],
        ["dataset", "check", str(drop)],
        ["run"],
        ["demo", "--drops", "1", "--rows", "10"],
        ["status"],
        ["score", str(drop), str(tmp_path / "out.csv")],
    ):
        code, out, err = run_cli(capsys, home, *argv)
        assert (code, out) == (1, ""), argv
        assert (
            err
            == f"error: {home.dataset_file}: [dataset] format must be one of ['csv', 'tsv', 'parquet'], got 'xlsx'\n"
        )
    assert Lake(home).drops() == []  # demo refused before landing anything
    code, out, _ = run_cli(capsys, home, "dataset", "draft", str(drop))  # drafting needs no contract
    assert code == 0 and out.startswith("# Draft dataset contract")


def test_dataset_draft_refuses_what_cannot_make_a_contract(capsys, home, tmp_path):
    numbers = tmp_path / "numbers.csv"
    numbers.write_text("a,b\n1,2\n3,4\n")
    code, out, err = run_cli(capsys, home, "dataset", "draft", str(numbers))
    assert (code, out) == (1, "") and err.count("\n") == 1 and "no column holds text" in err


def test_score_refuses_to_replace_an_output_and_explains_on_request(capsys, home, tmp_path):
    from mlplatform.core.release.registry import ModelRegistry
    from mlplatform_tests.serving.conftest import deploy, tiny_model_bytes

    version = deploy(ModelRegistry.for_home(home.ensure(), Settings.packaged().storage), tiny_model_bytes())
    source, target = tmp_path / "in.csv", tmp_path / "out.csv"
    pl.DataFrame({"text": ["lovely soft dress", "awful fit, ripped seams"]}).write_csv(source)
    code, out, _ = run_cli(capsys, home, "score", str(source), str(target))
    assert code == 0 and out == f"2 rows scored by {version} -> {target}\n"
    first = target.read_bytes()

    code, out, err = run_cli(capsys, home, "score", str(source), str(target), "--explain")
    assert (code, out) == (1, "") and err.count("\n") == 1 and "--overwrite" in err
    assert target.read_bytes() == first  # refused: the existing output is untouched

    code, _, _ = run_cli(capsys, home, "score", str(source), str(target), "--explain", "--overwrite")
    scored = pl.read_csv(target)
    assert code == 0 and "explanation" in scored.columns and "explanation" not in pl.read_csv(source).columns
    assert all(json.loads(cell) for cell in scored["explanation"])  # each row names its top n-grams
