"""`mlplatform run` shows each step with its elapsed time: plain lines when no terminal reads them, and a
bar with the running step on a terminal; every command's --help gives defaults, exit codes, an example."""

from __future__ import annotations

import argparse
import io
import re
import shlex

import pytest

from mlplatform.cli import COMMAND_HELP, StepBar, StepLines, build_parser, main, step_progress
from mlplatform.core.data.synthetic import write_demo_drops
from mlplatform.defs.progress import StepProgress, StepState
from mlplatform.runner import run_pending
from mlplatform_tests.defs.execution_support import write_execution_settings

pytestmark = pytest.mark.filterwarnings("ignore")
STEP_LINE = re.compile(
    r"^  (?P<step>\S+): (?P<outcome>ok in|FAILED after) \d+\.\d s \((?P<done>\d+)/(?P<total>\d+)\)$"
)


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_run_prints_a_plain_line_per_step_when_no_terminal_reads_it(capsys, home, tmp_path):
    files = write_demo_drops(tmp_path / "drops", n_drops=1, rows_per_drop=600, seed=5)
    assert main(["--home", str(home.root), "lake", "land", str(files[0])]) == 0
    capsys.readouterr()

    main(["--home", str(home.root), "run"])
    err = capsys.readouterr().err
    assert "\r" not in err and "\x1b" not in err
    steps = [match.groupdict() for match in map(STEP_LINE.match, err.splitlines()) if match]
    names = [step["step"] for step in steps]
    assert names[0] == "raw_reviews" and {"reviews", "review_splits", "best_model"} <= set(names)
    assert any(name.startswith("candidate_models/") for name in names)  # asset names, not step keys
    downstream = steps[1:]
    assert [int(step["done"]) for step in downstream] == list(range(1, len(downstream) + 1))
    assert {step["total"] for step in downstream} == {str(len(downstream))}


def test_steps_in_their_own_processes_are_reported_too(home, tmp_path):
    write_execution_settings(home, executor="multiprocess", max_concurrent=2)
    from mlplatform.core.data.lake import Lake

    Lake(home).land(write_demo_drops(tmp_path / "drops", n_drops=1, rows_per_drop=400, seed=5))
    events: list[StepProgress] = []
    assert run_pending(home, say=lambda _: None, groups=["features"], on_step=events.append).exit_code == 0
    finished = [(event.step, event.state) for event in events if event.state.finished]
    assert finished == [
        ("raw_reviews", StepState.SUCCEEDED),
        ("reviews", StepState.SUCCEEDED),
        ("review_splits", StepState.SUCCEEDED),
    ]


def test_on_a_terminal_a_bar_shows_the_running_step_and_its_time():
    terminal = Terminal()
    progress = step_progress(terminal)
    assert isinstance(progress, StepBar) and isinstance(step_progress(io.StringIO()), StepLines)
    progress.say("materializing reviews, review_splits")
    progress.step(StepProgress("reviews", StepState.STARTED, 0.0, 0, 2))
    progress.step(StepProgress("reviews", StepState.RUNNING, 12.34, 0, 2))
    progress.step(StepProgress("reviews", StepState.SUCCEEDED, 12.5, 1, 2))
    progress.step(StepProgress("review_splits", StepState.RUNNING, 3.0, 1, 2))
    progress.close()
    out = terminal.getvalue()
    assert "\r\x1b[K[" + "." * 24 + "] 0/2  reviews  12.3 s" in out
    assert "\r\x1b[K  reviews: ok in 12.5 s (1/2)\n" in out  # the bar makes way for the step's line
    assert "[" + "#" * 12 + "." * 12 + "] 1/2  review_splits  3.0 s" in out
    assert out.endswith("\r\x1b[K")  # closed: no bar left behind


def _commands(parser: argparse.ArgumentParser, path: str = ""):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, command in action.choices.items():
                full = f"{path} {name}".strip()
                yield full, command
                yield from _commands(command, full)


def test_every_command_help_gives_defaults_exit_codes_and_an_example_that_parses():
    parser = build_parser()
    commands = dict(_commands(parser))
    assert set(commands) == set(COMMAND_HELP)
    for name, command in commands.items():
        text = command.format_help()
        assert "exit codes: 0 " in text and "2 usage error" in text, name
        example = COMMAND_HELP[name][1]
        assert f"example:\n  {example}" in text, name
        parser.parse_args(shlex.split(example)[1:])  # a usage error would exit
        for action in command._actions:
            if action.default not in (None, False, argparse.SUPPRESS):
                assert f"default: {action.default}" in text, (name, action.dest)
    assert "exit codes: 0 every gate passed; 1 a gate blocked" in commands["run"].format_help()


def test_help_is_printed_and_exits_0(capsys):
    assert main(["serve", "--help"]) == 0
    out = capsys.readouterr().out
    assert "--port PORT" in out and "default: 8080" in out and "mlplatform serve --host" in out
