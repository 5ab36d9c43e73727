"""The README's promises a newcomer copies: the minimal job file validates, and the install
commands install this checkout (never a package of the same name from an index)."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from pipeline.cli import main

README = Path(__file__).resolve().parents[1] / "README.md"


def minimal_job() -> str:
    text = README.read_text(encoding="utf-8")
    match = re.search(r"<!-- minimal job: tests/test_readme.py validates it -->\s*"
                      r"```yaml\n(.*?)```", text, flags=re.S)
    assert match, "README.md lost its minimal job (the block after the marker comment)"
    return match.group(1)


def test_minimal_job_is_five_lines_and_valid(tmp_path: Path, capsys) -> None:
    job = minimal_job()
    assert len(job.strip().splitlines()) <= 5
    assert {"name", "data", "output"} <= set(yaml.safe_load(job))
    path = tmp_path / "job.yaml"
    path.write_text(job, encoding="utf-8")
    assert main(["config", "validate", str(path)]) == 0
    assert f"{path}: valid" in capsys.readouterr().out


def test_minimal_job_refuses_a_typo(tmp_path: Path, capsys) -> None:
    """The validation above can fail: the same job with one key misspelt does."""
    path = tmp_path / "job.yaml"
    path.write_text(minimal_job().replace("target:", "targt:"), encoding="utf-8")
    assert main(["config", "validate", str(path)]) != 0
    assert "targt" in capsys.readouterr().err


def test_install_commands_use_the_checkout() -> None:
    text = README.read_text(encoding="utf-8")
    commands = re.findall(r"pip install [^\n`]*", text)
    assert any(c.startswith("pip install -e '.[gcs]'") for c in commands)
    # every pip install names the checkout ("-e ." with extras), never an index package
    offenders = [c for c in commands if not re.match(r"pip install -e '?\.", c)]
    assert not offenders, offenders
    for package in ("pipeline", "kernels", "cluster"):
        assert f"`{package}`" in text
