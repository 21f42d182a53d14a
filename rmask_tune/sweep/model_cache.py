"""A per-process cache of pristine base models and tokenizers, so a reused Tune worker loads each once.

Masking and peft change a model in place, so every trial gets a deep copy of the cached original. A
load that draws from torch's global RNG (a freshly initialised classification head) depends on the
seed set before it: such an entry is only reused for the same RNG state, and the RNG is left exactly as
the real load leaves it, so a cached trial trains bit-for-bit like an uncached one.
"""

from __future__ import annotations

import contextlib
import copy
import time
from dataclasses import dataclass
from typing import Any, Iterator

import torch

# Above this size a second copy in memory costs more than reloading saves.
MAX_CACHED_BYTES = 4 * 2**30


@dataclass
class _Entry:
    model: torch.nn.Module
    rng_before: torch.Tensor
    rng_after: torch.Tensor

    @property
    def seed_free(self) -> bool:
        return torch.equal(self.rng_before, self.rng_after)


class ModelCache:
    """Loaded models by (name, head, num_labels, dtype, device) and tokenizers by name, with load timing."""

    def __init__(self) -> None:
        self.models: dict[tuple, _Entry] = {}
        self.tokenizers: dict[str, Any] = {}
        self.hits = self.misses = 0
        self.load_s = 0.0  # seconds spent loading or copying, since the last ``reset_stats``

    def load_model(self, load, name: str, **kwargs) -> torch.nn.Module:
        """``load(name, **kwargs)``, or a deep copy of what it returned before for the same key."""
        started = time.perf_counter()
        key = (name, *sorted((k, str(v)) for k, v in kwargs.items()))
        entry, rng = self.models.get(key), torch.get_rng_state()
        if entry is not None and (entry.seed_free or torch.equal(entry.rng_before, rng)):
            self.hits += 1
            torch.set_rng_state(entry.rng_after)
            model = copy.deepcopy(entry.model)
        else:
            self.misses += 1
            model = load(name, **kwargs)
            size = sum(t.numel() * t.element_size() for t in model.state_dict().values())
            if size <= MAX_CACHED_BYTES:
                self.models[key] = _Entry(copy.deepcopy(model), rng, torch.get_rng_state())
        self.load_s += time.perf_counter() - started
        return model

    def load_tokenizer(self, load, name: str):
        """``load(name)``, or a copy of the tokenizer loaded before under that name."""
        started = time.perf_counter()
        if name not in self.tokenizers:
            self.tokenizers[name] = load(name)
        tokenizer = copy.deepcopy(self.tokenizers[name])
        self.load_s += time.perf_counter() - started
        return tokenizer

    def stats(self) -> dict:
        """Hits, misses and loading seconds since ``reset_stats``."""
        return {"model_cache_hits": self.hits, "model_cache_misses": self.misses, "load_s": self.load_s}

    def reset_stats(self) -> None:
        self.hits = self.misses = 0
        self.load_s = 0.0

    @contextlib.contextmanager
    def installed(self) -> Iterator[ModelCache]:
        """Route ``rmask_tune.models.load_model`` / ``load_tokenizer`` through the cache while inside.

        The trainer imports both from ``rmask_tune.models`` when it prepares a trial, so it picks up the
        cached versions; they are restored on exit.
        """
        from rmask_tune import models

        load_model, load_tokenizer = models.load_model, models.load_tokenizer
        models.load_model = lambda name, **kwargs: self.load_model(load_model, name, **kwargs)
        models.load_tokenizer = lambda name: self.load_tokenizer(load_tokenizer, name)
        try:
            yield self
        finally:
            models.load_model, models.load_tokenizer = load_model, load_tokenizer


# One per worker process: Tune reuses the process (reuse_actors) for the trials it runs one after another.
CACHE = ModelCache()
