"""Non-finite logits stop a decode: a NaN or an infinity in the model's output is a broken model (a NaN weight,
activations that overflow), never an answer to print.

The check costs no host read per token: the prefill's logits are read once (most broken models fail there, before
a token is shown); each step adds ``0 * max(logits)`` into a per-row accumulator on the device (one fused op:
0 * NaN and 0 * inf are NaN, 0 * a finite number is 0), which the loops read every ``CHECK_EVERY`` steps and at the
end. On the refusal path the model runs once more on the first input with a hook on every module, to name the
tensor where the values first went non-finite.
"""
from __future__ import annotations

import torch

CHECK_EVERY = 32  # steps between reads of the accumulator (a broken run stops within this many tokens)


class FiniteWatch:
    """Accumulates, without host reads, whether any row's logits were non-finite."""

    def __init__(self, rows: int, device):
        self.acc = torch.zeros(rows, device=device)  # (N,) 0 while every value seen was finite, else NaN
        self._zero = torch.zeros(rows, device=device)

    def add(self, values: torch.Tensor) -> None:
        """values: (N,) one number per row that is non-finite when that row's logits are (their max)."""
        self.acc.addcmul_(values, self._zero)

    def check(self, run, step: int | None = None, *, due: bool = True) -> None:
        """Raise (``refuse``) when a non-finite value was seen; ``due``: read now (else wait for the next read)."""
        if due and bool(self.acc.isnan().any()):
            refuse(run, step)


def check_prefill(run) -> None:
    """The prompt's logits (one host read per run)."""
    if not bool(torch.isfinite(run.logits).all()):
        refuse(run, None)


def refuse(run, step: int | None):
    """ValueError naming where the model's values first went non-finite."""
    when = "after the prompt" if step is None else f"by generated token {step + 1}"
    raise ValueError(f"decoding stopped: the model's logits are not finite (NaN or infinity) {when}; "
                     f"{culprit(run.model, run.decoding, run.inputs)}")


def culprit(model, decoding, inputs) -> str:
    """Where a model's values first go non-finite: a weight or buffer that holds NaN or infinity, else the first
    module (in the order modules finish, so the innermost) whose output does on the first input."""
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            bad = int((~torch.isfinite(t)).sum())
            return f"the weight {name!r} holds {bad} non-finite value(s)"
    largest = max(((float(t.detach().abs().max()), n) for n, t in model.named_parameters()
                   if t.is_floating_point() and t.numel()), default=(0.0, None))
    found = _first_nonfinite_output(model, decoding, inputs)
    scale = f"; every weight is finite, the largest |w| is {largest[0]:.3g} in {largest[1]!r}" if largest[1] else ""
    if found is None:
        return "no module's output was non-finite on the first input when run again" + scale
    name, kind = found
    return f"the first non-finite output is {name!r} ({kind}) on the first input" + scale


def _first_nonfinite_output(model, decoding, inputs) -> tuple[str, str] | None:
    ids, mask = inputs
    row = ids[0] if mask is None else ids[0][mask[0].bool()]
    seen: list[tuple[str, str]] = []

    def hook(module, args, output, _name=""):
        if not seen and _has_nonfinite(output):
            seen.append((_name or "the model", type(module).__name__))

    handles = [m.register_forward_hook(lambda mod, a, out, _name=n: hook(mod, a, out, _name))
               for n, m in model.named_modules()]
    try:
        with torch.inference_mode():
            decoding.teacher_forced(model, row.tolist(), [0])
    except NotImplementedError:
        return None
    finally:
        for h in handles:
            h.remove()
    return seen[0] if seen else None


def _has_nonfinite(x) -> bool:
    if isinstance(x, torch.Tensor):
        return x.is_floating_point() and not bool(torch.isfinite(x).all())
    if isinstance(x, (tuple, list)):
        return any(_has_nonfinite(v) for v in x)
    return False
