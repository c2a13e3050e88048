"""The training loop, run tiny on CPU: history, early stopping, LR schedule, determinism."""

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import RandomSampler

from imgrec.data.prepared import Prepared
from imgrec.errors import ImgrecError
from imgrec.pipeline import runtime
from imgrec.pipeline.runtime import World
from imgrec.training import train as train_module
from imgrec.training.inference import to_tensor
from imgrec.training.model import CNNClassifier, ModelConfig, adam
from imgrec.training.train import TrainConfig, augment_batch, rank_batch_size, train

IMG_SIZE, N_IMAGES, N_CLASSES = 16, 40, 4
pytestmark = pytest.mark.usefixtures("deterministic_torch")


@pytest.fixture(scope="module")
def data() -> Prepared:
    rng = np.random.default_rng(0)
    return Prepared(
        images=rng.integers(0, 256, (N_IMAGES, IMG_SIZE, IMG_SIZE, 3), dtype=np.uint8),
        labels=np.arange(N_IMAGES, dtype=np.int64) % N_CLASSES,
        row_ids=np.arange(N_IMAGES, dtype=np.int64),
        train_index=np.arange(32),
        val_index=np.arange(32, N_IMAGES),
        class_names=[str(c) for c in range(N_CLASSES)],
        img_size=IMG_SIZE,
    )


def run(
    data: Prepared, seed: int = 0, setup=None, max_batches=None, on_epoch=None, **overrides
) -> tuple[CNNClassifier, object]:
    """Seed, build the model and train it as the train stage does; return (model, result).

    `setup(model)` runs between building the model and training it; `overrides` are
    TrainConfig fields.
    """
    generator = runtime.seed_everything(seed)
    model = CNNClassifier(ModelConfig(num_classes=N_CLASSES))
    if setup is not None:
        setup(model)
    config = TrainConfig(**{"batch_size": 8, "epochs": 2, **overrides})
    result = train(
        model,
        data,
        config,
        generator=generator,
        device=torch.device("cpu"),
        max_batches=max_batches,
        on_epoch=on_epoch,
    )
    return model, result


def test_history_has_one_record_per_epoch(data):
    seen = []
    _, result = run(data, epochs=2, on_epoch=seen.append)
    assert result.epochs_run == 2
    assert [r["epoch"] for r in result.history] == [1, 2]
    assert seen == result.history
    for record in result.history:
        assert {"train_loss", "train_acc", "val_loss", "val_acc", "lr"} <= record.keys()
        assert np.isfinite(record["train_loss"]) and record["train_loss"] > 0
        assert np.isfinite(record["val_loss"]) and record["val_loss"] > 0
        assert 0.0 <= record["train_acc"] <= 1.0
        assert 0.0 <= record["val_acc"] <= 1.0
        assert record["lr"] == pytest.approx(1e-3)
    best = min(range(2), key=lambda i: result.history[i]["val_loss"])
    assert result.best_epoch == best + 1
    assert result.best_val_loss == result.history[best]["val_loss"]


def test_early_stopping_restores_the_best_epochs_weights(data):
    states, models = {}, []

    def remember(record: dict) -> None:  # the weights at the end of each epoch
        states[record["epoch"]] = copy.deepcopy(models[0].state_dict())

    # Labels carry no signal, so validation loss stops improving within a few epochs.
    model, result = run(
        data,
        seed=1,
        setup=models.append,
        epochs=8,
        lr=1e-4,
        patience=1,
        lr_patience=10,
        max_batches=2,
        on_epoch=remember,
    )

    assert result.stopped_early
    assert result.epochs_run < 8
    # patience=1: training stops at the first epoch that fails to improve.
    assert result.best_epoch == result.epochs_run - 1
    assert result.best_val_loss == min(r["val_loss"] for r in result.history)
    final = model.state_dict()
    for key, value in states[result.best_epoch].items():
        assert torch.equal(final[key], value), key
    last = states[result.epochs_run]
    assert any(not torch.equal(final[key], last[key]) for key in final)


def test_patience_running_out_at_the_last_epoch_is_no_early_stop(data, caplog):
    options = {"seed": 1, "lr": 1e-4, "patience": 1, "lr_patience": 10, "max_batches": 2}
    _, stopped = run(data, epochs=8, **options)  # as above: stops early, at epoch E
    assert stopped.stopped_early
    caplog.set_level("INFO", logger="imgrec.training.train")
    _, result = run(data, epochs=stopped.epochs_run, **options)  # E is now the last epoch
    assert not result.stopped_early and result.epochs_run == stopped.epochs_run
    assert "early stopping" not in caplog.text
    assert (
        f"trained all {result.epochs_run} epochs; keeping the weights of epoch "
        f"{result.best_epoch}, whose val loss was lowest"
    ) in caplog.text


def test_reduce_lr_on_plateau_lowers_lr(data):
    # lr_patience=0: the first epoch without improvement cuts lr for the next one.
    _, result = run(
        data, epochs=8, lr=1e-3, lr_factor=0.1, lr_patience=0, patience=2, max_batches=2
    )
    lrs = [r["lr"] for r in result.history]
    assert lrs[0] == pytest.approx(1e-3)
    assert min(lrs) == pytest.approx(1e-4)
    assert lrs == sorted(lrs, reverse=True)
    val_losses = [r["val_loss"] for r in result.history]
    first_worse = next(i for i in range(1, len(lrs)) if val_losses[i] >= min(val_losses[:i]))
    assert lrs[first_worse + 1] == pytest.approx(lrs[first_worse] * 0.1)


def test_max_batches_caps_batches_per_epoch(data):
    training_calls = []

    def count(module, inputs):
        if module.training:
            training_calls.append(inputs[0].shape[0])

    run(data, setup=lambda model: model.register_forward_pre_hook(count), epochs=2, max_batches=2)
    assert training_calls == [8, 8, 8, 8]  # 2 epochs x 2 batches, not 2 x 4


def test_augment_runs(data):
    _, plain = run(data, epochs=1, max_batches=2)
    _, augmented = run(data, epochs=1, augment=True, max_batches=2)
    assert augmented.epochs_run == 1
    assert np.isfinite(augmented.history[0]["train_loss"])
    assert augmented.history[0]["train_loss"] != plain.history[0]["train_loss"]


def test_augment_batch_keeps_shape_and_is_repeatable():
    x = torch.rand(6, 3, IMG_SIZE, IMG_SIZE)
    first = augment_batch(x, torch.Generator().manual_seed(3))
    again = augment_batch(x, torch.Generator().manual_seed(3))
    other = augment_batch(x, torch.Generator().manual_seed(4))
    assert first.shape == x.shape
    assert first.dtype == x.dtype
    assert torch.equal(first, again)
    assert not torch.equal(first, other)
    assert not torch.equal(first, x)
    # Border padding and bilinear sampling never leave the input's value range.
    assert first.min() >= x.min() - 1e-6 and first.max() <= x.max() + 1e-6


def test_same_seed_gives_bit_identical_weights(data):
    first, first_result = run(data, seed=7, augment=True, max_batches=2)
    second, second_result = run(data, seed=7, augment=True, max_batches=2)
    other, _ = run(data, seed=8, augment=True, max_batches=2)
    assert first_result.history == second_result.history
    for key, value in first.state_dict().items():
        assert torch.equal(second.state_dict()[key], value), key
    assert any(
        not torch.equal(other.state_dict()[key], value) for key, value in first.state_dict().items()
    )


def test_one_rank_trains_exactly_as_the_plain_loop(data, monkeypatch):
    """nproc=1 is the loop as it was before DDP: RandomSampler order, no collectives."""

    def refuse(*args, **kwargs):
        raise AssertionError("a single process must not touch torch.distributed")

    for name in ("DistributedDataParallel", "DistributedSampler"):
        monkeypatch.setattr(train_module, name, refuse)
    for name in ("all_reduce", "broadcast"):
        monkeypatch.setattr(torch.distributed, name, refuse)
    # Dropout 0 leaves the global RNG out of the forward pass: only the data order is random.
    model_config = ModelConfig(num_classes=N_CLASSES, dropout=0.0)
    generator = runtime.seed_everything(3)
    model = CNNClassifier(model_config)
    config = TrainConfig(batch_size=8, epochs=1, dropout=0.0)
    train(model, data, config, generator=generator, device=torch.device("cpu"), max_batches=2)

    generator = runtime.seed_everything(3)
    plain = CNNClassifier(model_config)
    plain.to(memory_format=torch.channels_last).train()
    optimizer = adam(plain.parameters(), 1e-3)
    order = list(RandomSampler(data.train_index, generator=generator))
    for step in range(2):
        rows = data.train_index[order[step * 8 : (step + 1) * 8]]
        x = to_tensor(data.images[rows]).contiguous(memory_format=torch.channels_last)
        loss = F.cross_entropy(plain(x), torch.from_numpy(data.labels[rows]))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    for key, value in plain.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key


def test_images_resident_on_the_device_train_as_batches_from_the_array(data, monkeypatch):
    """The GPU's path (images copied once by `on_device`, batches gathered there, sums kept
    on the device) runs here with the copy on the CPU: the same history and weights to the
    bit as batches from the array, augmentation and the last partial batch included."""
    array_model, array_result = run(data, seed=5, augment=True, batch_size=7)
    copies = []

    def resident(images, device, share=0.5):
        copies.append(len(images))
        return torch.from_numpy(np.array(images))

    monkeypatch.setattr(train_module, "on_device", resident)
    device_model, device_result = run(data, seed=5, augment=True, batch_size=7)
    assert copies == [N_IMAGES]  # once per run, not per epoch
    assert device_result.history == array_result.history
    for key, value in array_model.state_dict().items():
        assert torch.equal(device_model.state_dict()[key], value), key


@pytest.mark.parametrize(("batch_size", "ranks", "share"), [(32, 1, 32), (32, 2, 16), (9, 3, 3)])
def test_each_rank_takes_its_share_of_the_global_batch(batch_size, ranks, share):
    assert rank_batch_size(batch_size, ranks) == share


def test_a_batch_that_does_not_split_over_the_ranks_is_refused_first(data):
    world = World(rank=0, size=3, local_rank=0, local_size=3)  # no process group: refused first
    with pytest.raises(ImgrecError, match=r"param batch_size \(8\) .* ranks \(3, param nproc"):
        train(
            CNNClassifier(ModelConfig(num_classes=N_CLASSES)),
            data,
            TrainConfig(batch_size=8),
            generator=torch.Generator(),
            device=torch.device("cpu"),
            world=world,
        )
