"""Learning-rate schedule of the papers: linear warm-up over the first epoch, then linear decay."""


def lr_factor(step: int, warmup_steps: int, total_steps: int, schedule: str = "linear") -> float:
    """Multiplier on the base LR for optimizer step ``step`` (0-based).

    Rises linearly to 1 over ``warmup_steps``; then ``linear`` falls linearly to 0 at
    ``total_steps`` and ``constant`` stays at 1 (the IHL seed's fixed LR for memorized data).
    """
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant" or total_steps <= 0:
        return 1.0
    remaining = total_steps - warmup_steps
    if remaining <= 0:
        return 1.0
    return max(0.0, (total_steps - step) / remaining)
