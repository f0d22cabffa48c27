"""One-step hypergradients of AdamW's per-group learning rate and weight decay.

Baydin et al. 2018 ("Online Learning Rate Adaptation with Hypergradient
Descent"): after the AdamW step theta_{t+1} = theta_t - lr (u_t + wd theta_t),
with u_t = m_hat_t / (sqrt(v_hat_t) + eps) the bias-corrected Adam direction,

    dL(theta_{t+1}) / d lr  = -<g_{t+1}, u_t + wd theta_t>
    dL(theta_{t+1}) / d wd  = -lr <g_{t+1}, theta_t>

`HypergradientMeter.measure` runs when g_{t+1} is final (unscaled, clipped) and
before step t+1: the optimiser then still holds m_t, v_t and the lr/wd of step t,
so u_t and theta_t = (theta_{t+1} + lr u_t) / (1 - lr wd) are rebuilt exactly from
its state. (Under clipping g_{t+1} is the clipped gradient, a positive rescaling
that leaves the cosines below unchanged.) Nothing parameter-sized is kept between steps, and resuming from the
optimiser's checkpoint gives the same numbers. A measurement costs about as much
memory traffic as an optimiser step (flat copies of g, theta, m, v and six dot
products); results stay on the device until `read` (once per window).
"""

from __future__ import annotations

import math
from collections import defaultdict

import torch

# Per-group sums over a window, one column each.
FIELDS = (
    "hypergradient",  # dL/d log lr_g (raw, summed over steps)
    "wd_hypergradient",  # dL/d log wd_g (raw, summed over steps)
    "lr_cosine",  # dL/d log lr_g / (|g| |update|): -cos(g_{t+1}, u_t + wd theta_t)
    "wd_cosine",  # dL/d log wd_g / (|g| |lr wd theta_t|): -cos(g_{t+1}, theta_t)
    "log_grad_norm",
    "log_update_ratio",  # log(|theta_{t+1} - theta_t| / |theta_t|)
    "count",
)
_TINY = 1e-30


def steps_on_host(device: torch.device) -> bool:
    """Read AdamW's step counts on the host where that is free (CPU tensors); on an
    accelerator the bias corrections are computed per parameter on the device, so a
    measurement never waits for it (a little more memory traffic)."""
    return device.type == "cpu"


def _flat(tensors: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.detach().reshape(-1) for t in tensors])


def _adam_hyperparameters(group: dict) -> tuple[float, float, float, float, float]:
    if group.get("amsgrad") or group.get("maximize"):
        raise ValueError("hypergradients assume plain AdamW (amsgrad=False, maximize=False)")
    beta1, beta2 = group["betas"]
    return float(group["lr"]), float(group["weight_decay"]), beta1, beta2, group["eps"]


class HypergradientMeter:
    """Accumulates per-group hypergradient statistics over a window of steps."""

    def __init__(self, names: list[str]):
        self.names = list(names)
        self.sums = torch.zeros(len(self.names), len(FIELDS), dtype=torch.float64)

    @torch.no_grad()
    def measure(self, optimizer: torch.optim.Optimizer) -> None:
        """Add this step's statistics; a no-op before the optimiser's first step."""
        # Per component: [-lr<g,d>, |g|^2, |lr d|^2, |theta_t|^2, -lr wd <g,theta_t>, |g_dec|^2, |lr wd theta_t|^2]
        parts: dict[str, list[torch.Tensor]] = {}
        for group in optimizer.param_groups:
            if group["name"] not in self.names:  # e.g. learned loss weights: not adapted
                continue
            lr, wd, beta1, beta2, eps = _adam_hyperparameters(group)
            params = []
            for p in group["params"]:
                state = optimizer.state.get(p)
                if p.grad is not None and state and "exp_avg" in state:
                    params.append(p)
            if not params:
                continue
            if steps_on_host(params[0].device):  # one bucket per step count (usually one)
                buckets = defaultdict(list)
                for p in params:
                    buckets[float(optimizer.state[p]["step"])].append(p)
                batches = list(buckets.items())
            else:  # per-parameter step counts stay on the device
                batches = [(None, params)]
            for step, ps in batches:  # a component has two optimiser groups (with and without decay): sum them
                terms = self._group_terms(optimizer, ps, step, lr, wd, beta1, beta2, eps)
                name = group["name"]
                parts[name] = terms if name not in parts else [a + b for a, b in zip(parts[name], terms, strict=True)]
        if not parts:
            return
        rows = []
        device = next(iter(parts.values()))[0].device
        if self.sums.device != device:
            self.sums = self.sums.to(device)
        for name in self.names:
            if name not in parts:
                rows.append(torch.zeros(len(FIELDS), dtype=torch.float64, device=device))
                continue
            hyper, gg, dd, tt, wd_hyper, gg_dec, ww = (x.double() for x in parts[name])
            rows.append(
                torch.stack(
                    [
                        hyper,
                        wd_hyper,
                        hyper / (gg * dd).sqrt().clamp_min(_TINY),
                        wd_hyper / (gg_dec * ww).sqrt().clamp_min(_TINY),
                        0.5 * gg.clamp_min(_TINY).log(),
                        0.5 * (dd / tt.clamp_min(_TINY)).clamp_min(_TINY).log(),
                        torch.ones((), dtype=torch.float64, device=device),
                    ]
                )
            )
        self.sums += torch.stack(rows)

    @staticmethod
    def _group_terms(optimizer, params, step, lr, wd, beta1, beta2, eps) -> list[torch.Tensor]:
        # One flat copy per quantity: six dot products on contiguous memory are far
        # cheaper than per-tensor reductions over ~100 small tensors.
        g = _flat([p.grad for p in params])
        theta = _flat(params)  # theta_{t+1}
        v = _flat([optimizer.state[p]["exp_avg_sq"] for p in params])
        m = _flat([optimizer.state[p]["exp_avg"] for p in params])
        # u = m / (sqrt(v) / sqrt(bc2) + eps) / bc1 = k * m / (sqrt(v) + eps sqrt(bc2)), k = sqrt(bc2) / bc1
        if step is not None:  # one step count for all: scalar bias corrections
            bc1, bc2 = 1 - beta1**step, 1 - beta2**step
            u, k = m.div_(v.sqrt_().add_(eps * math.sqrt(bc2))), math.sqrt(bc2) / bc1  # u_t / k
        else:  # each tensor's own step count (a head without gradient in some steps has fewer)
            steps = torch.stack([optimizer.state[p]["step"].reshape(()) for p in params]).to(g.device, torch.float64)
            bc1, bc2 = 1 - beta1**steps, 1 - beta2**steps
            sizes = torch.tensor([p.numel() for p in params], device=g.device)
            per_element = torch.stack([bc2.sqrt() / bc1, eps * bc2.sqrt()]).to(g.dtype)  # (2, P)
            k, eps_hat = torch.repeat_interleave(per_element, sizes, dim=1, output_size=g.numel())
            u, k = m.div_(v.sqrt_().add_(eps_hat)).mul_(k), 1.0  # u_t
        gu, gg, uu = k * torch.dot(g, u), torch.dot(g, g), k**2 * torch.dot(u, u)
        gp, pp, up = torch.dot(g, theta), torch.dot(theta, theta), k * torch.dot(u, theta)
        # With p = theta_{t+1} and c = 1 / (1 - lr wd):
        #   theta_t = c (p + lr u),  d = u + wd theta_t = c (u + wd p)
        c = 1.0 / (1.0 - lr * wd)
        tt = c**2 * (pp + 2 * lr * up + lr**2 * uu)
        if wd == 0:
            zero = torch.zeros_like(gg)
            return [-lr * gu, gg, lr**2 * uu, tt, zero, zero, zero]
        g_dot_d = c * (gu + wd * gp)
        dd = c**2 * (uu + 2 * wd * up + wd**2 * pp)
        g_dot_theta = c * (gp + lr * gu)
        return [-lr * g_dot_d, gg, lr**2 * dd, tt, -lr * wd * g_dot_theta, gg, (lr * wd) ** 2 * tt]

    def read(self) -> dict[str, torch.Tensor]:
        """Window means per group (CPU float64, one host sync) and reset; `hypergradient`
        is the window sum and `count` the number of measured steps."""
        sums = self.sums.to("cpu", copy=True)
        self.sums.zero_()
        count = sums[:, FIELDS.index("count")]
        out = {name: sums[:, i] / count.clamp_min(1) for i, name in enumerate(FIELDS)}
        for name in ("hypergradient", "wd_hypergradient"):
            out[name] = sums[:, FIELDS.index(name)]
        out["count"] = count
        return out

    def state_dict(self) -> dict:
        return {"names": list(self.names), "sums": self.sums.cpu().clone()}

    def load_state_dict(self, state: dict) -> None:
        if list(state["names"]) != self.names:
            raise ValueError(
                f"hypergradient state is for groups {state['names']}, this model has {self.names}"
            )
        self.sums = state["sums"].to(self.sums.device, torch.float64).clone()
