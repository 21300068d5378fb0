"""Images at the edges: the library's floats in [-1, 1] and uint8 (datasets, files, every FID network), one map each way."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Map float images in [-1, 1] to uint8 in [0, 255] (round to nearest, clip); uint8 passes through.

    Rounding (not truncation) makes the map the inverse of ``x / 127.5 - 1`` on the 256 levels, so a
    real image that went through the dataset's float conversion comes back to its original bytes.
    """
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"images must be a torch.Tensor, got {type(images).__name__}")
    if images.dtype == torch.uint8:
        return images
    if not images.is_floating_point():
        raise TypeError(f"images must be uint8 or a float tensor in [-1, 1], got dtype {images.dtype}")
    return ((images.detach().float() + 1) * 127.5).round_().clamp_(0, 255).to(torch.uint8)


def to_float(images: torch.Tensor) -> torch.Tensor:
    """Map uint8 images to float32 in [-1, 1]; float images pass through (the library's convention)."""
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"images must be a torch.Tensor, got {type(images).__name__}")
    if images.dtype == torch.uint8:
        return images.float() / 127.5 - 1
    if not images.is_floating_point():
        raise TypeError(f"images must be uint8 or a float tensor in [-1, 1], got dtype {images.dtype}")
    return images


def iter_batches(images, batch_size: int) -> Iterator[torch.Tensor]:
    """Yield (B, C, H, W) tensors from a tensor, or from an iterable of tensors or of (images, labels) pairs.

    A DataLoader over a library dataset (which yields ``(image, label)`` batches) and a list of sample
    batches both work, so nothing has to hold every image in memory at once.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    if isinstance(images, torch.Tensor):
        if images.dim() != 4:
            raise ValueError(f"images must have shape (N, C, H, W), got {tuple(images.shape)}")
        for start in range(0, images.shape[0], batch_size):
            yield images[start:start + batch_size]
        return
    if not isinstance(images, Iterable):
        raise TypeError("images must be a (N, C, H, W) tensor or an iterable of such batches "
                        f"(or of (images, labels) pairs), got {type(images).__name__}")
    for batch in images:
        if isinstance(batch, (tuple, list)):
            batch = batch[0]
        if not isinstance(batch, torch.Tensor) or batch.dim() != 4:
            raise ValueError("each batch must be a (B, C, H, W) tensor or an (images, labels) pair, got "
                             f"{type(batch).__name__} {tuple(getattr(batch, 'shape', ()))}")
        yield from iter_batches(batch, batch_size)


def count_images(images) -> int | None:
    """Number of images in a tensor or a DataLoader-like object (for progress bars); None if unknown."""
    if isinstance(images, torch.Tensor):
        return images.shape[0]
    dataset = getattr(images, "dataset", None)
    return len(dataset) if dataset is not None and hasattr(dataset, "__len__") else None


def random_hflip(images: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """The (N, C, H, W) batch with image i mirrored left-right where ``u[i] < 0.5`` (u ~ Uniform[0, 1), one per image)."""
    return torch.where((u < 0.5)[:, None, None, None], images.flip(3), images)
