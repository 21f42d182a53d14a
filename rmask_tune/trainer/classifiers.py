"""Models with a classification head: encoders reading a text pair, image classifiers, and CLIP's zero-shot
image classifier (a frozen head of class-name text embeddings)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from rmask_tune.errors import RmaskError
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


@dataclass(frozen=True)
class ImagePreprocessing:
    """How images become pixel values: scaled to [0, 1], resized to ``size`` x ``size`` (squashed, or with
    ``center_crop`` the short side scaled to ``size`` and the centre cut out), normalized by ``mean`` / ``std``.

    ``interpolation`` is a ``torch.nn.functional.interpolate`` mode (``bilinear`` or ``bicubic``).
    """

    size: int
    mean: tuple[float, ...] = (0.5, 0.5, 0.5)
    std: tuple[float, ...] = (0.5, 0.5, 0.5)
    center_crop: bool = False
    interpolation: str = "bilinear"

    def __call__(self, images: list[np.ndarray]) -> torch.Tensor:
        """(N, 3, size, size) float32 pixel values from HxWx3 uint8 images (sizes may differ)."""
        mean = torch.tensor(self.mean, dtype=torch.float32).view(1, 3, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32).view(1, 3, 1, 1)
        pixels = torch.cat([self.resize(torch.from_numpy(image).permute(2, 0, 1)[None] / 255) for image in images])
        return (pixels - mean) / std

    def resize(self, pixels: torch.Tensor) -> torch.Tensor:
        height, width = pixels.shape[-2:]
        if self.center_crop:
            scale = self.size / min(height, width)
            target = (max(self.size, round(height * scale)), max(self.size, round(width * scale)))
        else:
            target = (self.size, self.size)
        if (height, width) != target:
            pixels = F.interpolate(pixels, size=target, mode=self.interpolation, antialias=True).clamp(0, 1)
        top, left = (target[0] - self.size) // 2, (target[1] - self.size) // 2
        return pixels[..., top : top + self.size, left : left + self.size]


def image_preprocessing(model_name: str, model: nn.Module) -> ImagePreprocessing:
    """The preprocessing of ``model_name``'s image processor, at the model's input size.

    Random-init models: CLIP's published mean/std with its bicubic resize and centre crop for CLIP
    (the defaults of transformers' CLIPImageProcessor), else 0.5 (ViT's convention) with a bilinear resize.
    A checkpoint without an image processor gets the same as its random-init counterpart.
    """
    from rmask_tune.models import TINY_CONFIGS, ZERO_SHOT_IMAGE_TYPES

    config = model.config
    is_clip = config.model_type in ZERO_SHOT_IMAGE_TYPES
    size = (config.vision_config if is_clip else config).image_size
    if is_clip:
        from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

        default = ImagePreprocessing(size, tuple(OPENAI_CLIP_MEAN), tuple(OPENAI_CLIP_STD), True, "bicubic")
    else:
        default = ImagePreprocessing(size)
    if model_name in TINY_CONFIGS:
        return default
    import transformers

    from rmask_tune.models import resolve_model_path

    try:
        processor = transformers.AutoImageProcessor.from_pretrained(resolve_model_path(model_name))
    except (OSError, ValueError):
        return default
    return ImagePreprocessing(
        size,
        tuple(processor.image_mean),
        tuple(processor.image_std),
        bool(getattr(processor, "do_center_crop", False)),
        "bicubic" if int(getattr(processor, "resample", 2)) == 3 else "bilinear",  # PIL's BICUBIC is 3
    )


class ImageClassifier(Classifier):
    """An image classifier reading images through ``preprocess``."""

    def __init__(self, preprocess: ImagePreprocessing, device):
        self.preprocess = preprocess
        self.device = device

    def inputs(self, items: list[ImageExample]) -> dict[str, torch.Tensor]:
        return {"pixel_values": self.preprocess([item.image for item in items]).to(self.device)}


class ZeroShotImageClassifier(ImageClassifier):
    """CLIP's zero-shot classifier as a frozen head: ``scale * normalize(image) @ normalize(text)^T``.

    The text embeddings of the class prompts (``prompt`` with ``{}`` replaced by each class name) and the
    scale (CLIP's learned temperature) are computed once, from the model as it is at construction, and kept
    fixed; only the image embeddings move with training.
    """

    def __init__(self, model: nn.Module, tokenizer, class_names, prompt: str, preprocess: ImagePreprocessing, device):
        super().__init__(preprocess, device)
        vocab = model.config.text_config.vocab_size
        if len(tokenizer) > vocab:
            raise RmaskError(f"the tokenizer has {len(tokenizer)} tokens, more than the {vocab} of the text tower")
        prompts = [prompt.format(name) for name in class_names]
        encoded = tokenizer(
            prompts,
            padding=True,
            truncation=True,
            max_length=model.config.text_config.max_position_embeddings,
            return_tensors="pt",
        )
        with torch.no_grad():
            text = model.get_text_features(**{key: value.to(device) for key, value in encoded.items()}).pooler_output
            self.scale = model.logit_scale.exp().item()
        self.text_embeds = F.normalize(text.float(), dim=-1)

    def logits(self, model: nn.Module, items: list) -> torch.Tensor:
        image = model.get_image_features(**self.inputs(items)).pooler_output
        return self.scale * F.normalize(image.float(), dim=-1) @ self.text_embeds.T


# The parts of an image-text model that make its zero-shot head: the text tower, its projection, the scale.
TEXT_SIDE = ("text_model", "text_projection", "logit_scale")
# Methods whose trainable parameters are read off requires_grad across the whole model (no targets).
WHOLE_MODEL_METHODS = ("full", "bitfit")


def freeze_text_side(setup) -> str | None:
    """Keep a zero-shot head frozen; a note when this froze something.

    Methods that train every parameter of a kind model-wide (``WHOLE_MODEL_METHODS``) get the text side
    frozen; a method that was pointed at it is refused, since the head is computed once, before training.
    """
    from rmask_tune.masking.targets import count_parameters

    text_side = [
        (name, param)
        for name, param in setup.model.named_parameters()
        if param.requires_grad and set(TEXT_SIDE) & set(name.split("."))
    ]
    if not text_side:
        return None
    if setup.method not in WHOLE_MODEL_METHODS:
        raise RmaskError(
            f"the zero-shot head is frozen, but method '{setup.method}' trains {text_side[0][0]} of the text side: "
            "choose targets in the vision tower (e.g. 'vision_model\\..*')"
        )
    for _, param in text_side:
        param.requires_grad_(False)
    setup.trainable_params = count_parameters(setup.model, trainable_only=True)
    return f"the zero-shot head's text side ({', '.join(TEXT_SIDE)}) stays frozen under {setup.method}"


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
