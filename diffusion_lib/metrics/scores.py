"""Classifier-based scores: the Inception Score (online), its offline stand-in from a project classifier,
class accuracy and within-class diversity (the measures of the classifier-free guidance chapter).

IS (Salimans et al. 2016) = exp E_x KL(p(y|x) ‖ p(y)) with Inception's 1008 ImageNet logits. The same
formula on another classifier's logits is a different number; it is reported as "classifier_score[...]",
never as IS.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from ..data.images import count_images, iter_batches, to_float, to_uint8
from ..device import pick_device
from .features import device_of
from .inception import torchmetrics_inception_net


@dataclass(frozen=True)
class ScoreResult:
    name: str  # "inception_score" or "classifier_score[<model>]"
    mean: float
    std: float
    n: int
    splits: int

    def __float__(self) -> float:
        return self.mean

    def to_dict(self) -> dict:
        return asdict(self)


def score_from_logits(logits: torch.Tensor, splits: int = 10) -> tuple[float, float]:
    """exp E KL(p(y|x) ‖ p(y)) on each of ``splits`` consecutive chunks; mean and std (ddof 0, as Salimans et al.)."""
    if logits.dim() != 2 or logits.shape[0] < splits or splits < 1:
        raise ValueError(f"logits must be (N, K) with N >= splits >= 1, got {tuple(logits.shape)}, splits={splits}")
    log_p = torch.log_softmax(logits.double(), dim=1)
    scores = []
    for chunk in log_p.chunk(splits):
        log_py = torch.logsumexp(chunk, dim=0) - torch.log(torch.tensor(float(chunk.shape[0]), dtype=torch.float64))
        kl = (chunk.exp() * (chunk - log_py)).sum(1).mean()
        scores.append(kl.exp())
    scores = torch.stack(scores)
    return float(scores.mean()), float(scores.std(correction=0))


def model_outputs(model: Callable, images, *, fn: Callable | None = None, batch_size: int = 256,
                  device=None, progress: bool = False) -> torch.Tensor:
    """``fn(batch)`` (default ``model(batch)``) over images as [-1, 1] floats, batched under inference_mode,
    with the model in eval mode."""
    fn = fn or model
    dev = torch.device(device) if device is not None else (
        device_of(model) if isinstance(model, nn.Module) else torch.device("cpu"))
    outputs = []
    training = isinstance(model, nn.Module) and model.training
    if training:  # dropout and batch statistics off while measuring; restored below
        model.eval()
    try:
        with torch.inference_mode(), tqdm(total=count_images(images), unit="img", disable=not progress) as bar:
            for batch in iter_batches(images, batch_size):
                outputs.append(fn(to_float(batch.to(dev))).float().cpu())
                bar.update(batch.shape[0])
    finally:
        if training:
            model.train()
    if not outputs:
        raise ValueError("images is empty")
    return torch.cat(outputs)


def classifier_features(classifier: nn.Module, images, **kwargs) -> torch.Tensor:
    """Penultimate features: ``classifier.features(x)`` when the classifier has that method, else its logits."""
    return model_outputs(classifier, images, fn=getattr(classifier, "features", None), **kwargs)


def classifier_score(images, classifier: nn.Module, *, splits: int = 10, name: str | None = None,
                     **kwargs) -> ScoreResult:
    """The IS formula on a project classifier's logits (the offline stand-in for IS; not comparable with IS)."""
    logits = model_outputs(classifier, images, **kwargs)
    mean, std = score_from_logits(logits, splits)
    return ScoreResult(f"classifier_score[{name or type(classifier).__name__}]", mean, std, logits.shape[0], splits)


def inception_score(images, *, splits: int = 10, batch_size: int = 50, device=None, weights_path=None,
                    seed: int = 0, progress: bool = True) -> ScoreResult:
    """IS with torchmetrics' ``InceptionScore`` (1008 unbiased logits, TF1 resize); needs its weights online.

    torchmetrics shuffles before splitting (seeded by ``seed`` here) and reports the ddof-1 std.
    """
    from torchmetrics.image.inception import InceptionScore

    net = torchmetrics_inception_net("logits_unbiased", weights_path)
    dev = pick_device(device)
    with warnings.catch_warnings():  # its note that it keeps all logits in memory: 1008 floats per image here
        warnings.filterwarnings("ignore", message=".*save all extracted features", category=UserWarning)
        metric = InceptionScore(feature=net, splits=splits).to(dev)
    with torch.inference_mode(), tqdm(total=count_images(images), unit="img", disable=not progress,
                                      desc="inception score") as bar:
        for batch in iter_batches(images, batch_size):
            x = to_uint8(batch.to(dev))
            metric.update(x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x)
            bar.update(batch.shape[0])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        mean, std = metric.compute()
    n = sum(f.shape[0] for f in metric.features)
    return ScoreResult("inception_score", float(mean), float(std), n, splits)


def class_accuracy(images, labels: torch.Tensor, classifier: nn.Module, **kwargs) -> float:
    """Fraction of images the classifier assigns to their intended label (argmax of its logits)."""
    logits = model_outputs(classifier, images, **kwargs)
    labels = torch.as_tensor(labels).cpu()
    if labels.shape != (logits.shape[0],):
        raise ValueError(f"labels must have shape ({logits.shape[0]},), got {tuple(labels.shape)}")
    return float((logits.argmax(1) == labels).double().mean())


def within_class_diversity(features: torch.Tensor, labels: torch.Tensor) -> dict:
    """Mean pairwise Euclidean distance of ``features`` within each class (classes with >= 2 members).

    Returns ``{"mean": average over classes, "per_class": {label: value}}``; guidance lowers it.
    """
    labels = torch.as_tensor(labels).cpu()
    features = torch.as_tensor(features).double().cpu()
    if features.dim() != 2 or labels.shape != (features.shape[0],):
        raise ValueError(f"features must be (N, D) and labels (N,), got {tuple(features.shape)} and "
                         f"{tuple(labels.shape)}")
    per_class = {int(c): float(torch.pdist(features[labels == c]).mean())
                 for c in labels.unique() if int((labels == c).sum()) >= 2}
    if not per_class:
        raise ValueError("no class has two or more images")
    return {"mean": sum(per_class.values()) / len(per_class), "per_class": per_class}
