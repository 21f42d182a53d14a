"""Causal language models on choice and generation tasks: candidate scoring, LM losses and greedy decoding.

Sequences are left-padded so that the tokens a batch scores sit at its end, and the model is asked for
the logits of those last positions only (``logits_to_keep``): the full-vocabulary projection is never
computed for the context. Context and continuation are tokenized separately and their ids concatenated,
so the continuation's boundary is exact.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from rmask_tune.errors import RmaskError
from rmask_tune.tasks.base import ChoiceExample, GenerationExample
from rmask_tune.trainer.config import SCORINGS


@dataclass(frozen=True)
class ChoiceItem:
    """A choice example as token ids: the context and each candidate continuation."""

    context: tuple[int, ...]
    candidates: tuple[tuple[int, ...], ...]
    label: int


@dataclass(frozen=True)
class GenerationItem:
    """A generation example as token ids: the prompt and the training target (gold answer + newline)."""

    context: tuple[int, ...]
    target: tuple[int, ...]


def no_progress(done: int) -> None:
    """The default progress callback: no progress shown."""


def base_model(model: nn.Module) -> nn.Module:
    """The transformers model under a peft wrapper (or ``model`` itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def left_pad(sequences: list[tuple[int, ...]], pad_id: int, device) -> dict[str, torch.Tensor]:
    """input_ids, attention_mask and position_ids (counted from each sequence's first real token)."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        ids[row, width - len(seq) :] = torch.tensor(seq, dtype=torch.long)
        mask[row, width - len(seq) :] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device), "position_ids": positions.to(device)}


class CausalLM:
    """Tokenization and last-positions forward passes shared by the choice and generation families."""

    def __init__(self, tokenizer, model: nn.Module, max_length: int, device):
        self.tokenizer = tokenizer
        self.device = device
        self.max_length = max_length
        self.pad_id = next(i for i in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0) if i is not None)
        # The tokens the tokenizer puts before any text (BOS); kept when a long context is cut from the left.
        self.prefix_len = len(tokenizer("").input_ids)
        self.accepts_position_ids = "position_ids" in inspect.signature(base_model(model).forward).parameters

    def context_ids(self, text: str, room: int) -> tuple[int, ...]:
        """``text`` with the tokenizer's special prefix, cut from the left to at most ``room`` tokens."""
        if room <= self.prefix_len:
            raise RmaskError(f"max_length {self.max_length} leaves no room for the context of an example")
        ids = self.tokenizer(text).input_ids
        if len(ids) > room:
            ids = ids[: self.prefix_len] + ids[len(ids) - room + self.prefix_len :]
        if not ids:
            raise RmaskError("an example has an empty context and the tokenizer adds no start token")
        return tuple(ids)

    def continuation_ids(self, text: str) -> tuple[int, ...]:
        """``text`` tokenized on its own, without special tokens."""
        ids = self.tokenizer(text, add_special_tokens=False).input_ids
        if not ids:
            raise RmaskError(f"a continuation tokenizes to nothing: {text!r}")
        return tuple(ids)

    def forward_last(self, model: nn.Module, sequences: list[tuple[int, ...]], keep: int) -> torch.Tensor:
        """Logits (float32) of the last ``keep`` positions of each left-padded sequence: (n, keep, vocab)."""
        batch = left_pad(sequences, self.pad_id, self.device)
        if not self.accepts_position_ids:
            del batch["position_ids"]
        return model(**batch, logits_to_keep=keep, use_cache=False).logits[:, -keep:].float()

    def continuation_logprobs(
        self, model: nn.Module, contexts: list[tuple[int, ...]], continuations: list[tuple[int, ...]]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per pair, the summed log-likelihood of the continuation given the context, and its token count."""
        longest = max(len(c) for c in continuations)
        sequences = [ctx + cont for ctx, cont in zip(contexts, continuations)]
        # Position t predicts token t + 1: the last `longest` tokens are predicted by the `longest` before them.
        logits = self.forward_last(model, sequences, longest + 1)[:, :-1]
        targets = torch.tensor([(0,) * (longest - len(c)) + c for c in continuations], device=logits.device)
        lengths = torch.tensor([len(c) for c in continuations], device=logits.device)
        nll = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none").view_as(targets)
        scored = torch.arange(longest, device=logits.device) >= (longest - lengths)[:, None]
        return -torch.where(scored, nll, 0.0).sum(-1), lengths


class CausalChoice:
    """Choice tasks on a causal LM: the prediction is the candidate with the highest score.

    A candidate's score is the ``mean`` log-probability of its tokens given the context (the paper's
    scoring), or their ``sum`` (``scoring="sum"``). When every candidate is a single token the two are
    equal, and one forward of the bare context scores them all (the log-probabilities of the candidate
    tokens at its last position).
    """

    def __init__(self, lm: CausalLM, objective: str, scoring: str = "mean"):
        if scoring not in SCORINGS:
            raise RmaskError(f"unknown scoring '{scoring}'; choose one of {', '.join(SCORINGS)}")
        self.lm = lm
        self.objective = objective
        self.scoring = scoring

    def encode(self, example: ChoiceExample) -> ChoiceItem:
        """Token ids of the context (cut from the left to fit the longest candidate) and the candidates."""
        candidates = tuple(self.lm.continuation_ids(c) for c in example.candidates)
        room = self.lm.max_length - max(len(c) for c in candidates)
        return ChoiceItem(self.lm.context_ids(example.context, room), candidates, example.label)

    def loss(self, model: nn.Module, items: list[ChoiceItem]) -> torch.Tensor:
        """``lm``: mean negative log-likelihood of the gold continuations' tokens; ``classification``:
        cross-entropy over the candidates' scores."""
        if self.objective == "classification":
            scores = self.scores(model, items)
            return torch.stack([-F.log_softmax(s, 0)[item.label] for s, item in zip(scores, items)]).mean()
        logprobs, lengths = self.lm.continuation_logprobs(
            model, [item.context for item in items], [item.candidates[item.label] for item in items]
        )
        return -logprobs.sum() / lengths.sum()

    def scores(self, model: nn.Module, items: list[ChoiceItem]) -> list[torch.Tensor]:
        """Each item's candidate scores (mean or summed log-likelihoods, as ``scoring`` says)."""
        if all(len(c) == 1 for item in items for c in item.candidates):
            return self.single_token_scores(model, items)
        return self.general_scores(model, items)

    def single_token_scores(self, model: nn.Module, items: list[ChoiceItem]) -> list[torch.Tensor]:
        """One forward of the contexts; log-probabilities of the candidate tokens at the last position."""
        logprobs = F.log_softmax(self.lm.forward_last(model, [item.context for item in items], 1)[:, -1], -1)
        return [row[[c[0] for c in item.candidates]] for row, item in zip(logprobs, items)]

    def general_scores(self, model: nn.Module, items: list[ChoiceItem]) -> list[torch.Tensor]:
        """Every (context, candidate) pair scored as one sequence."""
        pairs = [(item.context, c) for item in items for c in item.candidates]
        logprobs, lengths = self.lm.continuation_logprobs(model, [p[0] for p in pairs], [p[1] for p in pairs])
        scores = logprobs / lengths if self.scoring == "mean" else logprobs
        return list(scores.split([len(item.candidates) for item in items]))

    def predict(self, model: nn.Module, items: list[ChoiceItem], batch_size: int, advance=no_progress) -> list[int]:
        """The best candidate's index per item; forwards carry at most ``batch_size`` sequences.

        ``advance(n)`` is told each time n more items are done (a progress bar's ``update``).
        """
        single = [i for i, item in enumerate(items) if all(len(c) == 1 for c in item.candidates)]
        multi = sorted(set(range(len(items))) - set(single))
        predictions: dict[int, int] = {}
        for index in chunks(sorted(single, key=lambda i: len(items[i].context)), batch_size):
            for i, s in zip(index, self.single_token_scores(model, [items[i] for i in index])):
                predictions[i] = int(s.argmax())
            advance(len(index))
        # Multi-token items: chunks of items whose candidates together fit in a batch (at least one item).
        order = sorted(multi, key=lambda i: len(items[i].context))
        while order:
            take, width = 0, 0
            while take < len(order) and (take == 0 or width + len(items[order[take]].candidates) <= batch_size):
                width += len(items[order[take]].candidates)
                take += 1
            index, order = order[:take], order[take:]
            for i, s in zip(index, self.general_scores(model, [items[i] for i in index])):
                predictions[i] = int(s.argmax())
            advance(len(index))
        return [predictions[i] for i in range(len(items))]


class CausalGeneration:
    """Generation tasks: LM loss on the gold answer, greedy decoding that stops at a newline or EOS."""

    def __init__(self, lm: CausalLM, max_new_tokens: int):
        self.lm = lm
        self.max_new_tokens = max_new_tokens
        self.newline = lm.continuation_ids("\n")
        self._stop_ids: list[int] | None = None

    def encode(self, example: GenerationExample) -> GenerationItem:
        """The prompt (room left for the answer or the generated tokens) and the target answer + newline.

        A space separates the answer from a prompt that does not end in whitespace ("Answer:" -> " Paris").
        """
        answer = example.answers[0]
        if example.context and not example.context[-1].isspace() and not answer[:1].isspace():
            answer = " " + answer
        target = self.lm.continuation_ids(answer) + self.newline
        room = self.lm.max_length - max(len(target), self.max_new_tokens)
        return GenerationItem(self.lm.context_ids(example.context, room), target)

    def loss(self, model: nn.Module, items: list[GenerationItem]) -> torch.Tensor:
        """Mean negative log-likelihood of the target tokens."""
        logprobs, lengths = self.lm.continuation_logprobs(
            model, [item.context for item in items], [item.target for item in items]
        )
        return -logprobs.sum() / lengths.sum()

    def stop_ids(self) -> list[int]:
        """EOS and every token whose text contains a newline."""
        if self._stop_ids is None:
            tokenizer = self.lm.tokenizer
            texts = tokenizer.batch_decode([[i] for i in range(len(tokenizer))])
            stops = {i for i, text in enumerate(texts) if "\n" in text}
            self._stop_ids = sorted(stops | ({tokenizer.eos_token_id} - {None}))
        return self._stop_ids

    def predict(self, model: nn.Module, items: list[GenerationItem], batch_size: int, advance=no_progress) -> list[str]:
        """Greedy answers, cut at the first newline and stripped (``advance`` as in ``CausalChoice.predict``)."""
        answers: dict[int, str] = {}
        order = sorted(range(len(items)), key=lambda i: len(items[i].context))
        for index in chunks(order, batch_size):
            batch = left_pad([items[i].context for i in index], self.lm.pad_id, self.lm.device)
            del batch["position_ids"]  # generate derives them from the attention mask
            output = model.generate(
                **batch,
                do_sample=False,
                max_new_tokens=self.max_new_tokens,
                eos_token_id=self.stop_ids(),
                pad_token_id=self.lm.pad_id,
            )
            texts = self.lm.tokenizer.batch_decode(output[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
            for i, text in zip(index, texts):
                answers[i] = text.split("\n", 1)[0].strip()
            advance(len(index))
        return [answers[i] for i in range(len(items))]


def chunks(values: list, size: int) -> list[list]:
    """``values`` in consecutive pieces of at most ``size``."""
    return [values[i : i + size] for i in range(0, len(values), size)]
