"""Batch augmentation on the device: the colour jitter and random erasing of the DNA authors' recipes.

The loaders (``dna_fast.data``) deliver cropped, flipped and normalized batches; ``BatchAugment`` adds what the
authors' timm pipelines also did (``distill.color_jitter`` / ``distill.random_erasing``, ``retrain.color_jitter`` /
``retrain.random_erasing``), on whole batches where the images already are.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

__all__ = ["BatchAugment"]


class BatchAugment:
    """The authors' extra augmentation (distillation; retraining), on normalized image batches on their device.

    Colour jitter (timm / torchvision ``ColorJitter(j, j, j)``: brightness, contrast and saturation factors drawn in
    ``[1 - j, 1 + j]`` per image, applied in a random order per image on the un-normalized image, clamped to [0, 1])
    and random erasing (timm's ``RandomErasing(p, mode="pixel")``: with probability ``p`` one rectangle of 2-33 % of
    the area, aspect ratio in [0.3, 3.3], filled with per-pixel standard normal noise in the normalized space). The
    draws are a pure function of ``(seed, step)``, so a resumed run augments as the uninterrupted one.

    Args:
        color_jitter: jitter factor ``j`` (0: off; the authors: 0.4).
        random_erasing: erasing probability ``p`` (0: off; the authors: 0.5).
        seed: augmentation seed.
        mean, std: the normalization of the batches (the loaders': ImageNet's).
    """

    def __init__(self, color_jitter: float = 0.0, random_erasing: float = 0.0, seed: int = 0,
                 mean: Sequence[float] = (0.485, 0.456, 0.406), std: Sequence[float] = (0.229, 0.224, 0.225)) -> None:
        if color_jitter < 0 or not 0.0 <= random_erasing <= 1.0:
            raise ValueError(f"color_jitter must be >= 0 and random_erasing in [0, 1], got {color_jitter}, "
                             f"{random_erasing}")
        self.color_jitter, self.random_erasing, self.seed = float(color_jitter), float(random_erasing), int(seed)
        self.mean, self.std = tuple(float(m) for m in mean), tuple(float(s) for s in std)

    @property
    def active(self) -> bool:
        return self.color_jitter > 0 or self.random_erasing > 0

    def __call__(self, images: torch.Tensor, step: int) -> torch.Tensor:
        """The augmented batch (a new tensor; ``images`` is not modified)."""
        if not self.active:
            return images
        gen = torch.Generator().manual_seed((self.seed * 1_000_003 + int(step) * 7_919 + 17) % 2**62)
        x = images.float().clone()
        if self.color_jitter > 0:
            x = self._jitter(x, gen)
        if self.random_erasing > 0:
            x = self._erase(x, gen)
        return x.to(images.dtype)

    def _jitter(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        n, dev = x.shape[0], x.device
        mean = torch.tensor(self.mean, device=dev).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=dev).view(1, -1, 1, 1)
        j = self.color_jitter
        factors = (torch.rand(n, 3, generator=gen) * 2 * j + 1 - j).clamp_min(0).to(dev)
        order = torch.argsort(torch.rand(n, 3, generator=gen), dim=1).to(dev)  # per image: op of each slot
        img = (x * std + mean).clamp(0, 1)
        gray_w = torch.tensor((0.299, 0.587, 0.114), device=dev).view(1, 3, 1, 1)
        for slot in range(3):
            op = order[:, slot].view(n, 1, 1, 1)
            for k in range(3):
                f = factors[:, k].view(n, 1, 1, 1)
                if k == 0:  # brightness: blend with black
                    out = img * f
                else:
                    gray = (img * gray_w).sum(1, keepdim=True)
                    # contrast: blend with the image's mean grey level; saturation: with its grey image
                    other = gray.mean((2, 3), keepdim=True) if k == 1 else gray
                    out = f * img + (1 - f) * other
                img = torch.where(op == k, out.clamp(0, 1), img)
        return (img - mean) / std

    def _erase(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        n, c, h, w = x.shape
        area = h * w
        for i in range(n):
            if float(torch.rand((), generator=gen)) >= self.random_erasing:
                continue
            for _ in range(10):
                target = area * float(torch.empty(()).uniform_(0.02, 1 / 3, generator=gen))
                aspect = math.exp(float(torch.empty(()).uniform_(math.log(0.3), math.log(1 / 0.3), generator=gen)))
                eh, ew = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
                if eh < h and ew < w:
                    top = int(torch.randint(0, h - eh + 1, (), generator=gen))
                    left = int(torch.randint(0, w - ew + 1, (), generator=gen))
                    x[i, :, top:top + eh, left:left + ew] = torch.randn(c, eh, ew, generator=gen).to(x.device)
                    break
        return x
