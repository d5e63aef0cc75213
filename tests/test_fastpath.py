"""The execution settings change speed and memory, never the function: each fast setting agrees with an independent
computation or with its reference-path counterpart, and one switch (`reference`) selects the reference path."""

import dataclasses

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from dbae_core.ema import EMA
from dbae_core.fastpath import REFERENCE, configure
from dbae_core.model import DBAE
from dbae_core.networks.layers import AttentionBlock, plain_attention
from dbae_core.networks.unet import UNet, UNetConfig
from dbae_core.presets import preset
from dbae_core.training import TrainConfig, fit, make_optimizer


def numpy_attention(q, k, v):
    s = q @ np.swapaxes(k, -1, -2) / np.sqrt(q.shape[-1])
    w = np.exp(s - s.max(-1, keepdims=True))
    return (w / w.sum(-1, keepdims=True)) @ v


def test_plain_and_sdpa_attention_both_equal_softmax_attention_computed_in_numpy():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 16, 8, generator=g, dtype=torch.float64) for _ in range(3))
    expected = torch.from_numpy(numpy_attention(q.numpy(), k.numpy(), v.numpy()))
    torch.testing.assert_close(plain_attention(q, k, v), expected)
    torch.testing.assert_close(torch.nn.functional.scaled_dot_product_attention(q, k, v), expected)


def test_attention_block_gives_the_same_output_on_both_paths():
    torch.manual_seed(0)
    block = AttentionBlock(64, head_channels=32)
    torch.nn.init.normal_(block.proj.weight, std=0.1)  # the projection starts at zero: make the attention visible
    x = torch.randn(2, 64, 8, 8)
    fused = block(x)
    block.fused = False
    plain = block(x)
    assert (fused - x).abs().max() > 1e-2  # the attention path contributes
    torch.testing.assert_close(plain, fused, rtol=1e-5, atol=1e-5)


def test_activation_checkpointing_keeps_outputs_and_gradients_including_dropout():
    cfg = UNetConfig(image_size=16, base_channels=32, channel_mult=(1, 2), num_res_blocks=1,
                     attention_resolutions=(8,), head_channels=32, dropout=0.3)
    torch.manual_seed(0)
    unet = UNet(cfg, latent_dim=8).train()
    for name, p in unet.named_parameters():  # zero-initialised output layers would hide most gradients
        if name.endswith(("out_conv.weight", "proj.weight")):
            torch.nn.init.normal_(p, std=0.05)
    x, x_T, z = torch.randn(2, 3, 16, 16), torch.randn(2, 3, 16, 16), torch.randn(2, 8)
    c = torch.tensor([0.3, -1.2])
    grads = []
    for checkpointing in (False, True):
        unet.activation_checkpointing = checkpointing
        unet.zero_grad()
        torch.manual_seed(1)  # the same dropout masks, if the recomputation restores the RNG state
        out = unet(x, c, x_T, z)
        out.square().sum().backward()
        grads.append((out.detach(), [p.grad.clone() for p in unet.parameters()]))
    torch.testing.assert_close(grads[1][0], grads[0][0])
    for g1, g0 in zip(grads[1][1], grads[0][1]):
        torch.testing.assert_close(g1, g0, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("foreach", [True, False])
def test_ema_matches_its_closed_form_on_both_paths(foreach):
    model = torch.nn.Linear(3, 2)
    ema = EMA(model, decay=0.9, foreach=foreach)
    start = [p.detach().clone() for p in ema.model.parameters()]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    for _ in range(5):
        ema.update(model)
    # θ_ema,k = θ + decay^k (θ_ema,0 − θ) for a constant θ
    for e, s, p in zip(ema.model.parameters(), start, model.parameters()):
        torch.testing.assert_close(e, p + 0.9 ** 5 * (s - p))


@pytest.mark.parametrize("name", ["adamw", "radam"])
def test_unfused_optimizer_takes_the_same_steps(name):
    def steps(fused):
        torch.manual_seed(0)
        lin = torch.nn.Linear(4, 4)
        opt = make_optimizer(lin.parameters(), name, 1e-2, weight_decay=0.01, fused=fused)
        assert opt.defaults["foreach"] is (True if fused else False)
        for i in range(3):
            lin(torch.full((2, 4), float(i))).square().sum().backward()
            opt.step()
            opt.zero_grad()
        return [p.detach() for p in lin.parameters()]
    for a, b in zip(steps(True), steps(False)):
        torch.testing.assert_close(a, b)


def test_reference_switch_selects_every_reference_setting():
    fast = TrainConfig()
    ref = TrainConfig(reference=True).execution()
    assert fast.execution() == fast
    assert {k: getattr(ref, k) for k in REFERENCE} == REFERENCE
    assert all(getattr(fast, k) != v for k, v in REFERENCE.items() if k not in ("activation_checkpointing", "compile"))
    with pytest.raises(ValueError, match="train.attention=flash is invalid"):
        TrainConfig(attention="flash")


def test_configure_sets_every_attention_block_and_the_unet():
    model = DBAE(preset("tiny"))
    configure(model, torch.device("cpu"), attention="plain", activation_checkpointing=True)
    blocks = [m for m in model.modules() if isinstance(m, AttentionBlock)]
    assert len(blocks) >= 2 and not any(b.fused for b in blocks)  # encoder and UNet attention both
    assert model.unet.activation_checkpointing


def test_reference_mode_trains_the_same_model_as_the_fast_path(tmp_path):
    """Same seed, data and steps: the loss history agrees to float rounding, and so do the weight updates (Adam's
    normalised steps amplify rounding where a gradient is near zero, so the updates are compared as a whole)."""
    p = preset("tiny")
    p = p.replace(image_size=16, decoder=dataclasses.replace(p.decoder, image_size=16),
                  encoder=dataclasses.replace(p.encoder, image_size=16, attention_resolutions=(4,)),
                  unet=dataclasses.replace(p.unet, image_size=16, attention_resolutions=(4,)))
    data = TensorDataset(torch.rand(32, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1)
    runs = {}
    for reference in (False, True):
        torch.manual_seed(0)
        model = DBAE(p)
        cfg = TrainConfig(steps=4, batch_size=4, optimizer="adamw", lr=1e-3, ema_decay=0.9, log_every=1,
                          ckpt_every=4, progress=False, reference=reference)
        out = fit(model, data, cfg, tmp_path / str(reference))
        fused = {b.fused for b in model.modules() if isinstance(b, AttentionBlock)}
        assert fused == {not reference}
        runs[reference] = ([m["train/loss"] for _, m in out["history"]], model.state_dict())
    assert runs[True][0] == pytest.approx(runs[False][0], rel=1e-4)
    torch.manual_seed(0)
    init = DBAE(p).state_dict()
    update = {r: torch.cat([(w - init[k]).flatten() for k, w in runs[r][1].items() if w.is_floating_point()])
              for r in runs}
    assert update[False].norm() > 0.1  # the four steps moved the weights
    assert (update[True] - update[False]).norm() / update[False].norm() < 1e-3
