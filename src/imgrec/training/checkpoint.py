"""The trained model (models/model.pt): weights plus everything needed to use them.

A checkpoint rebuilds its model without params.yaml (as nanoGPT's), and says
where it came from: the training config and the md5 of the prepared data it
was trained on. `save_checkpoint` writes it, `load_checkpoint` reads it back
with `weights_only=True`: a model file is data, never code to execute.
"""

import hashlib
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from imgrec.errors import ImgrecError, MissingOutput, first_line
from imgrec.files import atomic_file
from imgrec.training.model import CNNClassifier, ModelConfig

# What `images.decode` + `inference.to_tensor` do to an image before the model sees it.
PREPROCESSING = {"resample": "bilinear", "scale": "0..1"}


@dataclass(frozen=True)
class Checkpoint:
    model: CNNClassifier  # in eval mode
    class_names: list[str]
    img_size: int  # images are decoded to img_size x img_size RGB
    # How it was trained, as plain values (`TrainConfig.identity`): loading a model never
    # imports the training loop.
    train_config: dict
    prepared_md5: str  # what it was trained on (`prepared.prepared_md5`)


def save_checkpoint(
    path: str | os.PathLike,
    model: CNNClassifier,
    class_names: list[str],
    img_size: int,
    *,
    train_config: Mapping,
    prepared_md5: str,
) -> None:
    checkpoint = {
        "config": asdict(model.config),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "class_names": list(class_names),
        "preprocessing": {"img_size": img_size, **PREPROCESSING},
        "provenance": {"train_config": dict(train_config), "prepared_md5": prepared_md5},
    }
    with atomic_file(path) as tmp:
        torch.save(checkpoint, tmp)


def load_checkpoint(path: str | os.PathLike, device: torch.device | str = "cpu") -> Checkpoint:
    """The model rebuilt in eval mode on `device`, with its class names and provenance."""
    path = Path(path)
    if not path.exists():
        raise MissingOutput(f"no model at {path}; run `dvc repro` to produce it.")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        config = ModelConfig(
            **{**checkpoint["config"], "widths": tuple(checkpoint["config"]["widths"])}
        )
        model = CNNClassifier(config)
        model.load_state_dict(checkpoint["state_dict"])
        provenance = checkpoint["provenance"]
        loaded = Checkpoint(
            model=model.eval(),
            class_names=list(checkpoint["class_names"]),
            img_size=int(checkpoint["preprocessing"]["img_size"]),
            train_config=dict(provenance["train_config"]),
            prepared_md5=str(provenance["prepared_md5"]),
        )
    except Exception as error:
        # torch's own message advises weights_only=False: never, for a file from outside.
        raise ImgrecError(f"{path} is not an imgrec checkpoint ({first_line(error)}).") from error
    loaded.model.to(device)  # outside the try: a device problem is no format problem
    return loaded


def check_matches(checkpoint: Checkpoint, img_size: int, where: str) -> None:
    """Refuse images of another size than the model was trained on."""
    if checkpoint.img_size != img_size:
        raise ImgrecError(
            f"the model was trained on {checkpoint.img_size} px images, but {where} holds "
            f"{img_size} px ones; run `dvc repro` to bring them in step."
        )


def checkpoint_md5(path: str | os.PathLike) -> str:
    """The checkpoint file's md5: the catalog records it so a stale catalog is found exactly."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "md5").hexdigest()
