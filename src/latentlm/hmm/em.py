"""EM as a torch optimizer, so that EM training runs on the shared engine (checkpoints, exact resume,
logging, progress and DDP come with it).

The dense HMM keeps normalised log-probability tables; with ``count_gradients`` on, the gradient of
``−Σ log P(O)`` with respect to each table is minus its posterior expected counts (the forward–backward
E-step, :mod:`latentlm.hmm.forward`). :class:`EM` reads those counts from ``.grad`` and does the M-step:

* running statistics ``μ ← (1 − η_k) μ + η_k · counts`` with ``η_k = (k + 2) ** −step_decay``
  (stepwise EM, Liang & Klein 2009; ``step_decay = 0`` gives ``η = 1``: plain EM on the batch);
* tables ``θ = normalise(μ + pseudocount)`` along each table's last axis (a parameter group may carry
  ``pseudocount_weights``, a tensor broadcast against its tables: then ``μ + pseudocount × weights``,
  e.g. ``V × unigram`` for the emission table).

Full-batch EM is gradient accumulation over every chunk of the training split followed by one step
with ``η = 1``. The engine divides the loss by ``grad_accum`` and DDP averages gradients over the
processes, so the optimizer multiplies the gradients back by ``count_scale = grad_accum × world size``
to recover the summed counts; stepwise EM's task passes the number of mini-batches in the training
split, which puts each mini-batch's counts in corpus units (the pseudocount then weighs as in full-batch
EM). The statistics and the step counter live in the optimizer state, so a
checkpoint resumes EM exactly.
"""

from __future__ import annotations

import torch


class EM(torch.optim.Optimizer):
    """M-step of a categorical model from expected counts stored (negated) in ``.grad``.

    Args:
        params: log-probability tables, each normalised along its last axis.
        pseudocount: α > 0 added to the statistics before normalising.
        step_decay: stepwise EM's step-size exponent (0: step size 1).
        count_scale: factor that turns a gradient into counts (grad_accum × world size; stepwise EM:
            up to the training split's size).
    """

    def __init__(self, params, pseudocount: float, step_decay: float = 0.0, count_scale: float = 1.0):
        if pseudocount <= 0:
            raise ValueError(f"em.pseudocount: must be > 0, got {pseudocount}")
        if not 0.0 <= step_decay <= 1.0:
            raise ValueError(f"em.step_decay: must be in [0, 1], got {step_decay}")
        defaults = {
            "lr": 1.0,
            "pseudocount": pseudocount,
            "step_decay": step_decay,
            "count_scale": count_scale,
        }
        super().__init__(params, defaults)

    @staticmethod
    def step_size(k: int, step_decay: float) -> float:
        """``η_k = (k + 2) ** −step_decay`` for the k-th update (k = 0, 1, ...)."""
        return float((k + 2) ** -step_decay)

    def start_statistics(self, table: torch.Tensor, counts: torch.Tensor) -> None:
        """Start ``table``'s running statistics at ``counts`` instead of zeros (before the first step)."""
        if self.state[table]:
            raise ValueError("EM.start_statistics: the statistics have been updated already")
        if counts.shape != table.shape:
            raise ValueError(
                f"EM.start_statistics: counts {tuple(counts.shape)} for a table {tuple(table.shape)}"
            )
        self.state[table] = {"step": 0, "statistics": counts.to(table, copy=True)}

    @torch.no_grad()
    def step(self, closure=None):  # noqa: D102
        if closure is not None:
            raise ValueError("EM: a closure is not supported")
        for group in self.param_groups:
            for table in group["params"]:
                if table.grad is None:
                    continue
                # In-place float64 passes over the (K, V) table: the M-step is a few memory sweeps.
                counts = torch.mul(table.grad, -group["count_scale"]).to(torch.float64).clamp_(min=0.0)
                state = self.state[table]
                if not state:
                    state["step"] = 0
                    # Kept in the table's dtype: torch casts optimizer state to it when a checkpoint is
                    # loaded, so storing it that way from the start keeps resume bit-exact.
                    state["statistics"] = torch.zeros_like(table)
                eta = self.step_size(state["step"], group["step_decay"])
                if eta == 1.0:
                    statistics = counts  # (1 − η) μ + η · counts with η = 1, exactly
                else:
                    statistics = (
                        state["statistics"]
                        .to(torch.float64, copy=True)
                        .mul_(1.0 - eta)
                        .add_(counts.mul_(eta))
                    )
                state["statistics"].copy_(statistics)
                weights = group.get("pseudocount_weights")
                if weights is None:
                    smoothed = statistics.add_(group["pseudocount"])
                else:
                    smoothed = statistics.add_(weights.to(statistics), alpha=group["pseudocount"])
                total = smoothed.sum(dim=-1, keepdim=True).log_()
                table.copy_(smoothed.log_().sub_(total))
                state["step"] += 1
