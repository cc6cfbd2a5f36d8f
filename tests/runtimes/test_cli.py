"""Exit statuses: what run_cli makes of each outcome, and the one table that documents them."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from converters.errors import CheckpointError, ExportError
from runtimes import cli
from runtimes.errors import ModelSpecError, ParityError, first_line

README = Path(__file__).resolve().parents[2] / "README.md"


def _raise(exc: BaseException):
    def main():
        raise exc

    return main


@pytest.mark.parametrize(
    "main, status",
    [
        (lambda: None, 0),
        (lambda: cli.EXIT_FAILED, 1),
        (_raise(ModelSpecError("no spec")), 2),
        (_raise(CheckpointError("corrupt")), 2),
        (_raise(ExportError("bad labels")), 2),
        (_raise(ParityError("disagrees")), 3),
        (_raise(KeyboardInterrupt()), 130),
    ],
)
def test_run_cli_exit_status(main, status, capsys):
    with pytest.raises(SystemExit) as info:
        cli.run_cli(main)
    assert info.value.code == status
    stderr = capsys.readouterr().err
    assert stderr.count("\n") == (0 if status < 2 else 1), stderr


def test_every_exit_constant_is_in_the_readme_table_and_the_docstring():
    constants = {name: value for name, value in vars(cli).items() if name.startswith("EXIT_")}
    assert len(constants) == 6
    rows = dict(re.findall(r"^\| (\d+) \|\s*`?(\w*)`?\s*\|", README.read_text(), flags=re.M))
    assert rows == {"0": "", **{str(value): name for name, value in constants.items()}}
    for name, value in constants.items():
        assert re.search(rf"^    {value} +{name} ", cli.__doc__, flags=re.M), name


@pytest.mark.parametrize(
    "exc, line",
    [
        (RuntimeError("\n  [ONNXRuntimeError] : 1 : FAIL : Load model failed\nstack frame 1\n"), "[ONNXRuntimeError] : 1 : FAIL : Load model failed"),
        (RuntimeError("Exception from src/inference/src/cpp/core.cpp:84:\nException from src/frontends/onnx/frontend.cpp:12:\nunexpected op Foo\n"), "unexpected op Foo"),
        (RuntimeError("Exception from src/core.cpp:84:\n"), "Exception from src/core.cpp:84:"),
        (EOFError(), "EOFError"),
    ],
)
def test_first_line_of_a_library_exception(exc, line):
    assert first_line(exc) == line
