"""A method of your own that wraps a built-in loss: NPO on length-normalised log-likelihoods.

Every built-in loss is a plain function of tensors (``FORGET_LOSSES.get("npo").fn``), so a new method can call
it. This one divides each answer's log-likelihood, and the reference's, by the answer's length before NPO's
comparison, so long answers do not dominate the batch. Its argument names say what it needs from the engine;
registering it makes it a method name for the CLI and the API alike.

Runs offline in about ten seconds on a CPU: python examples/wrap_npo.py [OUT_DIR]
"""
import sys
from pathlib import Path

import lethe
from lethe.api import finetune_tiny
from lethe.data.synthetic import generate_authors
from lethe.objectives import FORGET_LOSSES

npo = FORGET_LOSSES.get("npo").fn


@FORGET_LOSSES.register("npo-per-token", unit="sequence")
def npo_per_token(forget_seq_logp, ref_forget_seq_logp, forget_lengths, *, beta: float = 0.1):
    """NPO on per-token log-likelihoods: both sides divided by the answer's token count."""
    lengths = forget_lengths.to(forget_seq_logp.dtype).clamp(min=1.0)
    return npo(forget_seq_logp / lengths, ref_forget_seq_logp / lengths, beta=beta)


def main(out: Path) -> None:
    authors = generate_authors("smoke", seed=0)
    forget, retain = authors.forget(10), authors.retain(10)
    finetune_tiny("test", authors.full, train=lethe.TrainConfig(epochs=20, lr=3e-3), out_dir=out / "target",
                  progress=False)
    evaluation = lethe.EvalConfig(sets=[lethe.EvalSet("forget", forget, "qa", role="forget")], max_new_tokens=8)
    _, run = lethe.unlearn(out / "target", forget, retain, method="NPO-PER-TOKEN(beta=0.5)+GD", out_dir=out / "run",
                           train=lethe.TrainConfig(epochs=3, lr=1e-3, batch_size=4), evaluation=evaluation,
                           progress=False)
    before, after = run.epochs[0]["metrics"], run.epochs[-1]["metrics"]
    print(f"{run.method}: forget P {before['forget/P']:.4f} -> {after['forget/P']:.4f}, "
          f"options {run.config['forget_options']}")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "runs/wrap_npo"))
