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
EM). The statistics, their scale and the step counter live in the optimizer state, so a checkpoint
resumes EM exactly.

Cost: a stepwise mini-batch of a few hundred tokens has counts in a few hundred of the V emission
columns, yet every entry of μ decays. The optimizer keeps ``μ = scale · statistics``: the decay is a
multiply of the scalar ``scale``, the counts are added to the touched columns only (divided by
``scale``), and the tables are then written in three passes over ``(K, V)`` in the table's dtype (was:
a dozen float64 passes, most of a stepwise step's time at K = 1024).
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

    RESCALE_BELOW = 1e-20
    """``scale`` is folded into the statistics below this, far from float32's range (~3e38)."""

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
        self.state[table] = {"step": 0, "statistics": counts.to(table, copy=True), "scale": 1.0}

    @torch.no_grad()
    def step(self, closure=None):  # noqa: D102
        if closure is not None:
            raise ValueError("EM: a closure is not supported")
        for group in self.param_groups:
            for table in group["params"]:
                if table.grad is None:
                    continue
                state = self.state[table]
                if not state:
                    # Kept in the table's dtype: torch casts optimizer state to it when a checkpoint is
                    # loaded, so storing it that way from the start keeps resume bit-exact.
                    state.update(step=0, statistics=torch.zeros_like(table), scale=1.0)
                eta = self.step_size(state["step"], group["step_decay"])
                self._accumulate(state, table.grad, eta, group["count_scale"])
                self._normalise_into(table, state, group)
                state["step"] += 1

    @classmethod
    def _accumulate(cls, state: dict, grad: torch.Tensor, eta: float, count_scale: float) -> None:
        """``μ ← (1 − η) μ + η · counts`` with ``μ = scale · statistics``.

        The decay of every entry is one multiply of the scalar ``scale``; only the columns that hold
        counts (the words of a mini-batch, a few hundred of V) are touched in ``statistics``. A table
        whose columns mostly hold counts (the transition table) is updated densely: a column-indexed
        add over all of a (4096, 4096) table took 23x as long as a dense one.
        """
        width = grad.shape[-1]
        grad = grad.reshape(-1, width)  # (rows, V); a 1-D table is one row
        statistics = state["statistics"].view(-1, width)  # (rows, V)
        columns = grad.sum(0).nonzero().squeeze(1)  # (U,) columns with counts
        dense = 2 * len(columns) > width
        counts = grad.mul(-count_scale) if dense else grad.index_select(1, columns).mul_(-count_scale)
        counts.clamp_(min=0.0)  # (rows, V) dense, else (rows, U)
        if eta == 1.0:  # (1 − η) μ + η · counts with η = 1, exactly
            if dense:
                statistics.copy_(counts)
            else:
                statistics.zero_().index_copy_(1, columns, counts)
            state["scale"] = 1.0
            return
        scale = state.get("scale", 1.0) * (1.0 - eta)  # checkpoints from before `scale` hold μ itself
        if dense:
            statistics.add_(counts, alpha=eta / scale)
        else:
            statistics.index_add_(1, columns, counts, alpha=eta / scale)
        if scale < cls.RESCALE_BELOW:  # keep the stored statistics far from the dtype's range
            statistics.mul_(scale)
            scale = 1.0
        state["scale"] = scale

    @staticmethod
    def _normalise_into(table: torch.Tensor, state: dict, group: dict) -> None:
        """``table ← log normalise(μ + pseudocount × weights)`` along the last axis, in three passes."""
        weights = group.get("pseudocount_weights")
        prior = torch.as_tensor(1.0 if weights is None else weights).to(table)  # broadcast against table
        prior_total = prior.sum(-1, keepdim=True) if prior.dim() else prior * table.shape[-1]
        scale, statistics = state.get("scale", 1.0), state["statistics"]
        total = statistics.sum(-1, keepdim=True).double().mul_(scale)  # (..., 1); sum(dtype=) is 30x slower
        total.add_(prior_total.to(torch.float64), alpha=group["pseudocount"])
        torch.add(prior.mul(group["pseudocount"]), statistics, alpha=scale, out=table)
        table.log_().sub_(total.log_().to(table.dtype))
