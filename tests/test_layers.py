"""The layers contract (DESIGN.md principle 11): ``[tool.importlinter]`` in pyproject.toml, checked by
import-linter (the ``dev`` extra). ``make test`` runs ``lint-imports`` too; this test runs it on the code
being tested, so an upward import fails the suite wherever the suite runs."""

from pathlib import Path

from importlinter.cli import lint_imports

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def test_layers_point_down(capsys):
    code = lint_imports(config_filename=str(PYPROJECT), no_cache=True, no_logo=True)
    assert code == 0, capsys.readouterr().out
