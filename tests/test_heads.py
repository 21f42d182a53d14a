"""The head registry (rmask_tune/heads.py): which head a trial gets, which tasks a head runs, the targets it
adapts by default, and the choices the trial config and the bench command offer, all read from one place."""

from __future__ import annotations

import pytest

from rmask_tune.errors import RmaskError
from rmask_tune.heads import HEADS, IMAGE_CLASSIFICATION, ZERO_SHOT_IMAGE, get_head
from rmask_tune.trainer.config import TrialConfig
from rmask_tune.trainer.trial import method_settings, task_and_head


@pytest.mark.parametrize(
    ("model", "task", "head"),
    [
        ("tiny-llama", "SST-2", "causal-lm"),  # a decoder's natural head
        ("tiny-bert", "RTE", "sequence-classification"),  # an encoder's
        ("tiny-vit", "MNIST", "image-classification"),  # a vision model's own classifier
        ("tiny-clip", "MNIST", "zero-shot-image"),  # CLIP classifies images zero-shot
        ("tiny-bert", "MNIST", "image-classification"),  # an image task on a text model: the image classifier
    ],
)
def test_a_trial_without_a_head_gets_the_models_natural_one_for_its_task(model, task, head):
    assert task_and_head(TrialConfig(model=model, task=task))[1] is HEADS[head]


@pytest.mark.parametrize(
    ("model", "task", "head", "message"),
    [
        ("tiny-llama", "MNIST", "causal-lm", "MNIST is a image task; it needs a image-classification or "
                                             "zero-shot-image model, not causal-lm"),
        ("tiny-bert", "SQuAD", None, "SQuAD is a generation task; it needs a causal-lm model, not sequence-classification"),
        ("tiny-vit", "SST-2", "image-classification", "it needs a causal-lm or sequence-classification model"),
        ("tiny-bert", "COPA", "sequence-classification", "COPA has per-example candidates, not a fixed label set"),
    ],
)
def test_a_head_refuses_the_tasks_it_cannot_run(model, task, head, message):
    with pytest.raises(RmaskError, match=message):
        task_and_head(TrialConfig(model=model, task=task, head=head))


def test_a_heads_default_targets_reach_the_method_unless_the_trial_names_its_own():
    config = TrialConfig(model="tiny-clip", task="MNIST", ratio=1e-3)
    assert method_settings(config, 8, ZERO_SHOT_IMAGE)["targets"] == r"vision_model\..*\.mlp\.fc[12]"
    assert method_settings(config, 8, IMAGE_CLASSIFICATION)["targets"] == "mlp"
    assert "targets" not in method_settings(config, 8, get_head("causal-lm"))  # the method's own default
    own = TrialConfig(model="tiny-clip", task="MNIST", ratio=1e-3, targets="attention")
    assert method_settings(own, 8, ZERO_SHOT_IMAGE)["targets"] == "attention"


def test_the_trial_and_bench_choices_are_the_registrys():
    from rmask_tune.commands.bench import HEAD_CHOICES

    with pytest.raises(RmaskError, match="unknown head 'base'; choose one of causal-lm, sequence-classification, "
                                         "image-classification, zero-shot-image"):
        TrialConfig(model="tiny-bert", task="SST-2", head="base")  # base loads a bare model, it trains nothing
    assert HEAD_CHOICES == ("auto", "causal-lm", "sequence-classification", "image-classification")
    with pytest.raises(RmaskError, match="unknown head 'lm'; choose one of causal-lm, .*, base"):
        get_head("lm")
