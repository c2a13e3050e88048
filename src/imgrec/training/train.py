# size: past 400 lines because three paths (one process, DDP, resumable)
# share one loop, which keeps their bits equal.
"""Stage train: the loop (Adam, cross-entropy, ReduceLROnPlateau, early stopping on val
loss), its DDP path and its resumable saves (the state itself is `train_state`'s)."""

import contextlib
import copy
import functools
import logging
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Literal

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler
from tqdm import tqdm

from imgrec.config import ComputeConfig, param
from imgrec.data.prepared import Prepared
from imgrec.errors import ImgrecError, Stopped
from imgrec.pipeline.runtime import ONE_PROCESS, World
from imgrec.training.inference import memory_format, on_device, predict_logits, to_tensor
from imgrec.training.model import CNNClassifier, ModelConfig, adam
from imgrec.training.train_state import (
    RankState,
    ResumableSampler,
    Resume,
    StopRequests,
    TrainState,
    capture_rng,
    load_state,
    restore_rng,
    save_state,
)

log = logging.getLogger(__name__)

MAX_ROTATION_DEGREES = 10.0


@dataclass(frozen=True)
class TrainConfig(ComputeConfig):
    nproc: int = param(1, ge=1)  # DDP ranks the stage starts here (under torchrun: its world)
    batch_size: int = param(32, ge=1)  # the global batch, whatever nproc
    epochs: int = param(30, ge=1)
    lr: float = param(0.001, gt=0)
    patience: int = param(5, ge=1)
    lr_factor: float = param(0.1, gt=0, lt=1)
    lr_patience: int = param(3, ge=0)
    dropout: float = param(0.5, ge=0, le=1)
    augment: bool = False
    seed: int = param(42, ge=0)
    channels_last: bool = True
    # fp32: true fp32 on CUDA too; tf32: TF32 convolutions and matmuls on CUDA (fp32 on the
    # CPU); bf16: autocast (`runtime.set_precision`).
    precision: Literal["fp32", "tf32", "bf16"] = "fp32"
    # Batches between saves of the resumable state (0: epoch ends only). It decides no bit,
    # so it stays out of the checkpoint's provenance and of what makes a state this run's.
    checkpoint_every: int = param(0, ge=0)

    def model_config(self, num_classes: int) -> ModelConfig:
        """The model these params train: a model hyperparameter is one field here and one
        in ModelConfig, passed on in this one place."""
        return ModelConfig(num_classes=num_classes, dropout=self.dropout)

    def identity(self, world_size: int) -> dict:
        """The fields that decide the trained bits, nproc as the world that ran."""
        fields_ = asdict(replace(self, nproc=world_size))
        del fields_["checkpoint_every"]
        return fields_


@dataclass
class TrainResult:
    history: list[dict] = field(default_factory=list)  # one record per epoch
    best_epoch: int = 0
    best_val_loss: float = math.inf
    stopped_early: bool = False

    @property
    def epochs_run(self) -> int:
        return len(self.history)


class ArrayBatches(torch.utils.data.Dataset):
    """Batches straight from the memory-mapped uint8 array: one slice per batch, no decoding."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, index: np.ndarray):
        self.images, self.labels, self.index = images, labels, index

    def __len__(self) -> int:
        return len(self.index)

    def __getitems__(self, positions: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        rows = self.index[positions]
        return torch.from_numpy(self.images[rows]), torch.from_numpy(self.labels[rows])


class DeviceBatches(ArrayBatches):
    """Batches gathered on the GPU from images and labels already there (`on_device`): the
    batch's row numbers are all that crosses the host link, without waiting for the GPU."""

    def __getitems__(self, positions: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        rows = torch.from_numpy(self.index[positions]).to(self.images.device, non_blocking=True)
        return self.images.index_select(0, rows), self.labels.index_select(0, rows)


def augment_batch(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random horizontal flips and rotations of up to MAX_ROTATION_DEGREES, per image."""
    n = x.shape[0]
    flip = torch.rand(n, generator=generator) < 0.5
    angle = (torch.rand(n, generator=generator) * 2 - 1) * math.radians(MAX_ROTATION_DEGREES)
    cos, sin = torch.cos(angle), torch.sin(angle)
    sign = torch.where(flip, -1.0, 1.0)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 0, 1] = cos * sign, -sin
    theta[:, 1, 0], theta[:, 1, 1] = sin * sign, cos
    grid = F.affine_grid(theta.to(x.device, non_blocking=True), list(x.shape), align_corners=False)
    # Border padding: a rotated corner repeats the edge instead of turning black.
    return F.grid_sample(x, grid, padding_mode="border", align_corners=False)


def log_epoch(live, record: dict) -> None:
    """One epoch's record into dvclive (`dvclive.Live`): its step, curves and summary."""
    live.step = record["epoch"]
    for key in ("train_loss", "train_acc", "val_loss", "val_acc", "lr"):
        live.log_metric(key.replace("_", "/"), record[key])
    live.make_summary()


def rank_batch_size(batch_size: int, world_size: int) -> int:
    """Each rank's share of the global batch: nproc scales out, never changes the batch."""
    if batch_size % world_size:
        raise ImgrecError(
            f"param batch_size ({batch_size}) must be divisible by the number of ranks "
            f"({world_size}, param nproc or torchrun's world size)."
        )
    return batch_size // world_size


def all_sum(values: list[float], world: World, device: torch.device) -> list[float]:
    """Each value summed over the ranks, in float64: every rank gets the same totals."""
    if world.size == 1:
        return values
    totals = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(totals)
    return totals.tolist()


class EarlyStopping:
    """Stop after `patience` epochs without a lower validation loss; keep the best weights."""

    def __init__(self, patience: int):
        self.patience = patience
        self.best_loss, self.best_epoch, self.best_state = math.inf, 0, None
        self.epochs_without_improvement = 0

    def should_stop(self, model: CNNClassifier, epoch: int, val_loss: float) -> bool:
        if val_loss < self.best_loss:
            self.best_loss, self.best_epoch = val_loss, epoch
            self.best_state = copy.deepcopy(model.state_dict())
            self.epochs_without_improvement = 0
            return False
        self.epochs_without_improvement += 1
        return self.epochs_without_improvement >= self.patience

    def state_dict(self) -> dict:
        return {
            "best_loss": self.best_loss,
            "best_epoch": self.best_epoch,
            "best_state": self.best_state,
            "epochs_without_improvement": self.epochs_without_improvement,
        }

    def load_state_dict(self, state: dict) -> None:
        self.best_loss, self.best_epoch = state["best_loss"], state["best_epoch"]
        self.best_state = state["best_state"]
        self.epochs_without_improvement = state["epochs_without_improvement"]


def train_epoch(
    model: torch.nn.Module,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    config: TrainConfig,
    *,
    generator: torch.Generator,
    device: torch.device,
    n_batches: int,
    desc: str,
    world: World = ONE_PROCESS,
    start: int = 0,
    sums: tuple[float, int, int] = (0.0, 0, 0),
    at_boundary: Callable[[int, tuple[torch.Tensor, torch.Tensor, int]], None] | None = None,
) -> tuple[float, float]:
    """One pass over at most `n_batches` batches; returns (mean loss, accuracy) over all ranks.

    A resumed pass begins at batch `start` with the (loss sum, correct, seen) of the batches
    before it (the loader then yields from there); `at_boundary(done, sums)` runs after each
    batch but the last, the sums as tensors on the device (`plain_sums`).
    """
    model.train()
    layout = memory_format(config.channels_last)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.precision == "bf16")
    # Summed on the device, read once an epoch: a read per batch waits for the GPU each time.
    # float64, as Python's floats were: the same sums to the bit on the CPU.
    loss_sum = torch.tensor(float(sums[0]), dtype=torch.float64, device=device)
    correct = torch.tensor(int(sums[1]), dtype=torch.int64, device=device)
    seen = int(sums[2])
    # disable=None: a bar on a terminal, none in a log (the epoch's line is logged instead).
    progress = tqdm(
        loader, total=n_batches, initial=start, desc=desc, unit="batch", leave=False,
        disable=None if world.is_main else True,
    )  # fmt: skip
    for step, (pixels, targets) in enumerate(progress, start=start):
        if step == n_batches:
            break
        x = to_tensor(pixels, device)  # (B, 3, H, W)
        if config.augment:
            x = augment_batch(x, generator)
        x = x.contiguous(memory_format=layout)
        targets = targets.to(device, non_blocking=True)
        with autocast:
            logits = model(x)
            loss = F.cross_entropy(logits.float(), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        seen += len(targets)
        loss_sum += loss.detach().double() * len(targets)
        correct += (logits.argmax(1) == targets).sum()
        if not progress.disable and (device.type == "cpu" or step % 50 == 0):  # a terminal's
            progress.set_postfix(loss=f"{loss_sum.item() / seen:.4f}")
        if at_boundary is not None and step + 1 < n_batches:
            at_boundary(step + 1, (loss_sum, correct, seen))
    totals = all_sum(list(plain_sums((loss_sum, correct, seen))), world, device)
    return totals[0] / totals[2], totals[1] / totals[2]


def plain_sums(sums: tuple) -> tuple[float, int, int]:
    """(loss sum, correct, seen) as Python numbers (a read from the GPU where they live)."""
    return float(sums[0]), int(sums[1]), int(sums[2])


def validate(
    model: CNNClassifier,
    data: Prepared,
    config: TrainConfig,
    device: torch.device,
    world: World = ONE_PROCESS,
    images: torch.Tensor | None = None,
) -> tuple[float, float]:
    """(loss, accuracy) on the validation split; under DDP each rank scores its share. From
    `images` on the GPU (`on_device`) where given."""
    index = data.val_index[world.rank :: world.size]  # shares without padding: none counts twice
    logits = predict_logits(
        model,
        data.images if images is None else images,
        index,
        batch_size=max(config.batch_size, 256),
        device=device,
        channels_last=config.channels_last,
    )
    labels = torch.from_numpy(data.labels[index])
    if world.size == 1:
        return F.cross_entropy(logits, labels).item(), (
            logits.argmax(1) == labels
        ).float().mean().item()
    # Totals over all ranks: every rank sees the same loss, so the LR schedule and early
    # stopping decide alike everywhere.
    loss_sum, correct, count = all_sum(
        [
            F.cross_entropy(logits, labels, reduction="sum").item(),
            (logits.argmax(1) == labels).sum().item(),
            len(labels),
        ],
        world,
        device,
    )
    return loss_sum / count, correct / count


def optimizer_and_scheduler(model: CNNClassifier, config: TrainConfig):
    """The optimizer and its learning-rate schedule: the one place that chooses them."""
    optimizer = adam(model.parameters(), config.lr)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="min", factor=config.lr_factor, patience=config.lr_patience
    )
    return optimizer, scheduler


@dataclass
class _Run:
    """What one training run holds from its setup to its end, and its saves."""

    model: CNNClassifier
    data: Prepared
    config: TrainConfig
    generator: torch.Generator
    device: torch.device
    world: World
    resume: Resume | None
    resident: torch.Tensor | None
    batch_size: int
    sampler: ResumableSampler
    loader: DataLoader
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.ReduceLROnPlateau
    n_batches: int
    result: TrainResult
    stopping: EarlyStopping
    network: torch.nn.Module | None = None
    stops: StopRequests | None = None

    def boundary(self, epoch: int, done: int, epoch_sums, epoch_generator, *, due: bool) -> None:
        """At a batch boundary: save when due or asked to stop, then stop if asked. Under
        DDP every rank calls it at the same boundaries (its steps are collectives)."""
        world, stops = self.world, self.stops
        asked = stops.any_rank(world, self.device)
        if not (asked or due):
            return
        rng = capture_rng(self.generator)
        this_rank = RankState(rng, list(plain_sums(epoch_sums)), epoch_generator)
        ranks = [this_rank]
        if world.size > 1:
            ranks = [None] * world.size if world.is_main else None
            dist.gather_object(this_rank, ranks, dst=0)
        state = TrainState(
            epoch, done, self.model.state_dict(), self.optimizer.state_dict(),
            self.scheduler.state_dict(), self.stopping.state_dict(), self.result.history, ranks,
        )  # fmt: skip
        if world.is_main:
            save_state(self.resume.path, state, self.resume.identity)
        if asked:
            if world.size > 1:
                dist.barrier()  # no rank exits (and makes the launcher stop rank 0) mid-save
            where = state.where(self.config.epochs, self.n_batches)
            raise Stopped(f"stopped by {stops.received}, with the state saved at {where}")

    def at_boundary(self, epoch: int, epoch_generator, done: int, epoch_sums) -> None:
        """After batch `done` of `epoch`: a save is due every `checkpoint_every` batches,
        counted over the whole run (so a value above an epoch's batches still saves)."""
        every, step = self.config.checkpoint_every, (epoch - 1) * self.n_batches + done
        due = every > 0 and step % every == 0
        self.boundary(epoch, done, epoch_sums, epoch_generator, due=due)


def _setup(model, data, config, generator, device, world, max_batches, resume) -> _Run:
    """The model on its device, the batches, their order, the optimizer and its schedule."""
    batch_size = rank_batch_size(config.batch_size, world.size)
    model.to(device=device, memory_format=memory_format(config.channels_last))
    resident = on_device(data.images, device)  # None on the CPU: batches from the array
    if resident is None:
        dataset = ArrayBatches(data.images, data.labels, data.train_index)
    else:
        labels = torch.from_numpy(data.labels).to(device)
        dataset = DeviceBatches(resident, labels, data.train_index)
    if world.size == 1:
        order = RandomSampler(data.train_index, generator=generator)
    else:
        order = DistributedSampler(
            dataset, num_replicas=world.size, rank=world.rank, shuffle=True, seed=config.seed
        )
    sampler = ResumableSampler(order)
    optimizer, scheduler = optimizer_and_scheduler(model, config)
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        collate_fn=lambda batch: batch,  # __getitems__ already returns whole tensors
    )
    n_batches = len(loader) if max_batches is None else min(len(loader), max_batches)
    return _Run(
        model, data, config, generator, device, world, resume, resident, batch_size, sampler,
        loader, optimizer, scheduler, n_batches, TrainResult(), EarlyStopping(config.patience),
    )  # fmt: skip


def _resume(run: _Run, on_epoch: Callable[[dict], None] | None) -> tuple[int, int, tuple]:
    """(epoch, batch, the epoch's sums so far) to start at: the saved run's, restored into
    `run`, or the beginning."""
    resume, world, generator = run.resume, run.world, run.generator
    saved = None if resume is None else load_state(resume.path, resume.identity, world)
    if saved is None:
        return 1, 0, (0.0, 0, 0)
    sums = (0.0, 0, 0)
    # Weights before DDP wraps the model: it copies rank 0's to every rank.
    run.model.load_state_dict(saved.model)
    run.optimizer.load_state_dict(saved.optimizer)
    run.scheduler.load_state_dict(saved.scheduler)
    run.stopping.load_state_dict(saved.stopping)
    run.result.history = saved.history
    start_epoch, start_batch = saved.epoch, saved.batch
    mine = saved.ranks[world.rank]
    if start_batch:  # mid-epoch: the epoch's order first, then the RNGs at the batch
        sums = tuple(mine.epoch_sums)
        generator.set_state(mine.epoch_generator)
        run.sampler.resume_next_pass(
            start_batch * run.batch_size, then=lambda: restore_rng(mine.rng, generator)
        )
    else:
        restore_rng(mine.rng, generator)
    if world.is_main:
        where = saved.where(run.config.epochs, run.n_batches)
        log.info("train: resuming at %s from %s", where, resume.path)
    for record in run.result.history:
        if on_epoch is not None:
            on_epoch(record)  # dvclive's curves, rebuilt from the saved records
    return start_epoch, start_batch, sums


def _wrap_for_ranks(run: _Run) -> torch.nn.Module:
    """The model each batch runs: DDP's wrapper under several ranks."""
    if run.world.size == 1:
        return run.model
    # DDP copies rank 0's weights to every rank, then averages the gradients.
    device = run.device
    return DistributedDataParallel(
        run.model, device_ids=[device.index] if device.type == "cuda" else None
    )


def _sync_batch_norm(run: _Run) -> None:
    if run.world.size > 1:
        # BatchNorm statistics drift apart in each rank's last batch: take rank 0's,
        # so all ranks validate, and keep, the same model.
        for buffer in run.model.buffers():
            dist.broadcast(buffer, src=0)


def _report_epoch(run: _Run, epoch: int, train_loss, train_acc, val_loss, val_acc) -> dict:
    """The epoch's record, kept in the history and logged."""
    record = {
        "epoch": epoch,
        "train_loss": train_loss,
        "train_acc": train_acc,
        "val_loss": val_loss,
        "val_acc": val_acc,
        "lr": run.optimizer.param_groups[0]["lr"],
    }
    run.result.history.append(record)
    log.info(
        "epoch %d/%d  train loss %.4f acc %.4f  val loss %.4f acc %.4f  lr %.2g",
        epoch,
        run.config.epochs,
        train_loss,
        train_acc,
        val_loss,
        val_acc,
        record["lr"],
    )
    return record


def _report_early_stop(run: _Run, epoch: int) -> None:
    log.info(
        "early stopping at epoch %d: val loss has not improved for %d epochs; "
        "restoring the weights of epoch %d",
        epoch,
        run.config.patience,
        run.stopping.best_epoch,
    )


def _report_late_stop(run: _Run) -> None:
    if run.stops is not None and run.stops.received and run.world.is_main:
        # Asked during the last epoch's end, where nothing is left to save for.
        log.info("train: %s came after the last point to stop at; finishing", run.stops.received)


def _finish(run: _Run) -> TrainResult:
    """The result, and the model back at the best validation epoch's weights."""
    result, stopping, config = run.result, run.stopping, run.config
    result.best_epoch, result.best_val_loss = stopping.best_epoch, stopping.best_loss
    if not result.stopped_early and result.history and stopping.best_epoch != config.epochs:
        log.info(
            "trained all %d epochs; keeping the weights of epoch %d, whose val loss was lowest",
            config.epochs,
            stopping.best_epoch,
        )
    if stopping.best_state is not None:
        run.model.load_state_dict(stopping.best_state)
    return result


def train(
    model: CNNClassifier,
    data: Prepared,
    config: TrainConfig,
    *,
    generator: torch.Generator,
    device: torch.device,
    world: World = ONE_PROCESS,
    max_batches: int | None = None,
    on_epoch: Callable[[dict], None] | None = None,
    resume: Resume | None = None,
) -> TrainResult:
    """Train in place; on return the model holds the weights of the best validation epoch.

    Under DDP (`world` of several ranks, its process group joined) each rank trains on its
    share of every global batch and all ranks end with the same weights. `max_batches` caps
    batches per epoch (for smoke tests); `on_epoch` gets each epoch's record. With `resume`,
    training continues from that run's saved state (`on_epoch` first gets the records of the
    epochs already done) and saves it at every epoch end but the last, every
    `checkpoint_every` batches, and on SIGTERM or Ctrl-C (then raising `Stopped`); the
    caller removes it (`Resume.finished`) once its outputs are written.
    """
    run = _setup(model, data, config, generator, device, world, max_batches, resume)
    start_epoch, start_batch, sums = _resume(run, on_epoch)
    run.network = _wrap_for_ranks(run)
    with StopRequests() if resume is not None else contextlib.nullcontext() as run.stops:
        for epoch in range(start_epoch, config.epochs + 1):
            if world.size > 1:
                run.sampler.set_epoch(epoch)  # a new order each epoch, the same on every rank
            hook = None
            if resume is not None:  # the generator as the epoch begins decides its order
                hook = functools.partial(run.at_boundary, epoch, generator.get_state())
            train_loss, train_acc = train_epoch(
                run.network, run.loader, run.optimizer, config, generator=generator,
                device=device, n_batches=run.n_batches, desc=f"epoch {epoch}/{config.epochs}",
                world=world, start=start_batch, sums=sums, at_boundary=hook,
            )  # fmt: skip
            start_batch, sums = 0, (0.0, 0, 0)
            _sync_batch_norm(run)
            val_loss, val_acc = validate(model, data, config, device, world, run.resident)
            record = _report_epoch(run, epoch, train_loss, train_acc, val_loss, val_acc)
            if on_epoch is not None:
                on_epoch(record)
            run.scheduler.step(val_loss)
            # Patience running out at the last epoch is no early stop: the run ended anyway.
            no_gain = run.stopping.should_stop(model, epoch, val_loss)
            run.result.stopped_early = no_gain and epoch < config.epochs
            if resume is not None and epoch < config.epochs and not run.result.stopped_early:
                # The last epoch saves nothing: the stage writes the model right after.
                run.boundary(epoch + 1, 0, (0.0, 0, 0), None, due=True)
            if run.result.stopped_early:
                _report_early_stop(run, epoch)
                break
        _report_late_stop(run)
    return _finish(run)
