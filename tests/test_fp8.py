"""fp8 training matmuls (primechat.fp8) on the CPU, whose torch._scaled_mm computes what the GPU's fp8 tensor cores do.

Covers: forward and both gradients are close to the exact matmul (and really are fp8), tensorwise scaling keeps
tiny and huge tensors as accurate as ordinary ones, no-grad calls (eval, sampling) run the exact matmul, which layers
are switched, and the device and shape rules.
"""

import pytest
import torch
import torch.nn.functional as F

from primechat.common import UserError
from primechat.fp8 import check_device, enable_fp8, fp8_linear
from primechat.model import GPT, GPTConfig


def relative_error(a, b) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def fp8_and_exact(scale_x=1.0, scale_w=1.0, scale_grad=1.0, seed=0):
    """(fp8, exact) results of y = x @ wᵀ and both gradients, for x (2, 48, 256) and w (384, 256)."""
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(2, 48, 256, generator=g) * scale_x
    w0 = torch.randn(384, 256, generator=g) * 0.05 * scale_w
    upstream = torch.randn(2, 48, 384, generator=g) * scale_grad
    results = []
    for linear in (fp8_linear, F.linear):
        x, w = x0.clone().requires_grad_(), w0.clone().requires_grad_()
        y = linear(x, w)
        y.backward(upstream)
        results.append((y.detach(), x.grad, w.grad))
    return results


def test_fp8_matmul_and_its_gradients_are_close_to_the_exact_ones():
    (y8, gx8, gw8), (y, gx, gw) = fp8_and_exact()
    assert y8.shape == y.shape and gx8.shape == gx.shape and gw8.shape == gw.shape
    assert gw8.dtype == torch.float32  # the master weight's gradient stays fp32
    # e4m3 keeps 3 mantissa bits, e5m2 keeps 2: a few percent, and clearly not the exact result
    for fp8, exact, bound in ((y8, y, 0.06), (gx8, gx, 0.1), (gw8, gw, 0.1)):
        assert 1e-3 < relative_error(fp8, exact) < bound


@pytest.mark.parametrize("scale", [1e-5, 1e4])
def test_tensorwise_scaling_keeps_tiny_and_huge_tensors_accurate(scale):
    """Unscaled, 1e-5-sized values underflow e4m3 (smallest subnormal ~2e-3) and 1e4 ones overflow it (max 448)."""
    (y8, gx8, gw8), (y, gx, gw) = fp8_and_exact(scale_x=scale, scale_w=scale, scale_grad=scale)
    for fp8, exact, bound in ((y8, y, 0.06), (gx8, gx, 0.1), (gw8, gw, 0.1)):
        assert relative_error(fp8, exact) < bound


def tiny_gpt(seed=0) -> GPT:
    torch.manual_seed(seed)
    model = GPT(GPTConfig(sequence_len=32, vocab_size=512, n_layer=2, n_head=2, n_kv_head=2, n_embd=128))
    model.init_weights()
    with torch.no_grad():  # zero-initialised projections would hide the matmuls' differences
        for p in model.parameters():
            if not p.any():
                p.normal_(0, 0.05)
    return model


def test_enable_fp8_switches_the_transformer_matrices_only():
    model = tiny_gpt()
    # per block: q, k, v, attention projection (128×128), MLP up (512×128) and down (128×512); the value-embedding
    # gates (2×12) are too small, and the output head is never switched
    assert enable_fp8(model) == 12
    switched = {name for name, m in model.named_modules() if getattr(m, "fp8", False)}
    assert all(name.startswith("transformer.h.") for name in switched)
    assert not model.lm_head.fp8
    assert not any(block.attn.ve_gate.fp8 for block in model.transformer.h if block.attn.ve_gate is not None)


def test_fp8_changes_training_steps_only_and_keeps_the_state_dict():
    idx = torch.randint(0, 512, (2, 32), generator=torch.Generator().manual_seed(1))
    exact, fp8 = tiny_gpt(), tiny_gpt()
    enable_fp8(fp8)
    assert fp8.state_dict().keys() == exact.state_dict().keys()
    with torch.no_grad():  # evaluation, samples, chat: the exact matmul
        assert torch.equal(fp8(idx), exact(idx))
    loss8, loss = fp8(idx, idx), exact(idx, idx)  # with gradients: fp8, close but not equal
    assert loss8.item() != loss.item() and abs(loss8.item() - loss.item()) < 0.05 * loss.item()
    loss8.backward()
    loss.backward()
    assert all(p8.grad.dtype == p.dtype for p8, p in zip(fp8.parameters(), exact.parameters()))
    for block8, block in zip(fp8.transformer.h, exact.transformer.h):
        assert relative_error(block8.mlp.c_fc.weight.grad, block.mlp.c_fc.weight.grad) < 0.2
    all_grads = [torch.cat([p.grad.flatten() for p in m.parameters()]) for m in (fp8, exact)]
    assert relative_error(*all_grads) < 0.2


def test_device_and_shape_rules():
    check_device(torch.device("cpu"), 4 * 128)
    with pytest.raises(UserError, match="multiple of 16"):
        check_device(torch.device("cpu"), 4 * 100 + 2)
    with pytest.raises(UserError, match="drop --fp8"):
        check_device(torch.device("mps"), 4 * 128)


def test_fp8_training_step_compiles_into_one_graph():
    """How GPUs train with --fp8: the quantisation and scaled matmuls traced by torch.compile, with no graph break."""
    model = tiny_gpt()
    enable_fp8(model)
    idx = torch.randint(0, 512, (4, 32), generator=torch.Generator().manual_seed(2))
    eager_loss = model(idx, idx)
    eager_loss.backward()
    eager_grads = [p.grad.clone() for p in model.transformer.h.parameters()]
    model.zero_grad()
    compiled_loss = torch.compile(model, fullgraph=True, dynamic=False)(idx, idx)
    compiled_loss.backward()
    assert abs(compiled_loss.item() - eager_loss.item()) < 1e-3 * eager_loss.item()
    for p, eager in zip(model.transformer.h.parameters(), eager_grads):  # fused rounding may flip a few fp8 values
        assert relative_error(p.grad, eager) < 0.1


def test_the_fp8_recipe_flag_takes_nanochats_tensorwise_and_refuses_rowwise():
    """nanochat's base_train has --fp8-recipe (tensorwise, its default, or rowwise); only tensorwise is built here."""
    from primechat.cli import build_parser
    from primechat.train.base import check_arguments

    def check(*flags):
        words = ["train", "base", *flags]
        check_arguments(build_parser(words).parse_args(words))

    check("--fp8", "--fp8-recipe", "tensorwise")
    check("--fp8-recipe", "rowwise")  # without --fp8 the recipe is unused, as in nanochat
    with pytest.raises(UserError, match="--fp8-recipe rowwise: only tensorwise is built"):
        check("--fp8", "--fp8-recipe", "rowwise")
