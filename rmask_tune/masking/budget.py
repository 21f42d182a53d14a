"""Turn a ratio of the whole model (the paper's "Params" column) into per-matrix trainable counts."""

from __future__ import annotations

from rmask_tune.errors import RmaskError


def allocate_counts(shapes: dict[str, tuple[int, int]], total: int, unit_of: dict[str, int]) -> dict[str, int]:
    """Split ``total`` trainable entries over matrices in proportion to their size (largest remainder).

    ``unit_of[name]`` is the granularity (1 for entries, the row count for whole columns); the sum of
    the returned counts is within half a unit of ``total``.
    """
    sizes = {n: r * c for n, (r, c) in shapes.items()}
    capacity = sum(sizes.values())
    units_total = {n: sizes[n] // unit_of[n] for n in shapes}
    share = {n: total * sizes[n] / capacity / unit_of[n] for n in shapes}
    units = {n: min(int(share[n]), units_total[n]) for n in shapes}
    remaining = total - sum(units[n] * unit_of[n] for n in shapes)
    for n in sorted(shapes, key=lambda n: share[n] - units[n], reverse=True):
        if remaining < unit_of[n] / 2:
            continue
        if units[n] < units_total[n]:
            units[n] += 1
            remaining -= unit_of[n]
    return {n: units[n] * unit_of[n] for n in shapes}


def check_ratio(ratio: float, total_params: int, target_params: int) -> int:
    """The number of trainable entries that ``ratio`` asks for; a clear error if it cannot be held."""
    if not 0 < ratio <= 1:
        raise RmaskError(f"ratio must be in (0, 1] (a fraction of all model parameters), got {ratio}")
    wanted = round(ratio * total_params)
    if wanted < 1:
        raise RmaskError(f"ratio {ratio} of {total_params} parameters is less than one trainable parameter")
    if wanted > target_params:
        raise RmaskError(
            f"ratio {ratio} asks for {wanted} trainable parameters but the target matrices hold only "
            f"{target_params} (largest possible ratio {target_params / total_params:.4g}); widen the targets"
        )
    return wanted
