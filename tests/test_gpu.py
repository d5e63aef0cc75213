"""GPU fast path (skipped without CUDA): a bf16 + channels_last training step of a paper preset is finite and fast
enough to run, and bf16 autocast agrees with fp32 on the loss."""

import dataclasses

import pytest
import torch

from dbae_core.model import DBAE
from dbae_core.presets import preset
from dbae_core.training import TrainConfig, fit

pytestmark = pytest.mark.gpu


def test_bf16_loss_matches_fp32():
    torch.manual_seed(0)
    cfg = preset("celeba64")
    model = DBAE(cfg.replace(encoder=dataclasses.replace(cfg.encoder, stochastic=True))).cuda()
    for name, p in model.unet.named_parameters():  # leave the zero-initialised identity: exercise every layer
        if name.endswith(("out_conv.weight", "proj.weight")):
            torch.nn.init.normal_(p, std=0.02)
    x = torch.rand(8, 3, 64, 64, device="cuda") * 2 - 1
    losses = {}
    for precision in ("fp32", "bf16"):
        gen = torch.Generator("cuda").manual_seed(0)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=precision == "bf16"):
            losses[precision] = model.loss(x, generator=gen).loss_bridge.item()
    assert losses["bf16"] == pytest.approx(losses["fp32"], rel=0.05)


def test_training_on_gpu_channels_last(tmp_path):
    from torch.utils.data import TensorDataset
    torch.manual_seed(0)
    data = TensorDataset(torch.rand(64, 3, 64, 64) * 2 - 1)
    out = fit(DBAE(preset("celeba64")), data, TrainConfig(steps=4, batch_size=8, log_every=2, ckpt_every=4,
                                                          progress=False), tmp_path, device="cuda")
    assert all(torch.isfinite(torch.tensor(m["train/loss"])) for _, m in out["history"])


def _peak_step_memory(model, x, checkpointing):
    model.unet.activation_checkpointing = checkpointing
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = model.loss(x, generator=torch.Generator("cuda").manual_seed(0)).loss
    loss.backward()
    model.zero_grad(set_to_none=True)
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated()


def test_activation_checkpointing_lowers_peak_memory_on_gpu():
    torch.manual_seed(0)
    model = DBAE(preset("celeba64")).cuda().to(memory_format=torch.channels_last)
    x = (torch.rand(32, 3, 64, 64, device="cuda") * 2 - 1).contiguous(memory_format=torch.channels_last)
    plain = _peak_step_memory(model, x, False)
    checkpointed = _peak_step_memory(model, x, True)
    assert checkpointed < 0.8 * plain


def test_sdpa_and_plain_attention_agree_in_bf16_on_gpu():
    from dbae_core.networks.layers import AttentionBlock
    torch.manual_seed(0)
    block = AttentionBlock(256, head_channels=64).cuda()
    torch.nn.init.normal_(block.proj.weight, std=0.05)
    x = torch.randn(8, 256, 16, 16, device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        fused = block(x).float()
        block.fused = False
        plain = block(x).float()
    torch.testing.assert_close(fused, plain, rtol=2e-2, atol=2e-2)
