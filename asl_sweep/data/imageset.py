"""One decoded data set at one square size: what the image loader and the built-in signers
both produce (its own module so that neither imports the other)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class ImageSet:
    """Decoded images of one data set, all at one square size."""

    images: torch.Tensor  # uint8 [N, 3, S, S]
    labels: torch.Tensor  # int64 [N]
    classes: list[str]
    names: list[str]  # file path relative to the root, or a synthetic id
    digest: str  # the source content (files or generator settings), whatever the size
    skipped: list[str] = field(default_factory=list)  # "name: reason" under on_bad_image=skip

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def size(self) -> int:
        return int(self.images.shape[-1])

    @property
    def content_key(self) -> str:
        """Keys every cache derived from these pixels."""
        return f"{self.digest[:32]}|{self.size}"
