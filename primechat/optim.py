"""MuonAdamW: Muon for the transformer's matrices, AdamW for embeddings, head and scalars; one class for one
process or many.

With torch.distributed initialised, gradients are synchronised inside `step` (no DDP wrapper), ZeRO-2 style:
- Muon: the K same-shape matrices of a group are stacked; each rank owns ceil(K/N) of them, receives their averaged
  gradients by reduce-scatter, keeps their momentum, updates them and all-gathers the results.
- AdamW: a large parameter whose first dim divides by N is reduce-scattered along dim 0 and each rank updates (and
  keeps moments for) its slice before an all-gather; small ones are all-reduced and updated everywhere.
So optimizer state is split across ranks and saved per rank. NCCL (GPUs) and gloo (CPU) run the same collectives,
so the 2-process CPU test checks the very path a GPU node takes.

The Muon step (nanochat 2026, reference B5): Nesterov momentum → row equilibration (MuonEq) → Polar Express
orthogonalisation → rescale to Frobenius norm sqrt(min(m, n)) (Muon+) → NorMuon's factored second-moment
normalisation → cautious weight decay, all scaled by sqrt(max(1, rows/cols)).
"""

import math

import torch
import torch.distributed as dist

# Polar Express: per-iteration coefficients of the odd polynomial a·X + b·(XXᵀ)X + c·(XXᵀ)²X.
POLAR_EXPRESS = [(8.1566, -22.4833, 15.8788), (4.0429, -2.8089, 0.5000), (3.8917, -2.7725, 0.5061),
                 (3.2858, -2.3681, 0.4645), (2.3465, -1.7098, 0.4232)]


def orthogonalize(G: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """Approximate the polar factor U·Vᵀ of each matrix in G (..., m, n); bf16 on GPU, where it is 2× faster."""
    X = G.to(torch.bfloat16 if G.is_cuda else torch.float32)
    tall = X.size(-2) > X.size(-1)
    if tall:
        X = X.mT
    X = X / (X.norm(dim=(-2, -1), keepdim=True) * 1.01 + 1e-6)
    for a, b, c in POLAR_EXPRESS[:steps]:
        A = X @ X.mT
        X = a * X + (b * A + c * A @ A) @ X
    return (X.mT if tall else X).to(G.dtype)


def muon_update(param, grad, state, lr, momentum, beta2, weight_decay, ns_steps):
    """One Muon step on a stack of same-shape matrices (K, m, n), in place."""
    m, n = param.shape[-2:]
    buf = state.setdefault("momentum_buffer", torch.zeros_like(grad))
    buf.lerp_(grad, 1 - momentum)
    g = grad.lerp(buf, momentum)  # Nesterov
    g = g / (g.norm(dim=-1, keepdim=True) + 1e-7)  # MuonEq: equal-norm rows before orthogonalising
    X = orthogonalize(g, ns_steps)
    X = X * (math.sqrt(min(m, n)) / (X.norm(dim=(-2, -1), keepdim=True) + 1e-7))  # Muon+: exact norm
    # NorMuon: normalise by a running second moment kept per row/column of the smaller dimension.
    reduce_dim = -2 if m >= n else -1
    v = state.setdefault("second_moment", torch.zeros_like(X.mean(dim=reduce_dim, keepdim=True)))
    v.lerp_(X.square().mean(dim=reduce_dim, keepdim=True), 1 - beta2)
    Y = X / (v.sqrt() + 1e-10)
    Y = Y * (X.norm(dim=(-2, -1), keepdim=True) / (Y.norm(dim=(-2, -1), keepdim=True) + 1e-10))
    lr = lr * math.sqrt(max(1.0, m / n))
    decay = (Y * param >= 0).to(param.dtype) * param  # cautious: decay only where it agrees with the update
    param.sub_(lr * (Y + weight_decay * decay))


def adamw_update(param, grad, state, lr, betas, eps, weight_decay):
    """Standard bias-corrected AdamW with decoupled weight decay, fp32 math, in place."""
    if not state:
        state.update(step=0, exp_avg=torch.zeros_like(param), exp_avg_sq=torch.zeros_like(param))
    state["step"] += 1
    b1, b2 = betas
    state["exp_avg"].lerp_(grad, 1 - b1)
    state["exp_avg_sq"].mul_(b2).addcmul_(grad, grad, value=1 - b2)
    bias1, bias2 = 1 - b1 ** state["step"], 1 - b2 ** state["step"]
    denom = (state["exp_avg_sq"] / bias2).sqrt_().add_(eps)
    param.mul_(1 - lr * weight_decay)
    param.addcdiv_(state["exp_avg"], denom, value=-lr / bias1)


def _world():
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _reduce_scatter_avg(full: torch.Tensor, world: int) -> torch.Tensor:
    """This rank's 1/world slice (along dim 0) of the cross-rank average of `full`."""
    out = full.new_empty(full.size(0) // world, *full.shape[1:])
    dist.reduce_scatter_single(out, full, op=dist.ReduceOp.AVG)
    return out


def _all_gather(part: torch.Tensor, world: int) -> torch.Tensor:
    out = part.new_empty(part.size(0) * world, *part.shape[1:])
    dist.all_gather_single(out, part)
    return out


class MuonAdamW(torch.optim.Optimizer):
    """Param groups carry `kind` ("muon" or "adamw") and their hyper-parameters; `initial_lr` feeds schedules."""

    def __init__(self, param_groups):
        for group in param_groups:
            group.setdefault("initial_lr", group["lr"])
            if group["kind"] == "muon":
                assert len({p.shape for p in group["params"]}) == 1, "a Muon group holds matrices of one shape"
                group.setdefault("initial_weight_decay", group["weight_decay"])
        super().__init__(param_groups, defaults={})

    @torch.no_grad()
    def step(self):
        rank, world = _world()
        for group in self.param_groups:
            if group["kind"] == "muon":
                self._muon_group(group, rank, world)
            else:
                for p in group["params"]:
                    self._adamw_param(p, group, rank, world)

    def _muon_group(self, group, rank, world):
        params = group["params"]
        K, chunk = len(params), math.ceil(len(params) / world)
        grads = torch.stack([p.grad for p in params])
        if world > 1:  # pad to a whole number of chunks, then each rank receives the averaged grads it owns
            pad = chunk * world - K
            grads = torch.cat([grads, grads.new_zeros(pad, *grads.shape[1:])]) if pad else grads
            grads = _reduce_scatter_avg(grads, world)
        owned = slice(rank * chunk, min((rank + 1) * chunk, K))
        mine = torch.stack([p.data for p in params[owned]]) if owned.start < K else grads[:0]
        if len(mine):
            muon_update(mine, grads[: len(mine)], self.state[params[0]], group["lr"], group["momentum"],
                        group["beta2"], group["weight_decay"], group["ns_steps"])
        if world > 1:
            mine = torch.cat([mine, grads.new_zeros(chunk - len(mine), *grads.shape[1:])])
            mine = _all_gather(mine, world)[:K]
        for p, new in zip(params, mine):
            p.copy_(new)

    def _adamw_param(self, p, group, rank, world):
        grad, state = p.grad, self.state[p]
        hyper = dict(lr=group["lr"], betas=group["betas"], eps=group["eps"], weight_decay=group["weight_decay"])
        sharded = world > 1 and p.numel() >= 1024 and p.size(0) % world == 0
        if not sharded:
            if world > 1:
                grad = grad.clone()
                dist.all_reduce(grad, op=dist.ReduceOp.AVG)
            adamw_update(p.data, grad, state, **hyper)
            return
        grad = _reduce_scatter_avg(grad, world)
        part = p.data.chunk(world)[rank].clone()
        adamw_update(part, grad, state, **hyper)
        p.copy_(_all_gather(part, world))


# nanochat's learning rates, tuned at a d12 model and a 2^19-token batch: train base's defaults, and what chat training
# falls back to for a checkpoint that does not record its own (an imported one).
DEFAULT_LRS = dict(matrix_lr=0.02, embedding_lr=0.3, unembedding_lr=0.008, scalar_lr=0.5)


def build_optimizer(model, *, matrix_lr=DEFAULT_LRS["matrix_lr"], embedding_lr=DEFAULT_LRS["embedding_lr"],
                    unembedding_lr=DEFAULT_LRS["unembedding_lr"], scalar_lr=DEFAULT_LRS["scalar_lr"],
                    weight_decay=0.0, batch_lr_scale=1.0) -> MuonAdamW:
    """nanochat's 2026 groups (reference B5). AdamW LRs scale with width as (d/768)^-0.5; all LRs but the "scalars"
    group's (smear gate, smear and backout lambdas: a fixed 0.2) scale with the batch as sqrt(B / 2^19)
    (batch_lr_scale). weight_decay is Muon's; the AdamW groups keep nanochat's small fixed decays."""
    groups = model.param_groups()
    s = (model.config.n_embd / 768) ** -0.5
    b = batch_lr_scale

    def adamw(name, lr, betas, wd):
        return dict(kind="adamw", params=groups[name], lr=lr, betas=betas, eps=1e-10, weight_decay=wd)

    adamw_groups = [
        adamw("lm_head", unembedding_lr * s * b, (0.8, 0.96), 0.01),
        adamw("wte", embedding_lr * s * b, (0.8, 0.995), 0.001),
        adamw("value_embeds", embedding_lr * s * 0.5 * b, (0.8, 0.995), 0.01),
        adamw("resid_lambdas", scalar_lr * 0.01 * b, (0.8, 0.95), 0.05),
        adamw("x0_lambdas", scalar_lr * b, (0.96, 0.95), 0.0),
        adamw("scalars", 0.2, (0.8, 0.95), 0.0),
    ]
    by_shape = {}
    for p in groups["matrices"]:
        by_shape.setdefault(tuple(p.shape), []).append(p)
    muon_groups = [dict(kind="muon", params=ps, lr=matrix_lr * b, momentum=0.95, beta2=0.9,
                        weight_decay=weight_decay, ns_steps=5) for _, ps in sorted(by_shape.items())]
    return MuonAdamW([g for g in adamw_groups if g["params"]] + muon_groups)
