"""MuonAdamW: the orthogonalisation, the Muon and AdamW updates, the parameter groups, that it trains, and that its
in-optimizer gradient synchronisation over 2 processes equals one process on the whole batch."""

import copy
import math

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from primechat.model import GPT, GPTConfig
from primechat.optim import MuonAdamW, adamw_update, build_optimizer, muon_update, orthogonalize


def tiny_model(seed=0, n_layer=3, dtype=torch.float32) -> GPT:
    """A small GPT with GQA, value embeds on layers 0 and 2 (3 layers) and all switches on. Zero-initialised weights
    get small random values so that every parameter gets a gradient from the first step."""
    torch.manual_seed(seed)
    config = GPTConfig(sequence_len=32, vocab_size=300, n_layer=n_layer, n_head=4, n_kv_head=2, n_embd=64)
    model = GPT(config)
    model.init_weights()
    with torch.no_grad():
        for p in model.parameters():
            if not p.any():
                p.normal_(0, 0.05)
    model.to(dtype)
    model.compute_dtype = dtype
    return model


def batch(B=4, T=32, vocab=300, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, vocab, (B, T + 1), generator=g)
    return x[:, :-1], x[:, 1:]


# ---------------------------------------------------------------------------------------------------------------------
# The pieces

@pytest.mark.parametrize("shape", [(96, 32), (32, 96), (3, 50, 20), (3, 20, 50)],
                         ids=["tall", "wide", "stack-tall", "stack-wide"])
def test_orthogonalize_is_nearly_semi_orthogonal(shape):
    """Rectangular Gaussian matrices (whose singular values are bounded away from 0; five Polar Express steps leave
    singular values much below 1e-2 of the largest short of 1)."""
    G = torch.randn(*shape, generator=torch.Generator().manual_seed(0)) * 7.0  # scale must not matter
    O = orthogonalize(G)
    assert O.shape == G.shape and O.dtype == G.dtype
    s = torch.linalg.svdvals(O)
    assert s.min() >= 0.5 and s.max() <= 1.5
    # and it approximates the polar factor U Vᵀ of G, not just any semi-orthogonal matrix
    U, _, Vh = torch.linalg.svd(G, full_matrices=False)
    polar = U @ Vh
    cosine = (O * polar).sum(dim=(-2, -1)) / (O.norm(dim=(-2, -1)) * polar.norm(dim=(-2, -1)))
    assert torch.all(cosine > 0.99)


@pytest.mark.parametrize("m,n", [(48, 16), (16, 48), (32, 32)], ids=["tall", "wide", "square"])
def test_muon_update_size(m, n):
    """Without weight decay the step of each matrix has Frobenius norm lr · sqrt(max(1, m/n)) · sqrt(min(m, n)):
    the orthogonalised update is rescaled to norm sqrt(min(m, n)), NorMuon keeps that norm, and the LR is scaled by
    sqrt(max(1, rows/cols))."""
    g = torch.Generator().manual_seed(m * n)
    param = torch.randn(3, m, n, generator=g)
    before = param.clone()
    state = {}
    lr = 0.05
    for step in range(3):
        grad = torch.randn(3, m, n, generator=g)
        prev = param.clone()
        muon_update(param, grad, state, lr=lr, momentum=0.95, beta2=0.9, weight_decay=0.0, ns_steps=5)
        delta_norm = (prev - param).norm(dim=(-2, -1))
        expected = lr * math.sqrt(max(1.0, m / n)) * math.sqrt(min(m, n))
        torch.testing.assert_close(delta_norm, torch.full((3,), expected), rtol=1e-4, atol=0)
    assert set(state) == {"momentum_buffer", "second_moment"}
    assert not torch.equal(before, param)


def test_muon_cautious_weight_decay():
    """Weight decay is applied only where the update and the parameter agree in sign: the step with decay minus the
    step without it is lr · wd · param on exactly those entries."""
    g = torch.Generator().manual_seed(3)
    param = torch.randn(2, 24, 16, generator=g)
    grad = torch.randn(2, 24, 16, generator=g)
    lr, wd = 0.02, 0.5
    lr_eff = lr * math.sqrt(24 / 16)
    p0, p1 = param.clone(), param.clone()
    muon_update(p0, grad, {}, lr=lr, momentum=0.9, beta2=0.95, weight_decay=0.0, ns_steps=5)
    muon_update(p1, grad, {}, lr=lr, momentum=0.9, beta2=0.95, weight_decay=wd, ns_steps=5)
    step0 = param - p0  # = lr_eff · Y
    agree = (step0 * param >= 0)
    assert 0.2 < agree.float().mean() < 0.8  # both cases occur
    torch.testing.assert_close((param - p1) - step0, lr_eff * wd * param * agree, atol=1e-6, rtol=1e-5)


def test_adamw_update_matches_torch_adamw():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(10, 7, generator=g)
    ref = torch.nn.Parameter(w.clone())
    lr, betas, eps, wd = 0.01, (0.8, 0.95), 1e-8, 0.1
    torch_opt = torch.optim.AdamW([ref], lr=lr, betas=betas, eps=eps, weight_decay=wd)
    ours, state = w.clone(), {}
    for _ in range(6):
        grad = torch.randn(10, 7, generator=g)
        ref.grad = grad.clone()
        torch_opt.step()
        adamw_update(ours, grad, state, lr=lr, betas=betas, eps=eps, weight_decay=wd)
        torch.testing.assert_close(ours, ref.detach(), atol=1e-6, rtol=0)
    assert state["step"] == 6
    assert not torch.allclose(ours, w)


# ---------------------------------------------------------------------------------------------------------------------
# The optimizer on a model

def test_groups_cover_every_parameter_once():
    model = tiny_model()
    opt = build_optimizer(model)
    assert isinstance(opt, MuonAdamW)
    seen = [id(p) for group in opt.param_groups for p in group["params"]]
    assert len(seen) == len(set(seen))
    assert set(seen) == {id(p) for p in model.parameters()}
    muon = [g for g in opt.param_groups if g["kind"] == "muon"]
    adamw = [g for g in opt.param_groups if g["kind"] == "adamw"]
    assert len(muon) + len(adamw) == len(opt.param_groups)
    for group in muon:
        assert len({tuple(p.shape) for p in group["params"]}) == 1
        assert all(p.ndim == 2 for p in group["params"])
    # Muon gets exactly the transformer blocks' matrices; embeddings, head and scalars go to AdamW
    assert {id(p) for g in muon for p in g["params"]} == {id(p) for p in model.transformer.h.parameters()}
    for group in opt.param_groups:
        assert group["initial_lr"] == group["lr"] > 0


def test_one_step_changes_every_parameter_with_a_gradient():
    model = tiny_model()
    opt = build_optimizer(model)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    x, y = batch()
    model(x, y).backward()
    with_grad = {name for name, p in model.named_parameters() if p.grad is not None and p.grad.any()}
    assert with_grad == set(before)  # the setup gives every parameter a gradient
    opt.step()
    unchanged = [name for name, p in model.named_parameters() if torch.equal(p, before[name])]
    assert unchanged == []


def test_training_on_a_repeated_batch_lowers_the_loss():
    model = tiny_model(n_layer=2)
    opt = build_optimizer(model)
    x, y = batch(B=4, seed=5)
    losses = []
    for _ in range(30):
        loss = model(x, y)
        loss.backward()
        opt.step()
        model.zero_grad(set_to_none=True)
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < 0.7 * losses[0]


def test_state_dict_round_trip_continues_identically():
    """An optimizer restored from its state_dict takes exactly the same next step (what resuming relies on)."""
    model = tiny_model(n_layer=2)
    opt = build_optimizer(model)
    for seed in (1, 2):
        x, y = batch(seed=seed)
        model(x, y).backward()
        opt.step()
        model.zero_grad(set_to_none=True)
    clone = copy.deepcopy(model)
    opt2 = build_optimizer(clone)
    opt2.load_state_dict(copy.deepcopy(opt.state_dict()))
    x, y = batch(seed=3)
    for m, o in ((model, opt), (clone, opt2)):
        m(x, y).backward()
        o.step()
    for (name, a), b in zip(model.named_parameters(), clone.parameters()):
        assert torch.equal(a, b), name


# ---------------------------------------------------------------------------------------------------------------------
# Distributed: 2 processes with half a batch each == 1 process with the whole batch

STEPS = 3


def train_steps(model, opt, rows: slice):
    for step in range(STEPS):
        x, y = batch(B=4, seed=10 + step)
        model(x[rows], y[rows]).backward()
        opt.step()
        model.zero_grad(set_to_none=True)


def _distributed_worker(rank, world, init_file, out_dir):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        model = tiny_model(dtype=torch.float64)
        opt = build_optimizer(model)
        half = 4 // world
        train_steps(model, opt, slice(rank * half, (rank + 1) * half))
        torch.save({"params": model.state_dict(), "optim": opt.state_dict()}, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_processes_equal_one_process_on_the_whole_batch(tmp_path):
    """In float64, where summing the batch in halves changes the gradients by ~1e-15 only: in float32 Adam's
    normalisation turns rounding noise in near-cancelling embedding gradients into ~1e-4 differences at this tiny
    width's embedding LR (~1), which would hide nothing but blur the comparison."""
    model = tiny_model(dtype=torch.float64)
    opt = build_optimizer(model)
    # the setup exercises both sharded paths: Muon groups with fewer matrices than ranks are padded, and large
    # AdamW parameters are split along dim 0
    muon_sizes = sorted(len(g["params"]) for g in opt.param_groups if g["kind"] == "muon")
    assert any(k % 2 for k in muon_sizes)  # 3 layers: 3 MLP matrices of each shape for 2 ranks
    train_steps(model, opt, slice(0, 4))
    expected = model.state_dict()

    mp.spawn(_distributed_worker, args=(2, str(tmp_path / "rendezvous"), str(tmp_path)), nprocs=2, join=True)
    results = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]
    for name, ref in expected.items():
        for r in range(2):
            torch.testing.assert_close(results[r]["params"][name], ref, atol=1e-6, rtol=0, msg=name)
        assert torch.equal(results[0]["params"][name], results[1]["params"][name]), name  # all-gathered
    # ZeRO-2: each rank keeps Muon momentum only for the matrices it owns and AdamW moments only for its slice of a
    # large parameter, so between them the ranks hold each piece of state once
    states = [r["optim"] for r in results]
    for group in states[0]["param_groups"]:
        if group["kind"] == "muon":
            first = group["params"][0]
            owned = [s["state"][first]["momentum_buffer"].size(0) if first in s["state"] else 0 for s in states]
            assert sum(owned) == len(group["params"])
    order = [p for group in opt.param_groups for p in group["params"]]  # state_dict numbers params in this order
    wte = next(i for i, p in enumerate(order) if p is model.transformer.wte.weight)
    assert [s["state"][wte]["exp_avg"].shape for s in states] == [(model.config.padded_vocab // 2, 64)] * 2
