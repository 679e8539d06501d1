"""The `mlplatform` command. Exit codes: 0 ok, 1 a gate blocked or an operation was refused, 2 usage.

Only the commands that bring data or processes to a home create it (`HomeUse`): `demo`, `lake land`,
`run` and `ui` wherever it is missing, `serve` in an existing empty directory. Every other command on a
path that holds no home says so in one line and exits 1, creating nothing (a mistyped `--home` must not
answer from a new, empty home).

Settings are loaded once, in `main`, before the command runs (`Settings.load`: the home's platform.toml
over the packaged one, every key validated), and handed to the command: a bad setting is one line, exit 1.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import threading
from collections.abc import Sequence
from enum import Enum
from pathlib import Path
from typing import TextIO

from mlplatform.core.platform.errors import UserError
from mlplatform.core.platform.home import PlatformHome
from mlplatform.core.platform.reporting import one_line, secrets_of
from mlplatform.core.platform.settings import Settings
from mlplatform.defs.progress import StepProgress, StepState
from mlplatform.errors import silence_dagster_stability_warnings

EXIT_OK, EXIT_BLOCKED, EXIT_USAGE = 0, 1, 2


class CommandError(UserError):
    """A refusal or failure to report as one line with exit code 1."""


class HomeUse(Enum):
    """What a command may do when its home is missing (a subcommand's `home_use` default)."""

    NEEDS = "needs an existing home"
    NONE = "reads no home (works anywhere, creates nothing)"
    CREATES = "creates the home where it is missing"
    CREATES_IN_EMPTY_DIRECTORY = "creates the home in an existing, empty directory"


def _check_home(home: PlatformHome, use: HomeUse) -> None:
    """Refuse (CommandError) a command whose home is missing unless it may create one there."""
    if use in (HomeUse.CREATES, HomeUse.NONE) or home.exists():
        return
    root = home.root
    if use is HomeUse.CREATES_IN_EMPTY_DIRECTORY:
        if root.is_dir() and not any(root.iterdir()):
            return
        where = "it does not exist" if not root.exists() else "it is not empty"
        raise CommandError(
            f"no platform home at {root}, and serve lays one out only in an existing empty directory "
            f"({where}); create one with `mlplatform run` or `mlplatform demo`, or point --home at one"
        )
    raise CommandError(
        f"no platform home at {root}: create one with `mlplatform demo`, `mlplatform lake land FILE...` "
        "or `mlplatform run`, or point --home / MLPLATFORM_HOME at one"
    )


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _print_json(value) -> None:
    json.dump(value, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")


def _table(rows: list[list[str]], header: list[str]) -> None:
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows, strict=False)]
    for row in [header, *rows]:
        print("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=False)).rstrip())


def _lake(home: PlatformHome, settings: Settings):
    from mlplatform.core.data.lake import Lake

    return Lake.from_settings(home, settings)


def _contract(home: PlatformHome):
    """The home's dataset contract (the packaged default without a dataset.toml); refused in one line."""
    from mlplatform.core.data.contract import load_contract

    return load_contract(home.dataset_file)


# ---- run / demo / status / ui --------------------------------------------------------------------


def cmd_run(args: argparse.Namespace, home: PlatformHome, settings: Settings) -> int:
    from mlplatform.runner import run_pending

    progress = step_progress(sys.stderr)
    try:
        report = run_pending(home, say=progress.say, on_step=progress.step, settings=settings)
    finally:
        progress.close()
    for blocked in report.blocked:
        print(f"blocked: {blocked.asset}: {blocked.reason}")
    if not report.blocked:
        print(
            f"ok: {len(report.accepted)} drop(s) accepted, {len(report.materialized)} asset(s) materialized"
        )
    return report.exit_code


def cmd_demo(args: argparse.Namespace, home: PlatformHome, settings: Settings) -> int:
    from mlplatform.core.data.synthetic import write_demo_drops

    lake = _lake(home, settings)
    with tempfile.TemporaryDirectory() as scratch:
        files = write_demo_drops(Path(scratch), n_drops=args.drops, rows_per_drop=args.rows, seed=args.seed)
        for result in lake.land(files):
            _progress(f"landed {result.name}  {result.hash[:12]}  {result.status}")
    return cmd_run(args, home, settings)


def _latest_versions_and_checks(home: PlatformHome, settings: Settings) -> dict:
    import dagster as dg

    from mlplatform.definitions import build_definitions
    from mlplatform.instance import open_instance

    instance = open_instance(home)
    graph = build_definitions(home, settings).resolve_asset_graph()
    check_keys = list(graph.asset_check_keys)
    latest_checks = instance.event_log_storage.get_latest_asset_check_execution_by_key(check_keys)
    assets = {}
    for key in sorted(graph.get_all_asset_keys(), key=lambda k: k.to_user_string()):
        event = instance.get_latest_materialization_event(key)
        version, at = None, None if event is None else event.timestamp
        if event is not None and event.dagster_event is not None:
            version = event.dagster_event.step_materialization_data.materialization.tags.get(
                "dagster/data_version"
            )
        elif graph.get(key).is_observable:  # the capture: its latest observation
            observed = instance.get_latest_data_version_record(key, is_source=True)
            if observed is not None and observed.asset_observation is not None:
                version = observed.asset_observation.tags.get("dagster/data_version")
                at = observed.timestamp
        checks = {}
        for check_key in (c for c in check_keys if c.asset_key == key):
            record = latest_checks.get(check_key)
            evaluation = None
            if record is not None and record.event is not None and record.event.dagster_event is not None:
                data = record.event.dagster_event.event_specific_data
                evaluation = data if isinstance(data, dg.AssetCheckEvaluation) else None
            checks[check_key.name] = {
                "passed": None if evaluation is None else evaluation.passed,
                "severity": None if evaluation is None else evaluation.severity.value,
                "description": None if evaluation is None else evaluation.description,
            }
        assets[key.to_user_string()] = {
            "version": version,
            "materialized_at": at,
            "checks": checks,
        }
    return assets


def cmd_status(args: argparse.Namespace, home: PlatformHome, settings: Settings) -> int:
    drops = [drop.to_dict() for drop in _lake(home, settings).drops()]
    assets = _latest_versions_and_checks(home, settings)
    if args.json:
        _print_json({"home": str(home.root), "drops": drops, "assets": assets})
        return EXIT_OK
    print(f"home: {home.root}")
    print(f"\ndrops ({len(drops)}):")
    _table(
        [
            [d["hash"][:12], d["state"], ", ".join(d["names"]), d["landed_at"], d.get("reason") or ""]
            for d in drops
        ],
        ["HASH", "STATE", "NAMES", "LANDED", "REASON"],
    )
    print("\nassets:")
    rows = []
    for key, info in assets.items():
        failed = [name for name, c in info["checks"].items() if c["passed"] is False]
        checks = "no checks" if not info["checks"] else ("failed: " + ", ".join(failed) if failed else "ok")
        rows.append([key, (info["version"] or "-")[:12], checks])
    _table(rows, ["ASSET", "VERSION", "CHECKS"])
    return EXIT_OK


def cmd_ui(args: argparse.Namespace, home: PlatformHome, settings: Settings) -> int:
    """`dagster dev` on the home: its instance, and the platform's code location under its one name.

    Dagster runs in the home's directory: Dagster reads `.env` from where it runs, and a project's
    `.env` (which names the project's own home) must not override the home chosen here.
    """
    from mlplatform.instance import prepare_instance, workspace_file

    dagster_home = prepare_instance(home)
    workspace = workspace_file(home)
    dagster = shutil.which("dagster") or str(Path(sys.executable).with_name("dagster"))
    env = {**os.environ, "DAGSTER_HOME": str(dagster_home), "MLPLATFORM_HOME": str(home.root)}
    argv = [dagster, "dev", "-w", str(workspace), "--port", str(args.port), "--host", args.host]
    _progress(f"Dagster UI on http://{args.host}:{args.port} (home {home.root})")
    os.chdir(home.root)
    os.execvpe(argv[0], argv, env)
    return EXIT_OK  # not reached


class StepLines:
    """`mlplatform run`'s progress where no terminal reads it (a log, a pipe): a line per step outcome."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def say(self, message: str) -> None:
        print(message, file=self.stream, flush=True)

    def step(self, event: StepProgress) -> None:
        line = _step_line(event)
        if line is not None:
            print(line, file=self.stream, flush=True)

    def close(self) -> None:
        pass


class StepBar(StepLines):
    """On a terminal: the same lines, under them a bar with the steps done and the running step's time.

    Steps are reported from a watcher thread while `say` comes from the main one, hence the lock.
    """

    def __init__(self, stream: TextIO) -> None:
        super().__init__(stream)
        self.lock = threading.Lock()
        self.running: dict[str, float] = {}
        self.done = self.total = 0
        self.drawn = False

    def say(self, message: str) -> None:
        with self.lock:
            self._clear()
            super().say(message)
            self._draw()

    def step(self, event: StepProgress) -> None:
        with self.lock:
            self.done, self.total = event.done, event.total
            if event.state in (StepState.STARTED, StepState.RUNNING):
                self.running[event.step] = event.elapsed_s
            else:
                self.running.pop(event.step, None)
                self._clear()
                super().step(event)
            self._draw()

    def close(self) -> None:
        with self.lock:
            self._clear()

    def _clear(self) -> None:
        if self.drawn:
            self.stream.write("\r\x1b[K")
            self.drawn = False

    def _draw(self) -> None:
        if not self.running:
            self.stream.flush()
            return
        step, elapsed = next(reversed(self.running.items()))
        others = f" (+{len(self.running) - 1})" if len(self.running) > 1 else ""
        width = 24
        filled = width * self.done // self.total if self.total else 0
        bar = f"[{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total}  {step}{others}  {elapsed:.1f} s"
        columns = shutil.get_terminal_size().columns
        self.stream.write("\r\x1b[K" + bar[: max(columns - 1, 10)])
        self.stream.flush()
        self.drawn = True


def _step_line(event: StepProgress) -> str | None:
    """The line for a step's outcome (None for a start: the outcome line follows)."""
    if event.state == StepState.SUCCEEDED:
        return f"  {event.step}: ok in {event.elapsed_s:.1f} s ({event.done}/{event.total})"
    if event.state == StepState.FAILED:
        return f"  {event.step}: FAILED after {event.elapsed_s:.1f} s ({event.done}/{event.total})"
    if event.state == StepState.RETRYING:
        return f"  {event.step}: retrying after {event.elapsed_s:.1f} s"
    return None


def step_progress(stream: TextIO) -> StepLines:
    """A bar on a terminal, plain lines otherwise."""
    return StepBar(stream) if stream.isatty() else StepLines(stream)


# ---- lake ----------------------------------------------------------------------------------------


def cmd_lake_land(args: argparse.Namespace, home: PlatformHome, settings: Settings) -> int:
    files = [Path(name) for name in args.files]
    missing = [str(path) for path in files if not path.is_file()]
    if missing:
        raise CommandError(f"not a file: {', '.join(missing)}")
    for result in _lake(home, settings).land(files):
        note = f" (same bytes already {result.existing_state})" if result.status == "duplicate" else ""
        print(f"{result.hash}  {result.name}  {result.status}{note}")
    return EXIT_OK


def cmd_lake_checkout(args: argparse.Namespace, home: PlatformHome, settings: Settings) -> int:
    from mlplatform.core.platform.artifacts import ArtifactStore

    store = ArtifactStore.from_settings(home, settings.storage)

    def resolve(dataset: str, version: str | None):
        artifact = store.latest(dataset) if version is None else store.get(dataset, version)
        if isinstance(artifact.path, Path):
            return artifact.version, artifact.path
        # A remote artifact is read from a local, content-addressed copy (hash-verified by restore).
        cache = home.root / "cache" / "artifacts"
        cache.mkdir(parents=True, exist_ok=True)
        return artifact.version, store.restore(dataset, artifact.version, cache)

    checkout = _lake(home, settings).checkout(
        args.dataset,
        reader=args.reader,
        purpose=args.purpose,
        version=args.version,
        dest=Path(args.to) if args.to else None,
        resolver=resolve,
    )
    where = checkout.copied_to or checkout.source_path
    print(f"{checkout.dataset} {checkout.version} -> {where}")
    return EXIT_OK


def cmd_lake_audit(args: argparse.Namespace, home: PlatformHome, settings: Settings) -> int:
    entries = [entry.to_dict() for entry in _lake(home, settings).audit()]
    if args.json:
        _print_json(entries)
        return EXIT_OK
    _table(
        [
            [
                e["time"],
                e["consumer"],
                e["dataset"],
                (e["version"] or "-")[:12],
                "yes" if e["allowed"] else "DENIED",
                e["purpose"],
            ]
            for e in entries
        ],
        ["TIME", "CONSUMER", "DATASET", "VERSION", "ALLOWED", "PURPOSE"],
    )
    return EXIT_OK


# ---- models / serve / score ----------------------------------------------------------------------


def _registry(home: PlatformHome, settings: Settings):
    from mlplatform.core.release.registry import ModelRegistry

    return ModelRegistry.for_home(home.ensure(), settings.storage)


def cmd_models_list(args: argparse.Namespace, home: PlatformHome, settings: Settings) -> int:
    versions = _registry(home, settings).list()
    if args.json:
        _print_json([version.to_dict() for version in versions])
        return EXIT_OK
    _table(
        [
            [
                v.version,
                v.status,
                ",".join(v.aliases) or "-",
                f"{v.metrics.get('macro_f1', float('nan')):.4f}",
                v.created_at,
                v.sha256[:12],
            ]
            for v in versions
        ],
        ["VERSION", "STATUS", "ALIASES", "MACRO_F1", "CREATED", "SHA256"],
    )
    return EXIT_OK


def _who(args: argparse.Namespace) -> str:
    return args.by or os.environ.get("USER") or "unknown"


def cmd_models_approve(args: argparse.Namespace, home: PlatformHome, settings: Settings) -> int:
    version = _registry(home, settings).approve(args.version, by=_who(args), note=args.note)
    print(f"{version.version} {version.status}")
    return EXIT_OK


def cmd_models_reject(args: argparse.Namespace, home: PlatformHome, settings: Settings) -> int:
    version = _registry(home, settings).reject(args.version, reason=args.reason, by=_who(args))
    print(f"{version.version} {version.status}")
    return EXIT_OK


def cmd_models_rollback(args: argparse.Namespace, home: PlatformHome, settings: Settings) -> int:
    from mlplatform.core.release.deploy import deployment_lock

    rules = settings.deployment
    # Never in the middle of a deployment: its smoke test would judge (and undo) this move as its own.
    with deployment_lock(home, rules.lock_timeout_s):
        moved_from, moved_to = _registry(home, settings).rollback(by=_who(args), reason=args.reason)
    print(f"production {moved_from} -> {moved_to}")
    return EXIT_OK


def cmd_models_rebuild(args: argparse.Namespace, home: PlatformHome, settings: Settings) -> int:
    from mlplatform.core.platform.artifacts import ArtifactStore
    from mlplatform.core.training.fit import load_training_config
    from mlplatform.core.training.rebuild import rebuild_model

    config = load_training_config(home.training_file if home.training_file.exists() else None)
    model = _registry(home, settings).get(args.version)
    store = ArtifactStore.from_settings(home, settings.storage)
    _progress(f"refitting {args.version} from its recorded split version ...")
    result = rebuild_model(store, model.version, model.card, model.sha256, config, settings.scoring)
    verdict = "identical" if result.identical else "DIFFERENT"
    print(
        f"{result.version}: rebuilt {result.candidate} from review_splits {result.split_version[:12]}: "
        f"{verdict} (registered {result.registered_sha256[:12]}, rebuilt {result.rebuilt_sha256[:12]})"
    )
    return EXIT_OK if result.identical else EXIT_BLOCKED


def cmd_serve(args: argparse.Namespace, home: PlatformHome, settings: Settings) -> int:
    from mlplatform.serving.server import run_server

    run_server(home, settings, host=args.host, port=args.port)
    return EXIT_OK


def cmd_score(args: argparse.Namespace, home: PlatformHome, settings: Settings) -> int:
    from mlplatform.core.scoring.files import score_file
    from mlplatform.core.scoring.model import load_model

    contract = _contract(home)
    production = _registry(home, settings).production()
    if production is None:
        raise CommandError("no model in production: run the pipeline (mlplatform run) first")
    rules = settings.scoring
    model = load_model(production.onnx_path, production.sha256, rules)
    summary = score_file(
        Path(args.input),
        Path(args.output),
        model,
        production.version,
        rules.chunk_rows,
        contract=contract,
        explain_top_k=settings.serving.explain_top_k if args.explain else 0,
        overwrite=args.overwrite,
        on_progress=lambda rows: _progress(f"scored {rows:,} rows"),
    )
    flagged = (
        f"; {summary.no_tokens} with no token the model reads (no_tokens, unlabelled)"
        if summary.no_tokens
        else ""
    )
    print(f"{summary.rows_out} rows scored by {production.version} -> {summary.output_path}{flagged}")
    return EXIT_OK


# ---- rollout -------------------------------------------------------------------------------------


def _percent_list(text: str) -> list[int]:
    """`--steps 5,25,50,100` as [5, 25, 50, 100] (argparse turns a ValueError into a usage error)."""
    return [int(part) for part in text.split(",") if part.strip()]


def _start_rollout(
    args: argparse.Namespace, home: PlatformHome, settings: Settings, strategy: str, **options
) -> int:
    from mlplatform.core.release.deploy import deployment_lock
    from mlplatform.core.release.rollout import RolloutStrategy, start_rollout

    rules = settings.deployment
    # Never in the middle of a deployment: its smoke test must be answered by the version it deployed.
    with deployment_lock(home, rules.lock_timeout_s):
        rollout = start_rollout(
            _registry(home, settings), RolloutStrategy(strategy), args.version, by=_who(args), **options
        )
    print(f"started: {rollout.describe()} (rollout {rollout.id})")
    return EXIT_OK


def cmd_rollout_shadow(args: argparse.Namespace, home: PlatformHome, settings: Settings) -> int:
    return _start_rollout(args, home, settings, "shadow")


def cmd_rollout_canary(args: argparse.Namespace, home: PlatformHome, settings: Settings) -> int:
    steps = args.steps or list(settings.deployment.canary_steps)
    return _start_rollout(args, home, settings, "canary", percent=args.percent, steps=steps)


def _rollout_status(home: PlatformHome, settings: Settings) -> dict:
    from mlplatform.core.platform.artifacts import ArtifactStore
    from mlplatform.core.release.rollout import current_rollout, latest_round, rollout_events

    registry = _registry(home, settings)
    rollout = current_rollout(registry)
    events = rollout_events(registry.events())
    store = ArtifactStore.from_settings(home, settings.storage)
    if rollout is None:
        return {"rollout": None, "last_event": events[-1] if events else None}
    return {
        "rollout": rollout.to_dict(),
        "candidate_status": registry.get(rollout.candidate).status,
        "judgement": latest_round(store, rollout.id),
        "events": [event for event in events if event.get("rollout") == rollout.id],
    }


def cmd_rollout_status(args: argparse.Namespace, home: PlatformHome, settings: Settings) -> int:
    status = _rollout_status(home, settings)
    if args.json:
        _print_json(status)
        return EXIT_OK
    rollout = status["rollout"]
    if rollout is None:
        last = status["last_event"]
        print("no rollout is running")
        if last is not None:
            print(
                f"last: {last['event']} of {last.get('version')} at {last.get('time')} by {last.get('by')}"
                + (f": {last['reason']}" if last.get("reason") else "")
            )
        return EXIT_OK
    canary = rollout["strategy"] == "canary"
    traffic = (
        f"{rollout['percent']}% to {rollout['candidate']} (step {rollout['step'] + 1} of {len(rollout['steps'])}: "
        f"{' -> '.join(map(str, rollout['steps']))} -> promote)"
        if canary
        else f"0% to {rollout['candidate']}: production answers every request, the candidate scores a copy"
    )
    rows = [
        ["strategy", rollout["strategy"]],
        ["candidate", f"{rollout['candidate']} ({status['candidate_status']})"],
        ["production", rollout["production"]],
        ["traffic", traffic],
        [
            "since",
            f"{rollout['step_started_at']} (this step); started {rollout['started_at']} by {rollout['started_by']}",
        ],
    ]
    judgement = status["judgement"]
    if judgement is None:
        rows.append(["judgement", "none yet (mlplatform run, or the daemon's rollout_sensor)"])
    else:
        rows.append(
            [
                "judgement",
                f"{judgement['judged_at']}: {judgement['after']['action']}: {judgement['after']['reason']}",
            ]
        )
    _table(rows, ["ROLLOUT", rollout["id"]])
    if judgement is not None:
        print()
        _table(
            [
                [
                    outcome["name"],
                    "pass" if outcome["passed"] else outcome["severity"],
                    outcome["description"],
                ]
                for outcome in judgement["outcomes"]
            ],
            ["CHECK", "VERDICT", "DETAIL"],
        )
        numbers = judgement["numbers"]
        print()
        _table([[name, _number_text(value)] for name, value in numbers.items()], ["NUMBER", "VALUE"])
    return EXIT_OK


def _number_text(value) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def cmd_rollout_stop(args: argparse.Namespace, home: PlatformHome, settings: Settings) -> int:
    from mlplatform.core.release.deploy import deployment_lock
    from mlplatform.core.release.rollout import abort_rollout, promote_rollout

    registry = _registry(home, settings)
    if args.promote:
        with deployment_lock(home, settings.deployment.lock_timeout_s):
            ended = promote_rollout(registry, None, by=_who(args), reason=args.reason)
        print(f"promoted {ended.candidate}: production {ended.production} -> {ended.candidate}")
        return EXIT_OK
    ended = abort_rollout(registry, None, by=_who(args), reason=args.reason, automatic=False)
    if ended is None:
        raise CommandError("no rollout is running")
    print(
        f"stopped the {ended.strategy.value} of {ended.candidate}: every request answered by production "
        f"{ended.production}; {ended.candidate} stays registered"
    )
    return EXIT_OK


# ---- dataset --------------------------------------------------------------------------------------


def cmd_dataset_draft(args: argparse.Namespace, home: PlatformHome, settings: Settings) -> int:
    from mlplatform.core.data.draft import draft_contract

    draft = draft_contract(Path(args.file), sample_rows=args.sample_rows)
    sys.stdout.write(draft.text)
    return EXIT_OK


def cmd_dataset_check(args: argparse.Namespace, home: PlatformHome, settings: Settings) -> int:
    from mlplatform.core.data.lake import drop_format
    from mlplatform.core.data.quality import validate_drop

    path = Path(args.file)
    if not path.is_file():
        raise CommandError(f"not a file: {path}")
    contract = _contract(home)
    rules = settings.ingest
    validation = validate_drop(
        path, drop_format(path.name), contract, rules, keep_frame=False, max_listed=args.max_problems
    )
    problems = validation.problems()
    if args.json:
        _print_json([problem.to_dict() for problem in problems])
    elif problems:
        for problem in problems:
            print(f"{path.name}: {problem.check}: {problem.message}")
    else:
        print(
            f"ok: {path.name} matches the contract {contract.fingerprint} "
            f"({validation.rows:,} rows; {', '.join(outcome.name for outcome in validation.checks)} passed)"
        )
    return EXIT_OK if validation.passed else EXIT_BLOCKED


def cmd_dataset_show(args: argparse.Namespace, home: PlatformHome, settings: Settings) -> int:
    from mlplatform.core.data.schema import column_rules, normalised_columns

    contract = _contract(home)
    if args.json:
        _print_json(contract.describe())
        return EXIT_OK
    where = home.dataset_file if home.dataset_file.exists() else "packaged default"
    dataset = f"{contract.format.value}, header" if contract.header else f"{contract.format.value}, no header"
    print(f"contract: {where} (fingerprint {contract.fingerprint})")
    print(f"files: {dataset}; unknown columns: {contract.unknown_columns.value}")
    print(
        f"classes: {', '.join(contract.classes)}"
        + (f" (favourable: {contract.labels.favourable})" if contract.labels.favourable else "")
    )
    print()
    rows = []
    for column in normalised_columns(contract):
        checks = [rule for rule in column_rules(column) if rule != "required"]
        if column.bins:
            checks.append("bins [" + ", ".join(f"{edge:g}" for edge in column.bins) + "]")
        source = "(row position)" if column not in contract.columns else repr(column.source)
        rows.append(
            [
                source,
                column.name,
                column.role.value,
                column.type.value,
                "yes" if column.nullable else "no",
                ", ".join(checks) or "-",
            ]
        )
    _table(rows, ["SOURCE", "NAME", "ROLE", "TYPE", "NULLABLE", "CHECKS"])
    return EXIT_OK


# ---- lineage / artifacts -------------------------------------------------------------------------


def cmd_lineage(args: argparse.Namespace, home: PlatformHome, settings: Settings) -> int:
    from mlplatform.core.monitoring.capture import CaptureError, read_capture
    from mlplatform.core.monitoring.lineage import (
        LineageError,
        asset_lineage,
        prediction_lineage,
        render_lineage_text,
    )
    from mlplatform.core.platform.storage import location_from_settings

    if args.prediction is not None and args.version is not None:
        print("error: --version applies to an asset, not to --prediction", file=sys.stderr)
        return EXIT_USAGE
    try:
        if args.prediction is not None:
            location = location_from_settings(home, settings.storage, "capture")
            capture = read_capture(home.capture, location)
            chain = prediction_lineage(home, settings.storage, args.prediction, capture)
        else:
            chain = asset_lineage(home, settings.storage, args.asset, args.version)
    except (LineageError, CaptureError) as exc:
        raise CommandError(str(exc)) from exc
    if args.json:
        _print_json(chain)
    else:
        sys.stdout.write(render_lineage_text(chain))
    return EXIT_OK


def cmd_artifacts_list(args: argparse.Namespace, home: PlatformHome, settings: Settings) -> int:
    from mlplatform.core.monitoring.lineage import list_artifact_versions
    from mlplatform.core.platform.artifacts import ArtifactError, ArtifactStore

    try:
        versions = list_artifact_versions(ArtifactStore.from_settings(home, settings.storage), args.asset)
    except ArtifactError as exc:
        raise CommandError(str(exc)) from exc
    if args.json:
        _print_json(versions)
        return EXIT_OK
    _table(
        [
            [
                v["version"][:12],
                (v["partition"] or "-")[:12],
                str(v["size"]),
                "-" if v["rows"] is None else str(v["rows"]),
                v["created_at"],
                v["run_id"] or "-",
            ]
            for v in versions
        ],
        ["VERSION", "PARTITION", "SIZE", "ROWS", "CREATED", "RUN"],
    )
    return EXIT_OK


def cmd_artifacts_restore(args: argparse.Namespace, home: PlatformHome, settings: Settings) -> int:
    from mlplatform.core.platform.artifacts import ArtifactError, ArtifactStore

    dest = Path(args.dest)
    if args.dest.endswith(("/", os.sep)):  # a directory by intent: the file keeps its stored name
        dest.mkdir(parents=True, exist_ok=True)
    try:
        store = ArtifactStore.from_settings(home, settings.storage)
        target = store.restore(args.asset, args.version, dest)
    except (ArtifactError, FileExistsError, ValueError) as exc:
        raise CommandError(str(exc)) from exc
    print(target)
    return EXIT_OK


# ---- alerts --------------------------------------------------------------------------------------


def cmd_alerts(args: argparse.Namespace, home: PlatformHome, settings: Settings) -> int:
    from mlplatform.core.monitoring.alerts import FIRING, AlertStore

    alerts = AlertStore.for_home(home).list()
    if not args.all:
        alerts = [alert for alert in alerts if alert.state == FIRING]
    if args.json:
        _print_json([alert.to_dict() for alert in alerts])
        return EXIT_OK
    if not alerts:
        print("no firing alerts" if not args.all else "no alerts")
        return EXIT_OK
    _table(
        [[a.time, a.severity, a.kind, a.source, a.state, a.message.splitlines()[0][:100]] for a in alerts],
        ["TIME", "SEVERITY", "KIND", "SOURCE", "STATE", "MESSAGE"],
    )
    return EXIT_OK


# ---- parser --------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mlplatform", description=__doc__)
    parser.add_argument("--home", help="platform home (default: $MLPLATFORM_HOME or ./.mlplatform)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="process everything pending once (exit 1 when a gate blocked)")
    run.set_defaults(handler=cmd_run, home_use=HomeUse.CREATES, needs_contract=True)

    demo = sub.add_parser("demo", help="land generated sample drops and run the pipeline")
    demo.add_argument("--drops", type=int, default=3)
    demo.add_argument("--rows", type=int, default=1500, help="rows per drop")
    demo.add_argument("--seed", type=int, default=7)
    demo.set_defaults(handler=cmd_demo, home_use=HomeUse.CREATES, needs_contract=True)

    status = sub.add_parser("status", help="drops and the latest version of each asset with its checks")
    status.add_argument("--json", action="store_true")
    status.set_defaults(handler=cmd_status, needs_contract=True)

    ui = sub.add_parser("ui", help="the Dagster UI with its daemon on this home")
    ui.add_argument("--port", type=int, default=3000)
    ui.add_argument("--host", default="127.0.0.1")
    ui.set_defaults(handler=cmd_ui, home_use=HomeUse.CREATES, needs_contract=True)

    lake = sub.add_parser("lake", help="the data lake: land, checkout, audit")
    lake_sub = lake.add_subparsers(dest="lake_command", required=True, metavar="ACTION")
    land = lake_sub.add_parser("land", help="land drops atomically into lake/landing/reviews")
    land.add_argument("files", nargs="+")
    land.set_defaults(handler=cmd_lake_land, home_use=HomeUse.CREATES)
    checkout = lake_sub.add_parser("checkout", help="governed read of a dataset version (recorded)")
    checkout.add_argument("dataset", help="raw_reviews, or an asset such as reviews, review_splits")
    checkout.add_argument("--version")
    checkout.add_argument("--as", dest="reader", required=True, help="who reads")
    checkout.add_argument("--purpose", required=True, help="why")
    checkout.add_argument("--to", help="copy the bytes into this directory")
    checkout.set_defaults(handler=cmd_lake_checkout)
    audit = lake_sub.add_parser("audit", help="the checkout ledger")
    audit.add_argument("--json", action="store_true")
    audit.set_defaults(handler=cmd_lake_audit)
    models = sub.add_parser("models", help="the model registry: list, approve, reject, rollback")
    models_sub = models.add_subparsers(dest="models_command", required=True, metavar="ACTION")
    listing = models_sub.add_parser("list", help="versions, status, metrics and which one serves")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(handler=cmd_models_list)
    approve = models_sub.add_parser("approve", help="approve a version waiting for a person")
    approve.add_argument("version")
    approve.add_argument("--note")
    approve.add_argument("--by", help="who approves (default: $USER)")
    approve.set_defaults(handler=cmd_models_approve)
    reject = models_sub.add_parser("reject", help="reject a version")
    reject.add_argument("version")
    reject.add_argument("--reason", required=True)
    reject.add_argument("--by", help="who rejects (default: $USER)")
    reject.set_defaults(handler=cmd_models_reject)
    rollback = models_sub.add_parser("rollback", help="move production back to the previous approved version")
    rollback.add_argument("--reason", default="manual rollback")
    rollback.add_argument("--by", help="who rolls back (default: $USER)")
    rollback.set_defaults(handler=cmd_models_rollback)

    rebuild = models_sub.add_parser(
        "rebuild",
        help="refit a version from its recorded data and code versions; exit 1 unless byte-identical",
    )
    rebuild.add_argument("version")
    rebuild.set_defaults(handler=cmd_models_rebuild)

    serve = sub.add_parser("serve", help="the real-time endpoint (serves the production model, hot swap)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8080)
    serve.set_defaults(handler=cmd_serve, home_use=HomeUse.CREATES_IN_EMPTY_DIRECTORY, needs_contract=True)

    dataset = sub.add_parser("dataset", help="the home's dataset contract: draft, check, show")
    dataset_sub = dataset.add_subparsers(dest="dataset_command", required=True, metavar="ACTION")
    draft = dataset_sub.add_parser("draft", help="print a draft contract inferred from a file, to edit")
    draft.add_argument("file")
    draft.add_argument("--sample-rows", type=int, default=100_000, help="rows the guesses look at")
    draft.set_defaults(handler=cmd_dataset_draft, home_use=HomeUse.NONE)
    check = dataset_sub.add_parser(
        "check", help="validate a file against the home's contract without landing it (exit 1: problems)"
    )
    check.add_argument("file")
    check.add_argument("--json", action="store_true", help="a JSON list of problems")
    check.add_argument("--max-problems", type=int, default=50, help="problems listed (all are counted)")
    check.set_defaults(handler=cmd_dataset_check, needs_contract=True)
    show = dataset_sub.add_parser("show", help="the home's dataset contract: columns, roles, checks, classes")
    show.add_argument("--json", action="store_true")
    show.set_defaults(handler=cmd_dataset_show, needs_contract=True)

    score = sub.add_parser("score", help="batch-score a file (contract layout, or a `text` column)")
    score.add_argument("input")
    score.add_argument("output", help="CSV or Parquet, by extension")
    score.add_argument(
        "--explain",
        action="store_true",
        help="add an `explanation` column: the [serving] explain_top_k n-grams that pushed each prediction most",
    )
    score.add_argument(
        "--overwrite", action="store_true", help="replace OUTPUT if it exists (refused otherwise)"
    )
    score.set_defaults(handler=cmd_score, needs_contract=True)

    rollout = sub.add_parser(
        "rollout", help="try a version on live traffic first: shadow, canary, status, stop"
    )
    rollout_sub = rollout.add_subparsers(dest="rollout_command", required=True, metavar="ACTION")
    shadow = rollout_sub.add_parser(
        "shadow", help="score every request with VERSION too, beside production's answer (never returned)"
    )
    shadow.add_argument("version", help="any registered version that is not Rejected")
    shadow.add_argument("--by", help="who starts it (default: $USER)")
    shadow.set_defaults(handler=cmd_rollout_shadow)
    canary = rollout_sub.add_parser(
        "canary", help="answer a share of requests with VERSION, step by step up to promotion"
    )
    canary.add_argument("version", help="an Approved version")
    canary.add_argument(
        "--percent", type=int, help="share of requests to start with, 1-99 (default: the first of the steps)"
    )
    canary.add_argument(
        "--steps",
        type=_percent_list,
        metavar="P,P,...",
        help="percents to advance through, 100 = promote (default: [deployment] canary_steps)",
    )
    canary.add_argument("--by", help="who starts it (default: $USER)")
    canary.set_defaults(handler=cmd_rollout_canary)
    rollout_status = rollout_sub.add_parser(
        "status",
        help="the running rollout: versions, share, since when, the latest judgement with its numbers",
    )
    rollout_status.add_argument("--json", action="store_true")
    rollout_status.set_defaults(handler=cmd_rollout_status)
    stop = rollout_sub.add_parser("stop", help="end the running rollout: traffic back to production")
    stop.add_argument(
        "--promote", action="store_true", help="promote the candidate instead (it must be Approved)"
    )
    stop.add_argument("--reason", default="stopped by hand", help="recorded in the registry's event")
    stop.add_argument("--by", help="who stops it (default: $USER)")
    stop.set_defaults(handler=cmd_rollout_stop)

    lineage = sub.add_parser("lineage", help="trace a prediction or an asset version back to drops and code")
    target = lineage.add_mutually_exclusive_group(required=True)
    target.add_argument("asset", nargs="?", help="an asset key, e.g. reviews, best_model, raw_reviews")
    target.add_argument(
        "--prediction",
        metavar="REQUEST_ID",
        help="a request id the endpoint answered, or its capture id (X-Capture-ID) when the id was reused",
    )
    lineage.add_argument("--version", help="asset version: sha256 or unique prefix (default: latest)")
    lineage.add_argument("--json", action="store_true")
    lineage.set_defaults(handler=cmd_lineage)

    artifacts = sub.add_parser("artifacts", help="stored asset versions: list, restore")
    artifacts_sub = artifacts.add_subparsers(dest="artifacts_command", required=True, metavar="ACTION")
    versions = artifacts_sub.add_parser("list", help="every stored version of an asset, oldest first")
    versions.add_argument("asset")
    versions.add_argument("--json", action="store_true")
    versions.set_defaults(handler=cmd_artifacts_list)
    restore = artifacts_sub.add_parser("restore", help="copy a version out byte for byte, hash verified")
    restore.add_argument("asset")
    restore.add_argument("version", help="sha256 or unique prefix (at least 8 hex characters)")
    restore.add_argument("dest", help="a directory (existing, or ending in /) or a file path")
    restore.set_defaults(handler=cmd_artifacts_restore)

    alerts = sub.add_parser("alerts", help="alerts raised by checks, failed runs and rollbacks (firing)")
    alerts.add_argument("--json", action="store_true")
    alerts.add_argument("--all", action="store_true", help="resolved alerts too, oldest first")
    alerts.set_defaults(handler=cmd_alerts)
    _document_commands(parser)
    return parser


EXIT_CODES = "exit codes: 0 done; 1 refused or failed (one line on stderr); 2 usage error; 130 interrupted"
# Per command: (exit codes when they say more than EXIT_CODES, an example). Tested: every example parses.
COMMAND_HELP: dict[str, tuple[str | None, str]] = {
    "run": (
        "exit codes: 0 every gate passed; 1 a gate blocked or a step failed (the reason on stdout); "
        "2 usage error; 130 interrupted",
        "mlplatform run",
    ),
    "demo": (
        "exit codes: 0 every gate passed; 1 a gate blocked (as `run`); 2 usage error; 130 interrupted",
        "mlplatform --home /tmp/demo-home demo --drops 2 --rows 800",
    ),
    "status": (None, "mlplatform status --json"),
    "ui": (None, "mlplatform ui --port 3000"),
    "lake": (None, "mlplatform lake land reviews-2024-06.csv"),
    "lake land": (None, "mlplatform lake land reviews-2024-06.csv reviews-2024-07.csv"),
    "lake checkout": (
        None,
        "mlplatform lake checkout review_splits --as analyst --purpose 'error analysis' --to ./out",
    ),
    "lake audit": (None, "mlplatform lake audit --json"),
    "models": (None, "mlplatform models list"),
    "models list": (None, "mlplatform models list --json"),
    "models approve": (None, "mlplatform models approve v3 --note 'model card read'"),
    "models reject": (None, "mlplatform models reject v3 --reason 'misses sarcasm'"),
    "models rollback": (None, "mlplatform models rollback --reason 'complaints about v4'"),
    "models rebuild": (
        "exit codes: 0 rebuilt byte-identical; 1 different, or refused; 2 usage error; 130 interrupted",
        "mlplatform models rebuild v2",
    ),
    "rollout": (None, "mlplatform rollout status"),
    "rollout shadow": (
        "exit codes: 0 started; 1 refused (unknown, Rejected or production version, other classes than "
        "production, a rollout running; one line, nothing changed); 2 usage error; 130 interrupted",
        "mlplatform rollout shadow v5",
    ),
    "rollout canary": (
        "exit codes: 0 started; 1 refused (a version that is not Approved, --percent outside 1-99, a rollout "
        "running, ...; one line, nothing changed); 2 usage error; 130 interrupted",
        "mlplatform rollout canary v5 --percent 5 --steps 5,25,50,100",
    ),
    "rollout status": (None, "mlplatform rollout status --json"),
    "rollout stop": (
        "exit codes: 0 stopped (or promoted); 1 no rollout running, or --promote refused (the candidate is "
        "not Approved, production moved); 2 usage error; 130 interrupted",
        "mlplatform rollout stop --promote --reason 'a week of agreement'",
    ),
    "serve": (None, "mlplatform serve --host 0.0.0.0 --port 8080"),
    "score": (None, "mlplatform score reviews.csv scored.parquet --explain --overwrite"),
    "lineage": (None, "mlplatform lineage --prediction 5f0c1e2a-request-id"),
    "artifacts": (None, "mlplatform artifacts list reviews"),
    "artifacts list": (None, "mlplatform artifacts list review_splits --json"),
    "artifacts restore": (None, "mlplatform artifacts restore reviews 3f2a9c1b ./restored/"),
    "alerts": (None, "mlplatform alerts --all"),
    "dataset": (None, "mlplatform dataset show"),
    "dataset draft": (None, "mlplatform dataset draft exports/reviews.tsv --sample-rows 5000"),
    "dataset check": (
        "exit codes: 0 the file matches the contract; 1 it does not (one line per problem) or refused; "
        "2 usage error; 130 interrupted",
        "mlplatform dataset check exports/reviews-2024-08.tsv --json",
    ),
    "dataset show": (None, "mlplatform dataset show --json"),
}


def _document_commands(parser: argparse.ArgumentParser, path: str = "") -> None:
    """Give every command's --help its defaults, exit codes and an example (COMMAND_HELP)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, command in action.choices.items():
                full = f"{path} {name}".strip()
                exit_codes, example = COMMAND_HELP[full]
                command.formatter_class = argparse.RawDescriptionHelpFormatter
                command.epilog = f"{exit_codes or EXIT_CODES}\n\nexample:\n  {example}"
                if command.description is None:
                    command.description = _listed_help(action, name)
                _document_commands(command, full)
        elif action.default not in (None, False, argparse.SUPPRESS) and "%(default)" not in (
            action.help or ""
        ):
            action.help = f"{action.help} (default: %(default)s)" if action.help else "default: %(default)s"


def _listed_help(subparsers: argparse._SubParsersAction, name: str) -> str | None:
    return next((choice.help for choice in subparsers._choices_actions if choice.dest == name), None)


def main(argv: Sequence[str] | None = None) -> int:
    silence_dagster_stability_warnings()
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse already printed the usage line
        return EXIT_USAGE if exc.code else EXIT_OK
    home = PlatformHome.at(Path(args.home).resolve()) if args.home else PlatformHome.from_env()
    use = getattr(args, "home_use", HomeUse.NEEDS)
    settings: Settings | None = None
    try:
        _check_home(home, use)
        # Loaded and validated once, here: a bad setting is refused in one line before anything runs.
        # A command that reads no home runs by the packaged settings.
        settings = Settings.packaged() if use is HomeUse.NONE else Settings.load(home.settings_file)
        if getattr(args, "needs_contract", False):
            _contract(home)  # a malformed contract is refused in one line, before anything runs
        return args.handler(args, home, settings)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        storage = settings.storage if settings is not None else None
        print(f"error: {one_line(exc, home.root / 'logs', secrets_of(home, storage))}", file=sys.stderr)
        return EXIT_BLOCKED


if __name__ == "__main__":
    sys.exit(main())
