"""Training the classifier that scores guided samples (``task: classifier``), with the diffusion trainer.

``python -m diffusion_lib train --config configs/fashion_classifier.yaml`` comes here through
:func:`diffusion_lib.training.train`: ``model: classifier`` builds a
:class:`~diffusion_lib.models.Classifier` (fields from ``model_overrides``; channels, size and classes
from the dataset), the loss is cross-entropy, and the Trainer brings AdamW, EMA, checkpoints, exact
resume and the log. At the end the EMA weights are evaluated on the whole test split and
``<output_dir>/classifier.pt`` is written with the test accuracy.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from ... import checkpoint as ckpt_io
from ...checkpoint import load_classifier
from ...data import dataset_info, load_dataset
from ...data.images import random_hflip
from ...models import Classifier, ClassifierConfig
from ..config import ConfigError, TrainConfig
from ..distributed import DistInfo
from ..trainer import Trainer

MODEL_NAME = "classifier"


def build_classifier_config(config: TrainConfig, dataset_info=None):
    """ClassifierConfig from ``model_overrides``, with in_channels, image_size and num_classes from the data."""
    if config.model != MODEL_NAME:
        raise ConfigError(f"config key 'model' must be {MODEL_NAME!r} when task is 'classifier' (its fields come "
                          f"from model_overrides), got {config.model!r}")
    fields = {}
    if dataset_info is not None:
        fields = {"in_channels": dataset_info.channels, "num_classes": dataset_info.num_classes,
                  "image_size": config.image_size or dataset_info.image_size}
    try:
        return ClassifierConfig.from_dict({**fields, **config.model_overrides})
    except (TypeError, ValueError) as e:
        raise ConfigError(f"config key 'model_overrides': {e}") from e


def classifier_loss_fn(config: TrainConfig):
    """Cross-entropy, with horizontal flips drawn from the step's rng when ``hflip``."""

    def loss_fn(model, x, y, rng):
        if config.hflip:
            x = random_hflip(x, rng.rand())
        return F.cross_entropy(model(x).float(), y)

    return loss_fn


@torch.no_grad()
def dataset_accuracy(model, dataset, *, batch_size: int = 500, device=None) -> float:
    """Fraction of ``dataset``'s images whose argmax logit is their label (eval mode)."""
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    correct = total = 0
    try:
        for x, y in torch.utils.data.DataLoader(dataset, batch_size=batch_size):
            correct += int((model(x.to(device)).argmax(1).cpu() == y).sum())
            total += len(y)
    finally:
        model.train(was_training)
    return correct / total


def train_classifier(config: TrainConfig, *, resume=False, dataset=None, dist_info=None, device=None) -> dict:
    """Train the classifier as ``config`` says; returns the Trainer's summary plus ``test_accuracy``
    (EMA weights, whole test split) and ``classifier`` (the exported file)."""
    dist_info = dist_info or DistInfo()
    info = dataset_info(config.dataset) if dataset is None else None
    model_config = build_classifier_config(config, info)
    if dataset is None:
        dataset = load_dataset(config.dataset, "train", root=config.data_root, image_size=model_config.image_size,
                               **config.dataset_kwargs)
    torch.manual_seed(config.seed)
    model = Classifier(model_config)
    trainer = Trainer(config, model, dataset, classifier_loss_fn(config),
                      extra_state={"kind": "classifier", "classifier_config": model_config.to_dict()},
                      dist_info=dist_info, device=device)
    result = trainer.fit(resume=resume)
    if not dist_info.is_main or result["checkpoint"] is None or info is None:
        return result
    out = Path(config.output_dir) / "classifier.pt"
    if result["start_step"] == result["step"] and out.is_file():  # a finished run, reused: nothing new
        return {**result, "test_accuracy": ckpt_io.load_checkpoint(out)["test_accuracy"], "classifier": str(out)}
    test = load_dataset(config.dataset, "test", root=config.data_root, image_size=model_config.image_size,
                        **config.dataset_kwargs)
    accuracy = dataset_accuracy(load_classifier(result["checkpoint"], device=trainer.device), test)
    state = ckpt_io.load_checkpoint(result["checkpoint"])
    ckpt_io.save_checkpoint(out, {
        "kind": "classifier", "classifier_config": state["classifier_config"], "ema": state["ema"],
        "step": state["step"], "config": state["config"], "test_accuracy": accuracy,
        "test_images": len(test), "torch_version": str(torch.__version__)})
    return {**result, "test_accuracy": accuracy, "classifier": str(out)}
