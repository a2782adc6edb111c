"""scripts/gpu_check.sh --dry-run: the GPU check's own steps on this CPU (test preset, tiny
sizes), so the one-call script that a GPU lease runs cannot rot between leases."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu_check.sh"


@pytest.mark.slow
def test_dry_run_installs_nothing_runs_the_gpu_tests_and_the_whole_grid(tmp_path):
    env = dict(os.environ, OUT=str(tmp_path), TMPDIR=str(tmp_path), PYTHON=sys.executable)  # the tests' Python
    result = subprocess.run(["bash", str(SCRIPT), "--dry-run"], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=900, check=False)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    log = (tmp_path / "gpu_check.log").read_text()
    for module in ("sam2", "hydra", "omegaconf", "antlr4", "iopath", "py_sod_metrics"):
        assert f"'s module {module}" in log and "present" in log  # the venv has them: nothing installed
    assert "installing" not in log
    pytest_log = (tmp_path / "pytest.log").read_text()
    assert " skipped" in pytest_log and "failed" not in pytest_log.splitlines()[-1]  # no GPU here: all skipped
    grid = json.loads((tmp_path / "bench_matrix.json").read_text())
    names = [run["name"] for run in grid["runs"]]
    assert len(names) == 12 and all(run["status"] == "ok" for run in grid["runs"]), names
    assert {"zero_shot-64-fp32", "learned-64-fp16-graphs", "learned-64-bf16"} <= set(names)
    report = next(run["report"] for run in grid["runs"] if run["name"] == "learned-64-fp16")
    assert report["config"]["peer_precision"] == "bf16" and report["parity"]["frames"] == 2
    table = (tmp_path / "bench_matrix.md").read_text()
    assert table.startswith("| mode | size | precision | graphs |") and len(table.strip().splitlines()) == 14
    assert table in log.replace("\r", "")  # the table is printed, not only written


def test_help_and_a_wrong_argument():
    help_text = subprocess.run(["bash", str(SCRIPT), "--help"], capture_output=True, text=True, check=True).stdout
    assert "--dry-run" in help_text and "carry=[\".whl\"]" in help_text
    wrong = subprocess.run(["bash", str(SCRIPT), "--fast"], capture_output=True, text=True, check=False)
    assert wrong.returncode == 2 and "unknown argument --fast" in wrong.stderr
