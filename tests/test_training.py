"""The one-process training loop: it learns, it resumes exactly, it stops on a NaN keeping the last good checkpoint."""

import dataclasses

import pytest
import torch
from torch.utils.data import Dataset, TensorDataset

from dbae_core.checkpoint import CheckpointError, latest_checkpoint, load_checkpoint
from dbae_core.data import ShapesDataset
from dbae_core.model import DBAE
from dbae_core.presets import preset
from dbae_core.training import NonFiniteLossError, StepBatchSampler, TrainConfig, fit


def small_data(n=64):
    return TensorDataset(torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1)


def run(tmp_path, steps, **kw):
    torch.manual_seed(0)
    model = DBAE(preset("tiny"))
    cfg = TrainConfig(steps=steps, batch_size=4, lr=1e-3, optimizer="adamw", ema_decay=0.9, log_every=2,
                      ckpt_every=3, progress=False, **kw)
    return model, fit(model, small_data(), cfg, tmp_path)


def test_rerunning_resumes_and_matches_an_uninterrupted_run(tmp_path):
    ref_model, ref = run(tmp_path / "straight", 8)
    run(tmp_path / "split", 5)  # "interrupted" after step 5; checkpoints at 3 and 5
    assert latest_checkpoint(tmp_path / "split" / "checkpoints").name == "step_000000005.pt"
    model, out = run(tmp_path / "split", 8)  # the same command again, with the full budget
    assert out["step"] == 8
    for (name, p), q in zip(ref_model.state_dict().items(), model.state_dict().values()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=name)
    for p, q in zip(ref["ema"].state_dict().values(), out["ema"].state_dict().values()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


class PoisonAfter(Dataset):
    """Images that turn into NaN from the k-th batch on (batches of 4, sequential indices are not guaranteed,
    so poison by call count)."""

    def __init__(self, base, bad_from_item):
        self.base, self.bad_from, self.calls = base, bad_from_item, 0

    def __len__(self):
        return len(self.base)

    def __getitem__(self, i):
        self.calls += 1
        x = self.base[i][0]
        return (torch.full_like(x, float("nan")) if self.calls > self.bad_from else x,)


def test_nan_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
    torch.manual_seed(0)
    cfg = TrainConfig(steps=20, batch_size=4, ckpt_every=3, log_every=5, progress=False)
    with pytest.raises(NonFiniteLossError, match="non-finite loss at step 5") as err:
        fit(DBAE(preset("tiny")), PoisonAfter(small_data(), bad_from_item=16), cfg, tmp_path)
    assert err.value.step == 5
    assert err.value.checkpoint.name == "step_000000003.pt"
    state = load_checkpoint(err.value.checkpoint)
    assert state["step"] == 3
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_bad_checkpoint_gives_a_clear_error(tmp_path):
    bad = tmp_path / "checkpoints" / "step_000000007.pt"
    bad.parent.mkdir()
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="step_000000007.pt is unreadable"):
        run(tmp_path, 9)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pt")


def test_step_batch_sampler_covers_each_epoch_once_and_restarts_anywhere():
    full = list(StepBatchSampler(10, 4, seed=3, steps=5))
    flat = [i for b in full for i in b]
    assert sorted(flat[:10]) == list(range(10)) and sorted(flat[10:20]) == list(range(10))
    assert list(StepBatchSampler(10, 4, seed=3, start_step=2, steps=5)) == full[2:]


def test_invalid_train_config():
    with pytest.raises(ValueError, match="train.optimizer=sgd is invalid: allowed is one of"):
        TrainConfig(optimizer="sgd")
    with pytest.raises(ValueError, match="train.lr=-0.1"):
        TrainConfig(lr=-0.1)


@pytest.mark.slow
def test_short_run_on_shapes_lowers_the_loss(tmp_path):
    torch.manual_seed(0)
    cfg = TrainConfig(steps=120, batch_size=16, lr=5e-4, optimizer="adamw", log_every=20, ckpt_every=1000,
                      progress=False)
    p = preset("tiny")  # at 16 px (attention at 4 px): a quarter of the compute of 32 px, the same networks
    p = p.replace(image_size=16, decoder=dataclasses.replace(p.decoder, image_size=16),
                  encoder=dataclasses.replace(p.encoder, image_size=16, attention_resolutions=(4,)),
                  unet=dataclasses.replace(p.unet, image_size=16, attention_resolutions=(4,)))
    out = fit(DBAE(p), ShapesDataset(size=16, length=4096), cfg, tmp_path)
    losses = [m["train/loss"] for _, m in out["history"]]
    assert losses[-1] < 0.7 * losses[0], losses
    assert dataclasses.asdict(cfg) == load_checkpoint(out["checkpoint"])["train_config"]
