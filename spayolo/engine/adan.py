"""Adan: Adaptive Nesterov momentum (Xie et al., "Adan: Adaptive Nesterov Momentum Algorithm", TPAMI 2024, Alg. 1)."""

from __future__ import annotations

import torch
from torch.optim import Optimizer

__all__ = ("Adan",)


class Adan(Optimizer):
    """Adan with decoupled, proximal weight decay (Alg. 1).

    Per step k, with gradient g_k and difference d_k = g_k - g_{k-1} (zero on the first step):
        m_k = b1 m + (1 - b1) g_k;  v_k = b2 v + (1 - b2) d_k;  n_k = b3 n + (1 - b3) (g_k + b2 d_k)^2
        theta <- (theta - lr (m_k / c1 + b2 v_k / c2) / (sqrt(n_k / c3) + eps)) / (1 + lr wd),  c_i = 1 - b_i^k.
    The betas are the momentum factors, as in the authors' and timm's code (0.98, 0.92, 0.99).
    """

    def __init__(self, params, lr: float = 1e-3, betas=(0.98, 0.92, 0.99), eps: float = 1e-8, weight_decay: float = 0.0):
        if lr < 0 or eps < 0 or weight_decay < 0:
            raise ValueError(f"Adan needs lr, eps and weight_decay >= 0, got {lr}, {eps}, {weight_decay}")
        if len(betas) != 3 or not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"Adan needs three betas in [0, 1), got {betas}")
        super().__init__(params, {"lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            b1, b2, b3 = group["betas"]
            lr, eps, wd = group["lr"], group["eps"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_diff"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                    state["prev_grad"] = grad.clone()
                state["step"] += 1
                k = state["step"]
                diff = grad - state["prev_grad"]
                state["exp_avg"].mul_(b1).add_(grad, alpha=1 - b1)
                state["exp_avg_diff"].mul_(b2).add_(diff, alpha=1 - b2)
                nesterov = grad + b2 * diff
                state["exp_avg_sq"].mul_(b3).addcmul_(nesterov, nesterov, value=1 - b3)
                denom = (state["exp_avg_sq"] / (1 - b3**k)).sqrt_().add_(eps)
                p.addcdiv_(state["exp_avg"], denom, value=-lr / (1 - b1**k))
                p.addcdiv_(state["exp_avg_diff"], denom, value=-lr * b2 / (1 - b2**k))
                p.div_(1 + lr * wd)
                state["prev_grad"].copy_(grad)
        return loss
