"""The prepared GPU check runs end to end here in its CPU mode, so its first GPU run is never its first run."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_check_runs_end_to_end_on_cpu(tmp_path):
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--device", "cpu", "--tiny",
                           "--out", str(tmp_path), "--budget-s", "150"], capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    record = json.loads((tmp_path / "gpu_check.json").read_text())
    assert {k: v["status"] for k, v in record["results"].items()} == dict.fromkeys(
        ("env", "tests", "train", "generation", "science"), "ok")
    train = record["results"]["train"]
    assert not train["failures"] and len(train["rows"]) == 12
    assert all(r["tokens_per_s"] > 0 and r["peak_memory_gib"] > 0 for r in train["rows"])
    assert {(r["params"], r["gradient_checkpointing"]) for r in train["rows"]} == {
        ("full", False), ("lora", False), ("fila", False), ("full", True)}
    assert record["results"]["science"]["finished"] and record["results"]["science"]["runs"]
    md = (tmp_path / "gpu_check.md").read_text()
    assert "| train | ok |" in md and "tokens/s" in md


def test_wheel_script_names_what_the_gpu_machine_lacks():
    """The packages Lethe imports that the GPU machine's image does not hold are fetched (the list is in the
    device notes); pure-Python wheels built here for rouge-score, which ships only a source archive."""
    script = (REPO / "benchmarks" / "gpu" / "fetch_wheels.sh").read_text()
    for name in ("datasets==", "dill==", "multiprocess==", "nltk==", "rouge-score=="):
        assert name in script
