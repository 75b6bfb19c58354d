"""Learning-rate schedule of the papers: linear warm-up over the first epoch, then linear decay."""


def lr_factor(step: int, warmup_steps: int, total_steps: int) -> float:
    """Multiplier on the base LR for optimizer step ``step`` (0-based).

    Rises linearly to 1 over ``warmup_steps``, then falls linearly to 0 at ``total_steps``.
    """
    if total_steps <= 0:
        return 1.0
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    remaining = total_steps - warmup_steps
    if remaining <= 0:
        return 1.0
    return max(0.0, (total_steps - step) / remaining)
