"""Adan: Adaptive Nesterov momentum (Xie et al., "Adan: Adaptive Nesterov Momentum Algorithm", TPAMI 2024, Alg. 1)."""

from __future__ import annotations

import torch
from torch.optim import Optimizer

from spayolo.errors import UsageError

__all__ = ("Adan",)


class Adan(Optimizer):
    """Adan with decoupled, proximal weight decay (Alg. 1).

    Per step k, with gradient g_k and difference d_k = g_k - g_{k-1} (zero on the first step):
        m_k = b1 m + (1 - b1) g_k;  v_k = b2 v + (1 - b2) d_k;  n_k = b3 n + (1 - b3) (g_k + b2 d_k)^2
        theta <- (theta - lr (m_k / c1 + b2 v_k / c2) / (sqrt(n_k / c3) + eps)) / (1 + lr wd),  c_i = 1 - b_i^k.
    The betas are the momentum factors, as in the authors' and timm's code (0.98, 0.92, 0.99).
    """

    def __init__(self, params, lr: float = 1e-3, betas=(0.98, 0.92, 0.99), eps: float = 1e-8,
                 weight_decay: float = 0.0):
        if lr < 0 or eps < 0 or weight_decay < 0:
            raise UsageError(f"Adan needs lr, eps and weight_decay >= 0, got {lr}, {eps}, {weight_decay}")
        if len(betas) != 3 or not all(0.0 <= b < 1.0 for b in betas):
            raise UsageError(f"Adan needs three betas in [0, 1), got {betas}")
        super().__init__(params, {"lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if params:
                self._update_group(params, group)
        return loss

    def _update_group(self, params: list[torch.Tensor], group: dict) -> None:
        """Alg. 1 for every parameter of a group at once: a few foreach ops, not ten small ops per tensor (a network
        of a few hundred tensors spent more time dispatching them than computing)."""
        b1, b2, b3 = group["betas"]
        lr, eps, wd = group["lr"], group["eps"], group["weight_decay"]
        grads = [p.grad for p in params]
        states = [self.state[p] for p in params]
        for p, grad, state in zip(params, grads, states):
            if not state:
                zeros = (torch.zeros_like(p) for _ in range(3))
                state.update(zip(("exp_avg", "exp_avg_diff", "exp_avg_sq"), zeros), step=0, prev_grad=grad.clone())
            state["step"] += 1
        m, v, n, previous = ([state[key] for state in states] for key in ("exp_avg", "exp_avg_diff", "exp_avg_sq",
                                                                          "prev_grad"))
        steps = [state["step"] for state in states]
        diff = torch._foreach_sub(grads, previous)
        torch._foreach_mul_(m, b1)
        torch._foreach_add_(m, grads, alpha=1 - b1)
        torch._foreach_mul_(v, b2)
        torch._foreach_add_(v, diff, alpha=1 - b2)
        nesterov = torch._foreach_add(grads, diff, alpha=b2)
        torch._foreach_mul_(n, b3)
        torch._foreach_addcmul_(n, nesterov, nesterov, value=1 - b3)
        denom = torch._foreach_div(n, [1 - b3**k for k in steps])
        torch._foreach_sqrt_(denom)
        torch._foreach_add_(denom, eps)
        torch._foreach_addcdiv_(params, m, denom, [-lr / (1 - b1**k) for k in steps])
        torch._foreach_addcdiv_(params, v, denom, [-lr * b2 / (1 - b2**k) for k in steps])
        torch._foreach_div_(params, 1 + lr * wd)
        torch._foreach_copy_(previous, grads)
