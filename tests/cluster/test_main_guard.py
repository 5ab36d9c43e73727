"""A script that calls mlpipe at its top level, without ``if __name__ == "__main__":``, fails
at once with what to add (issue 19): the local cluster's worker processes would import the
script again and start the job again, and the script would hang."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
CALL = """\
import cluster
with cluster.connect({"n_workers": 1, "threads_per_worker": 1}) as client:
    print("answer", client.submit(sum, [20, 22]).result())
"""


def _script(tmp_path: Path, body: str) -> subprocess.CompletedProcess:
    path = tmp_path / "job_script.py"
    path.write_text(body)
    return subprocess.run([sys.executable, str(path)], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120, env={**__import__("os").environ,
                                                       "PYTHONPATH": str(ROOT)})


def test_an_unguarded_script_is_refused_before_any_process_starts(tmp_path: Path) -> None:
    done = _script(tmp_path, "x = 1\n" + CALL)
    assert done.returncode != 0
    assert "job_script.py, line 3, starts mlpipe at the script's top level" in done.stderr
    assert 'if __name__ == "__main__":' in done.stderr
    assert "answer" not in done.stdout


@pytest.mark.parametrize("guarded", [
    'if __name__ == "__main__":\n' + textwrap.indent(CALL, "    "),
    "def main():\n" + textwrap.indent(CALL, "    ") + '\nif "__main__" == __name__:\n    main()\n',
])
def test_a_guarded_script_runs(tmp_path: Path, guarded: str) -> None:
    done = _script(tmp_path, guarded)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "answer 42" in done.stdout
