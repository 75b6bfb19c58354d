"""Every script in examples/ runs as its docstring says (into a temporary output directory)."""
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = sorted((Path(__file__).resolve().parents[1] / "examples").glob("*.py"))


def test_there_are_examples():
    assert EXAMPLES


@pytest.mark.parametrize("script", EXAMPLES, ids=lambda p: p.name)
def test_example_runs(script, tmp_path):
    done = subprocess.run([sys.executable, str(script), str(tmp_path / "out")], cwd=tmp_path, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip(), "an example says what it did"


def test_the_wrapped_npo_is_npo_on_per_token_log_likelihoods():
    import importlib.util

    import torch

    from lethe.objectives import FORGET_LOSSES

    spec = importlib.util.spec_from_file_location("wrap_npo", EXAMPLES[0].parent / "wrap_npo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    seq, ref, lengths = torch.tensor([-12.0, -3.0]), torch.tensor([-10.0, -4.0]), torch.tensor([6, 2])
    got = module.npo_per_token(seq, ref, lengths, beta=0.5)
    want = FORGET_LOSSES.get("npo").fn(seq / lengths, ref / lengths, beta=0.5)
    assert float(got) == float(want)
