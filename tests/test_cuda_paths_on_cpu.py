"""The CUDA-only branches of training run on the CPU here, each against its plain path, so the first GPU run meets code
that has already run: bf16 autocast, channels_last, the fused optimizer kernel, activation checkpointing under
autocast, torch.compile of the UNet, the SyncBatchNorm conversion and the DDP wrapping in a one-process group.

`fastpath.execution_plan` makes each CUDA-gated choice explicit; the tests replace a choice in the CPU's plan and give
it to the same `fit` (or call the same function `fit` calls)."""

import copy
import dataclasses

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from dbae_core import training
from dbae_core.distributed import convert_sync_batchnorm, rank_world, single_process_group, wrap_distributed
from dbae_core.fastpath import ExecutionPlan, execution_plan
from dbae_core.model import DBAE
from dbae_core.networks.unet import UNet, UNetConfig
from dbae_core.presets import preset
from dbae_core.training import TrainConfig, autocast, fit, make_optimizer

CPU, CUDA = torch.device("cpu"), torch.device("cuda")  # a device object: resolving a plan needs no GPU


def tiny16():
    """The tiny preset at 16 px (attention at 4 px): a training step in tens of milliseconds."""
    p = preset("tiny")
    return p.replace(image_size=16, decoder=dataclasses.replace(p.decoder, image_size=16),
                     encoder=dataclasses.replace(p.encoder, image_size=16, attention_resolutions=(4,)),
                     unet=dataclasses.replace(p.unet, image_size=16, attention_resolutions=(4,)))


def visible(model: DBAE) -> DBAE:
    """Give the zero-initialised output layers weights, so that every layer gets a gradient."""
    for name, p in model.named_parameters():
        if name.endswith(("out_conv.weight", "proj.weight")):
            nn.init.normal_(p, std=0.05, generator=torch.Generator().manual_seed(1))
    return model


def data16(n=32):
    return TensorDataset(torch.rand(n, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1)


def train(tmp_path, plan=None, **changes):
    """Four AdamW steps of the tiny 16-px model (every layer visible) through `fit`: (losses per step, the model)."""
    torch.manual_seed(0)
    model = visible(DBAE(tiny16()))
    cfg = TrainConfig(**{"steps": 4, "batch_size": 4, "optimizer": "adamw", "lr": 1e-3, "ema_decay": 0.9,
                         "log_every": 1, "ckpt_every": 10**6, "progress": False, **changes})
    out = fit(model, data16(), cfg, device=CPU, checkpointer=lambda step, state: None, plan=plan)
    return [m["train/loss"] for _, m in out["history"]], model


def update_gap(a: nn.Module, b: nn.Module) -> float:
    """‖θ_a − θ_b‖ / ‖θ_b − θ_0‖ over all floating-point weights: two runs' updates compared as a whole. Adam's
    normalised steps turn rounding into full-size steps where a gradient is only rounding (a bias before a
    normalisation), so per-element tolerances would test the rounding, not the code."""
    torch.manual_seed(0)
    init = visible(DBAE(tiny16())).state_dict()
    sa, sb = a.state_dict(), b.state_dict()
    keys = [k for k, v in init.items() if v.is_floating_point()]
    gap = torch.cat([(sa[k] - sb[k]).flatten() for k in keys]).norm()
    moved = torch.cat([(sb[k] - init[k]).flatten() for k in keys]).norm()
    assert moved > 0.05  # the steps moved the weights
    return float(gap / moved)


def test_execution_plan_keeps_the_cpu_defaults_and_makes_the_cuda_choices():
    fast = TrainConfig(optimizer="adamw")
    assert execution_plan(fast, CPU) == ExecutionPlan("fp32", False, "foreach", False, False)
    assert execution_plan(fast, CUDA) == ExecutionPlan("bf16", True, "fused", True, False)
    assert execution_plan(TrainConfig(optimizer="radam"), CUDA).optimizer_kernel == "foreach"  # no fused RAdam
    assert execution_plan(TrainConfig(precision="bf16"), CPU).precision == "bf16"  # CPU autocast on request
    ref = TrainConfig(optimizer="adamw", compile=True, reference=True).execution()
    assert execution_plan(ref, CUDA) == ExecutionPlan("fp32", False, "loop", True, False)


@pytest.mark.parametrize("name", ["adamw", "adam"])
def test_fused_optimizer_kernel_takes_the_foreach_and_loop_steps_on_cpu(name):
    def steps(kernel):
        torch.manual_seed(0)
        net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Flatten(), nn.Linear(8 * 4 * 4, 2))
        opt = make_optimizer(net.parameters(), name, 1e-2, weight_decay=0.01, kernel=kernel)
        assert bool(opt.defaults.get("fused")) is (kernel == "fused")
        assert bool(opt.defaults.get("foreach")) is (kernel == "foreach")
        x = torch.randn(4, 3, 6, 6, generator=torch.Generator().manual_seed(1))
        for _ in range(3):
            net(x).square().sum().backward()
            opt.step()
            opt.zero_grad()
        return [p.detach() for p in net.parameters()]
    fused = steps("fused")
    for other in (steps("foreach"), steps("loop")):
        for a, b in zip(fused, other):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match="radam has no fused kernel"):
        make_optimizer(nn.Linear(2, 2).parameters(), "radam", 1e-3, kernel="fused")


def loss_and_grads(model: DBAE, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    model.zero_grad()
    loss = model(x, torch.Generator().manual_seed(3), (0, 1))[0]
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in model.parameters()]


def test_channels_last_gives_the_nchw_loss_and_gradients():
    """NHWC weights and input, as `fit` runs them on CUDA: the same loss and gradients to float rounding (measured:
    max |Δg| 3e-7 against a largest gradient of 0.12)."""
    torch.manual_seed(0)
    nchw = visible(DBAE(tiny16()))
    nhwc = copy.deepcopy(nchw).to(memory_format=torch.channels_last)
    x = data16(4).tensors[0]
    loss0, g0 = loss_and_grads(nchw, x)
    loss1, g1 = loss_and_grads(nhwc, x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(loss1, loss0, rtol=1e-6, atol=0)
    largest = max(float(g.abs().max()) for g in g0)
    assert largest > 1e-3
    assert max(float((a - b).abs().max()) for a, b in zip(g1, g0)) <= 1e-5 * largest


def test_cuda_layout_and_optimizer_on_cpu_train_the_same_model_as_the_cpu_plan(tmp_path, monkeypatch):
    """channels_last weights and batches + the fused AdamW kernel, through `fit`: the same losses to 1e-5 (a wrong
    layout or update is off by far more at the first step) and the same weights up to Adam's amplified rounding
    (measured: 1.2 % of the update with two threads, 0.01 % with one)."""
    made = []

    def spy(*args, **kwargs):
        made.append(make_optimizer(*args, **kwargs))
        return made[-1]
    monkeypatch.setattr(training, "make_optimizer", spy)
    cpu_plan = execution_plan(TrainConfig(optimizer="adamw"), CPU)
    cuda_like = dataclasses.replace(cpu_plan, channels_last=True, optimizer_kernel="fused")
    losses_cpu, plain = train(tmp_path)
    losses_cuda, nhwc = train(tmp_path, plan=cuda_like)
    assert made[0].defaults["foreach"] and made[1].defaults["fused"]
    convs = [m.weight for m in nhwc.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]
    assert convs and all(w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous() for w in convs)
    assert losses_cuda == pytest.approx(losses_cpu, rel=1e-5)
    assert update_gap(nhwc, plain) < 0.05


def test_bf16_autocast_training_on_cpu_tracks_fp32(tmp_path):
    """`fit` with precision bf16 (CPU autocast: what "auto" gives on CUDA) against fp32, four AdamW steps.

    bf16 keeps 8 significant bits (rounding 2^-9 ≈ 0.2 % per operation), but GroupNorm and the loss run in fp32 and
    the loss averages thousands of rounded terms: measured 8e-5 relative per step on one CPU and 4e-3 on another
    (oneDNN picks bf16 kernels by instruction set). The bound 2e-2 leaves a fivefold margin over the worse and is far
    below a broken path's O(1). The weights travel the same way: the rounding changes Adam's
    normalised steps by 5 % of the update (measured 0.050), bounded by 0.2."""
    with autocast(CPU, "bf16"):
        assert nn.Conv2d(3, 3, 1)(torch.randn(1, 3, 4, 4)).dtype == torch.bfloat16
    losses_fp32, fp32 = train(tmp_path, precision="fp32")
    losses_bf16, bf16 = train(tmp_path, precision="bf16")
    assert losses_bf16 != losses_fp32  # autocast ran
    assert losses_bf16 == pytest.approx(losses_fp32, rel=2e-2)
    assert update_gap(bf16, fp32) < 0.2


def test_activation_checkpointing_under_bf16_autocast_keeps_outputs_and_gradients():
    """On the GPU the checkpointed blocks recompute under bf16 autocast: the recomputation must see the same autocast
    state as the forward, or the gradients would mix precisions."""
    cfg = UNetConfig(image_size=8, base_channels=32, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(4,),
                     head_channels=32, dropout=0.0)
    torch.manual_seed(0)
    unet = visible(UNet(cfg, latent_dim=8)).train()
    x, x_T, z = torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8), torch.randn(2, 8)
    c = torch.tensor([0.3, -1.2])
    runs = []
    for checkpointing in (False, True):
        unet.activation_checkpointing = checkpointing
        unet.zero_grad()
        with autocast(CPU, "bf16"):
            out = unet(x, c, x_T, z)
        out.float().square().sum().backward()
        runs.append((out.detach(), [p.grad.clone() for p in unet.parameters()]))
    assert runs[0][0].dtype == torch.bfloat16
    torch.testing.assert_close(runs[1][0], runs[0][0], rtol=0, atol=0)
    for g1, g0 in zip(runs[1][1], runs[0][1]):
        torch.testing.assert_close(g1, g0, rtol=1e-6, atol=1e-7)


def test_compiled_unet_matches_eager_outputs_and_gradients():
    """`fit` compiles with `model.unet.compile()`. The smallest UNet goes through what every backend shares (Dynamo's
    capture of forward and backward, AOTAutograd's joint graph: graph breaks and untraceable code fail here) and
    runs it with aten kernels: eager's outputs and gradients to float rounding. Inductor's own CPU code generation
    (a minute and a half here, and not what a GPU runs) is left to the GPU check."""
    cfg = UNetConfig(image_size=8, base_channels=32, channel_mult=(1,), num_res_blocks=1, attention_resolutions=(8,),
                     head_channels=32, dropout=0.0)
    torch.manual_seed(0)
    eager = visible(UNet(cfg, latent_dim=4)).train()
    compiled = copy.deepcopy(eager)
    compiled.compile(backend="aot_eager", fullgraph=True)
    x, x_T, z = torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8), torch.randn(2, 4)
    c = torch.tensor([0.3, -1.2])
    outs = []
    for net in (eager, compiled):
        out = net(x, c, x_T, z)
        out.square().sum().backward()
        outs.append((out.detach(), [p.grad for p in net.parameters()]))
    torch.testing.assert_close(outs[1][0], outs[0][0], rtol=1e-4, atol=1e-5)
    for g1, g0 in zip(outs[1][1], outs[0][1]):
        torch.testing.assert_close(g1, g0, rtol=1e-4, atol=1e-5)


def _one_step(runner: nn.Module, model: nn.Module, x: torch.Tensor):
    """One AdamW step with the loss `fit` backpropagates: (loss, gradients, weights and buffers afterwards)."""
    opt = make_optimizer(model.parameters(), "adamw", 1e-3)
    runner.train()
    loss = runner(x, torch.Generator().manual_seed(3), (0, 1))[0]
    loss.backward()
    grads = [p.grad.clone() for p in model.parameters()]
    opt.step()
    return loss.detach(), grads, {k: v.clone() for k, v in model.state_dict().items()}


def _assert_same_step(a, b):
    torch.testing.assert_close(a[0], b[0], rtol=0, atol=0)
    assert max(float((ga - gb).abs().max()) for ga, gb in zip(a[1], b[1])) == 0.0
    assert a[2].keys() == b[2].keys()
    for k in a[2]:
        torch.testing.assert_close(a[2][k], b[2][k], rtol=0, atol=0)


def test_sync_batchnorm_conversion_keeps_weights_checkpoint_keys_and_the_step():
    """The conversion `fit` makes on CUDA under DDP: without a process group SyncBatchNorm computes plain batch norm,
    so the converted model takes bit-identical steps, and its checkpoints load into an unconverted model."""
    torch.manual_seed(0)
    plain = visible(DBAE(tiny16()))
    synced = copy.deepcopy(plain)
    params = list(synced.parameters())
    assert convert_sync_batchnorm(synced) >= 3  # the FastGAN decoder's BatchNorm layers
    assert not any(isinstance(m, nn.SyncBatchNorm) for m in plain.modules())
    assert all(a is b for a, b in zip(params, synced.parameters()))  # an optimizer made before still applies
    x = data16(4).tensors[0]
    step_plain, step_synced = _one_step(plain, plain, x), _one_step(synced, synced, x)
    _assert_same_step(step_synced, step_plain)
    DBAE(tiny16()).load_state_dict(synced.state_dict())


def test_ddp_in_a_one_process_gloo_group_takes_the_plain_step(monkeypatch):
    """`wrap_distributed` as `fit` calls it for world > 1, here in a world-size-1 group: DDP's gradient all-reduce
    over one rank must leave the step unchanged. `fit` itself does not wrap at world size 1."""
    torch.manual_seed(0)
    plain = visible(DBAE(tiny16()))
    twin = copy.deepcopy(plain)
    x = data16(4).tensors[0]
    with single_process_group(CPU) as backend:
        assert backend == "gloo" and rank_world() == (0, 1)
        net = wrap_distributed(twin, CPU)
        assert isinstance(net, nn.parallel.DistributedDataParallel) and net.module is twin
        assert not any(isinstance(m, nn.SyncBatchNorm) for m in twin.modules())  # CPU: no SyncBatchNorm
        _assert_same_step(_one_step(net, twin, x), _one_step(plain, plain, x))

        def no_ddp(*args, **kwargs):
            raise AssertionError("fit wrapped a one-process run in DDP")
        monkeypatch.setattr(training, "wrap_distributed", no_ddp)
        fit(DBAE(tiny16()), data16(), TrainConfig(steps=1, batch_size=4, progress=False), device=CPU,
            checkpointer=lambda step, state: None)
    assert rank_world() == (0, 1) and not torch.distributed.is_initialized()
