"""Per-operation fingerprints of the kernels a training run computes with.

    python -m imgrec.fingerprint [--out FILE] [--against REV:PATH | FILE]

Which kernels oneDNN, ATen and BLAS pick depends on the machine, and not only on its
instruction set (an Intel Xeon and an AMD EPYC Zen 4 with the same AVX2 caps trained
apart from the first epoch). So each training run hashes every operation of the
model's math (each conv layer's forward, backward data and backward weights, batch
norm, pooling, the linear layers, cross-entropy, three Adam steps of the whole model,
the embedding forward) on fixed inputs made by NumPy's PCG64, at the run's image size,
batch size, memory layout, precision, threads and device. The train stage writes the
result beside the model; `imgrec.reproduction` compares it with the committed run's:
equal fingerprints promise equal bytes, and differing ones name the operations whose
kernels differ here. The file holds nothing about the machine but those hashes and the
settings they were made with, so two machines whose kernels agree write the same bytes.
"""

import argparse
import hashlib
import itertools
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from imgrec.errors import EXIT_FAILED, ImgrecError
from imgrec.pipeline import kernels


@dataclass(frozen=True)
class Setup:
    """What decides which kernels run: the run's shapes, layout, precision and threads."""

    img_size: int
    batch_size: int
    channels_last: bool
    precision: str
    num_threads: int
    device: str  # "cpu" or "cuda": the kind, not the index


@dataclass(frozen=True)
class Fingerprint:
    setup: dict[str, str]
    operations: dict[str, str]  # name -> md5 of the output's bytes, in the order computed

    def render(self) -> str:
        head = [f"# {key} {value}" for key, value in self.setup.items()]
        return (
            "\n".join([*head, *(f"{name} {md5}" for name, md5 in self.operations.items())]) + "\n"
        )

    @classmethod
    def parse(cls, text: str) -> "Fingerprint":
        setup, operations = {}, {}
        for line in text.splitlines():
            if line.startswith("# "):
                key, _, value = line[2:].partition(" ")
                setup[key] = value
            elif line.strip():
                name, _, md5 = line.partition(" ")
                operations[name] = md5
        return cls(setup, operations)

    def differing(self, other: "Fingerprint") -> list[str]:
        """Operations whose bits differ between the two (or that only one of them has), plus
        `setup:KEY` for each setting that differs."""
        settings = [
            f"setup:{key}"
            for key in self.setup.keys() | other.setup.keys()
            if self.setup.get(key) != other.setup.get(key)
        ]
        names = list(dict.fromkeys([*self.operations, *other.operations]))
        return sorted(settings) + [
            name for name in names if self.operations.get(name) != other.operations.get(name)
        ]

    def root(self, other: "Fingerprint") -> tuple[list[str], list[str]]:
        """`differing`, split into where the difference starts and what follows from it.

        A setting or a single operation is computed from fixed inputs alone, so each that
        differs is a root of its own; the whole model's steps take every earlier step's
        result, so only the first of them that differs can be a root, and only where nothing
        before it differs: the rest follow."""
        differing = self.differing(other)
        roots = [name for name in differing if not name.startswith(MODEL_STEPS)]
        chain = [name for name in differing if name.startswith(MODEL_STEPS)]
        if not roots and chain:
            roots, chain = chain[:1], chain[1:]
        return roots, chain


# The operations of the whole model, in the order they run: each takes the ones before it.
MODEL_STEPS = "model."
# The embedding forward runs at the batch size embed and the query use (inference.py).
EMBED_BATCH = 256
# Layers fingerprinted one by one are as wide as the model's (model.ModelConfig.widths).
ADAM_STEPS = 3


class _Inputs:
    """The fixed inputs, made by NumPy's PCG64 in one order on every machine, and the hashes."""

    def __init__(self, setup: Setup, device):
        import numpy as np
        import torch

        self.np, self.torch = np, torch
        self.device = device
        self.layout = torch.channels_last if setup.channels_last else torch.contiguous_format
        self.rng = np.random.default_rng(12345)
        self.operations: dict[str, str] = {}
        self.target = None  # cross-entropy's labels, which the model's steps take too

    def tensor(self, *shape: int, scale: float = 1.0, grad: bool = False):
        array = (self.rng.standard_normal(shape) * scale).astype(self.np.float32)
        t = self.torch.from_numpy(array).to(self.device)
        t = t.contiguous(memory_format=self.layout) if t.dim() == 4 else t
        return t.requires_grad_(grad)

    def record(self, name: str, t) -> None:
        data = t.detach().float().contiguous().cpu().numpy().tobytes()
        self.operations[name] = hashlib.md5(data).hexdigest()


def compute(setup: Setup, device=None, widths: tuple[int, ...] = (32, 64, 128, 256)) -> Fingerprint:
    """Hash each operation of a training step as `setup` runs it, on `device` (the run's, say
    `cuda:1`; default: `setup.device`, the kind alone). Call it before seeding the run: it
    draws torch's global RNG (dropout, the model's initialisation)."""
    import torch

    device = torch.device(device or setup.device)
    inputs = _Inputs(setup, device)
    with torch.autocast(device.type, torch.bfloat16, enabled=setup.precision == "bf16"):
        _single_operations(inputs, setup, widths)
        _model_steps(inputs, setup, widths)
    settings = {key: str(value).lower() for key, value in asdict(setup).items()}
    return Fingerprint({"kernels": kernels.active(), **settings}, inputs.operations)


def _single_operations(inputs: _Inputs, setup: Setup, widths: tuple[int, ...]) -> None:
    """Each layer's passes on inputs of their own: every one a root of what follows."""
    import torch
    import torch.nn.functional as F

    tensor, record = inputs.tensor, inputs.record
    batch, size = min(setup.batch_size, 32), setup.img_size
    for index, (c_in, c_out) in enumerate(itertools.pairwise((3, *widths)), start=1):
        x = tensor(batch, c_in, size, size, grad=True)
        w = tensor(c_out, c_in, 3, 3, scale=0.1, grad=True)
        b = tensor(c_out, scale=0.1, grad=True)
        y = F.conv2d(x, w, b, padding=1)
        record(f"conv{index}.forward", y)
        gx, gw, gb = torch.autograd.grad(y, (x, w, b), tensor(*y.shape))
        record(f"conv{index}.backward_data", gx)
        record(f"conv{index}.backward_weights", gw)
        record(f"conv{index}.backward_bias", gb)
        size //= 2
    half = max(setup.img_size // 2, 1)
    x = tensor(batch, widths[1], half, half, grad=True)
    y = F.batch_norm(x, None, None, training=True)
    record("batchnorm.forward", y)
    record("batchnorm.backward", torch.autograd.grad(y, x, tensor(*y.shape))[0])
    y = F.max_pool2d(F.relu(x), 2)
    record("relu_maxpool.forward", y)
    record("relu_maxpool.backward", torch.autograd.grad(y, x, tensor(*y.shape))[0])
    x = tensor(batch, widths[-1] * 16, grad=True)
    w = tensor(512, widths[-1] * 16, scale=0.02, grad=True)
    y = F.linear(x, w)
    record("linear.forward", y)
    gx, gw = torch.autograd.grad(y, (x, w), tensor(*y.shape))
    record("linear.backward_data", gx)
    record("linear.backward_weights", gw)
    logits = tensor(batch, 10, grad=True)
    inputs.target = torch.from_numpy(inputs.rng.integers(0, 10, batch)).to(inputs.device)
    loss = F.cross_entropy(logits, inputs.target)
    record("cross_entropy.forward", loss)
    record("cross_entropy.backward", torch.autograd.grad(loss, logits)[0])


def _model_steps(inputs: _Inputs, setup: Setup, widths: tuple[int, ...]) -> None:
    """The whole model as training runs it (the pool and everything between the layers
    included): a few of training's Adam steps from NumPy-made weights, then the embedding
    forward. Each takes the results of the ones before it."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    from imgrec.training.model import CNNClassifier, ModelConfig, adam

    record, device, layout, rng = inputs.record, inputs.device, inputs.layout, inputs.rng
    model = CNNClassifier(ModelConfig(num_classes=10, widths=widths))
    model.to(device=device, memory_format=layout)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(inputs.tensor(*p.shape, scale=0.05))
    optimizer = adam(model.parameters(), lr=1e-3)  # training's step
    torch.manual_seed(0)  # dropout's masks
    batch, size = min(setup.batch_size, 32), setup.img_size
    images = torch.from_numpy(rng.random((batch, 3, size, size), dtype=np.float32))
    images = images.to(device).contiguous(memory_format=layout)
    for step in range(ADAM_STEPS):
        loss = F.cross_entropy(model.train()(images), inputs.target)
        optimizer.zero_grad()
        loss.backward()
        record(f"model.step{step}.loss", loss)
        record(f"model.step{step}.grad_first_conv", model.features[0][0].weight.grad)
        record(f"model.step{step}.grad_embedding", model.embed[0].weight.grad)
        optimizer.step()
        record(f"model.step{step}.weights", torch.cat([p.flatten() for p in model.parameters()]))
    images = torch.from_numpy(rng.random((EMBED_BATCH, 3, size, size), dtype=np.float32))
    with torch.no_grad():
        embedding = model.eval().forward_catalog(images.to(device).contiguous(memory_format=layout))
    record("model.embedding", embedding)


def save(path: str | Path, fingerprint: Fingerprint) -> None:
    from imgrec.files import atomic_file

    with atomic_file(path) as tmp:
        tmp.write_text(fingerprint.render())


def load(path: str | Path) -> Fingerprint:
    return Fingerprint.parse(Path(path).read_text())


def committed(path: str | Path, revision: str = "HEAD") -> Fingerprint | None:
    """The fingerprint committed at `revision`, or None (no git, nothing committed there)."""
    try:
        done = subprocess.run(["git", "show", f"{revision}:./{path}"],
                              capture_output=True, text=True, check=False)  # fmt: skip
    except OSError:
        return None
    return Fingerprint.parse(done.stdout) if done.returncode == 0 and done.stdout else None


def verdict(here: Fingerprint, reference: Fingerprint | None, reference_name: str) -> str:
    """One line, short enough for a terminal: does this machine compute the reference run's
    bits, and if not, where does the difference start?"""
    if reference is None:
        return f"kernel fingerprint: no {reference_name} to compare with"
    roots, follow = here.root(reference)
    if not roots:
        return f"kernel fingerprint: same as the {reference_name}'s, so the same bits are due here"
    return (
        f"kernel fingerprint: differs from the {reference_name}'s at {where(roots, follow)}: "
        + ("tolerances apply")
    )


def where(roots: list[str], follow: list[str]) -> str:
    """`root`'s answer in words: the first root, +how many more roots, how many follow."""
    more = f" +{len(roots) - 1}" if len(roots) > 1 else ""
    after = f" ({len(follow)} later follow)" if follow else ""
    return f"{roots[0]}{more}{after}"


def setup_for(config, img_size: int, device) -> Setup:
    """The setup of a run of `config` (the train stage's) on images of `img_size` on `device`."""
    return Setup(
        img_size=int(img_size),
        batch_size=int(config.batch_size),
        channels_last=bool(config.channels_last),
        precision=str(config.precision),
        num_threads=int(config.num_threads),
        device=str(getattr(device, "type", device)),
    )


def record(path: str | Path, setup: Setup, device=None) -> str:
    """Fingerprint this machine's kernels for `setup` on `device` and save it at `path`; return
    one line on whether the run committed at `path` was made with the same bits."""
    fingerprint = compute(setup, device)
    save(path, fingerprint)
    return verdict(fingerprint, committed(path), "committed run")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m imgrec.fingerprint",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--params", default="params.yaml", help="the run's params")
    parser.add_argument("--out", help="write the fingerprint here (default: print it)")
    parser.add_argument(
        "--against",
        help="compare with this fingerprint: a file, or REV:PATH for one committed in git",
    )
    args = parser.parse_args(argv)
    from imgrec.pipeline.stage import read_params

    try:
        params = read_params(args.params)
        kernels.apply(str(params.get("kernels", "portable")))  # before torch and numpy load
        from imgrec.pipeline import runtime
        from imgrec.training.train import TrainConfig

        # The train stage's params, checked as it checks them (one sentence on a bad one);
        # img_size is prepare's, whose config would bring the decoders into train's deps.
        config = TrainConfig.from_params(params)
        img_size = params.get("img_size")
        if not isinstance(img_size, int) or isinstance(img_size, bool) or img_size < 1:
            raise ImgrecError(f"param img_size must be a positive integer, got {img_size!r}.")
        runtime.make_deterministic(config.num_threads)
        runtime.set_precision(config.precision)  # TF32 on CUDA as train sets it
        device = runtime.pick_device(config.device)
        fingerprint = compute(setup_for(config, img_size, device), device)
        reference = None
        if args.against:
            revision, colon, path = args.against.partition(":")
            reference = committed(path, revision) if colon else load(args.against)
            if reference is None:
                raise ImgrecError(f"--against {args.against}: no fingerprint there.")
    except (ImgrecError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_FAILED
    print(kernels.machine_line(), file=sys.stderr)
    if args.out:
        save(args.out, fingerprint)
    else:
        print(fingerprint.render(), end="")
    if args.against:
        print(verdict(fingerprint, reference, args.against), file=sys.stderr)
        return 0 if not fingerprint.differing(reference) else EXIT_FAILED
    return 0


if __name__ == "__main__":
    sys.exit(main())
