"""Saving and loading a trained model with everything needed to use it without params.yaml."""

import hashlib
import os
from dataclasses import asdict
from pathlib import Path

import torch

from imgrec.errors import ImgrecError
from imgrec.files import atomic_file
from imgrec.model import CNNClassifier, ModelConfig


def save_checkpoint(
    path: str | os.PathLike, model: CNNClassifier, class_names: list[str], img_size: int
) -> None:
    checkpoint = {
        "config": asdict(model.config),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "class_names": list(class_names),
        # The preprocessing `images.decode` + `inference.to_tensor` apply at this size.
        "preprocessing": {"img_size": img_size, "resample": "bilinear", "scale": "0..1"},
    }
    with atomic_file(path) as tmp:
        torch.save(checkpoint, tmp)


def load_checkpoint(
    path: str | os.PathLike, device: torch.device | str = "cpu"
) -> tuple[CNNClassifier, dict]:
    """Rebuild the model in eval mode, with its class names and preprocessing."""
    path = Path(path)
    if not path.exists():
        raise ImgrecError(f"no model at {path}; run `dvc repro` (or `dvc pull`) to produce it.")
    try:
        # weights_only: a checkpoint is data, never code to execute.
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        config = ModelConfig(
            **{**checkpoint["config"], "widths": tuple(checkpoint["config"]["widths"])}
        )
        model = CNNClassifier(config)
        model.load_state_dict(checkpoint["state_dict"])
    except Exception as error:
        raise ImgrecError(f"{path} is not an imgrec checkpoint: {error}") from error
    info = {"class_names": checkpoint["class_names"], "preprocessing": checkpoint["preprocessing"]}
    return model.to(device).eval(), info


def checkpoint_md5(path: str | os.PathLike) -> str:
    """The checkpoint file's md5: the catalog records it so a stale catalog is found exactly."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "md5").hexdigest()
