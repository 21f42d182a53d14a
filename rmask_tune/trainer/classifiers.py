"""Models with a classification head: encoders reading a text pair, and image classifiers."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from rmask_tune.tasks.base import ChoiceExample, ImageExample
from rmask_tune.trainer.causal import chunks, no_progress

# Leaf names of the classification heads that transformers' models put on top of the backbone.
HEAD_NAMES = ("classifier", "score")


class Classifier:
    """Cross-entropy training and argmax prediction; subclasses turn examples into model inputs."""

    def encode(self, example):
        """Examples are batched as they are."""
        return example

    def inputs(self, items: list) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def logits(self, model: nn.Module, items: list) -> torch.Tensor:
        return model(**self.inputs(items)).logits.float()

    def loss(self, model: nn.Module, items: list) -> torch.Tensor:
        """Mean cross-entropy of the gold labels."""
        labels = torch.tensor([item.label for item in items], device=self.device)
        return F.cross_entropy(self.logits(model, items), labels)

    def predict(self, model: nn.Module, items: list, batch_size: int, advance=no_progress) -> list[int]:
        """The highest-scoring class per item (``advance`` as in ``CausalChoice.predict``)."""
        predictions = []
        for batch in chunks(items, batch_size):
            predictions += self.logits(model, batch).argmax(-1).tolist()
            advance(len(batch))
        return predictions


class SequenceClassifier(Classifier):
    """An encoder with a sequence-classification head reading ``text_pair`` (the second text may be None)."""

    def __init__(self, tokenizer, max_length: int, device):
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.device = device

    def inputs(self, items: list[ChoiceExample]) -> dict[str, torch.Tensor]:
        first = [item.text_pair[0] for item in items]
        second = [item.text_pair[1] for item in items]
        encoded = self.tokenizer(
            first,
            second if any(s is not None for s in second) else None,
            padding=True,
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        )
        return {key: value.to(self.device) for key, value in encoded.items()}


class ImageClassifier(Classifier):
    """Images scaled to [0, 1], resized to the model's input size and normalized by ``mean`` / ``std``."""

    def __init__(self, size: int, mean, std, device):
        self.size = size
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
        self.device = device

    def inputs(self, items: list[ImageExample]) -> dict[str, torch.Tensor]:
        pixels = torch.from_numpy(np.stack([item.image for item in items])).permute(0, 3, 1, 2).float() / 255
        if pixels.shape[-2:] != (self.size, self.size):
            pixels = F.interpolate(pixels, size=(self.size, self.size), mode="bilinear", antialias=True)
        return {"pixel_values": ((pixels - self.mean) / self.std).to(self.device)}


def image_normalization(model_name: str, is_tiny: bool) -> tuple[list[float], list[float]]:
    """The mean and std the checkpoint's image processor uses; 0.5 (ViT's convention) for random-init models."""
    default = ([0.5] * 3, [0.5] * 3)
    if is_tiny:
        return default
    import transformers

    from rmask_tune.models import resolve_model_path

    try:
        processor = transformers.AutoImageProcessor.from_pretrained(resolve_model_path(model_name))
    except (OSError, ValueError):
        return default
    return list(processor.image_mean), list(processor.image_std)


def unfreeze_head(model: nn.Module) -> list[str]:
    """Make a frozen classification head trainable; the names of the parameters this changed.

    A head that already has trainable parameters (peft's ``modules_to_save``) is left alone.
    """
    changed = []
    for name, module in model.named_modules():
        if name.rsplit(".", 1)[-1] not in HEAD_NAMES:
            continue
        params = dict(module.named_parameters())
        if params and not any(p.requires_grad for p in params.values()):
            for leaf, param in params.items():
                param.requires_grad_(True)
                changed.append(f"{name}.{leaf}")
    return changed
