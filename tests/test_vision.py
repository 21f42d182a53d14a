"""The paper's vision setting on a tiny random-init CLIP: the frozen zero-shot head, Random Masking on the
image tower's MLPs, step-based training with a cosine schedule, the image datasets, and the sweep file."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from rmask_tune.cli import main
from rmask_tune.errors import RmaskError
from rmask_tune.masking import masked_layers
from rmask_tune.models import load_model, load_tokenizer
from rmask_tune.tasks import get_task
from rmask_tune.tasks.images import CIFAR10_CLASSES
from rmask_tune.trainer import TrialConfig, prepare_trial, run_trial, train_trial
from rmask_tune.trainer.classifiers import TEXT_SIDE, ImagePreprocessing
from paths import DATA, REPO

pytestmark = pytest.mark.needs_data
SMALL = dict(
    model="tiny-clip", task="CIFAR-10", data_dir=str(DATA), batch_size=8, train_examples=32, dev_examples=16,
    test_examples=16, quiet=True,
)  # fmt: skip
PROMPTS = [f"a photo of a {name}." for name in CIFAR10_CLASSES]


def clip_processor(size: int):
    """transformers' CLIP image processor (PIL backend) at ``size``: short side resized, centre cropped."""
    import transformers

    return transformers.CLIPImageProcessorPil(size={"shortest_edge": size}, crop_size={"height": size, "width": size})


def clip_logits(model, images: list[np.ndarray], prompts: list[str]) -> torch.Tensor:
    """CLIP's own image-text logits: transformers' image processor and CLIPModel's forward."""
    processor = clip_processor(model.config.vision_config.image_size)
    tokens = load_tokenizer("minilm-l6")(prompts, padding=True, return_tensors="pt")
    pixels = processor(images=images, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        return model(**tokens, pixel_values=pixels).logits_per_image


def is_text_side(name: str) -> bool:
    return bool(set(TEXT_SIDE) & set(name.split(".")))


@pytest.fixture(scope="module")
def zero_shot_trial():
    return prepare_trial(dict(SMALL, method="none"))


def test_zero_shot_logits_equal_clip_image_text_similarity(zero_shot_trial):
    trial = zero_shot_trial
    assert trial.config.model == "tiny-clip" and type(trial.family).__name__ == "ZeroShotImageClassifier"
    examples = trial.splits.test[:6]
    with torch.no_grad():
        logits = trial.family.logits(trial.model, trial.items["test"][:6])
    model = load_model("tiny-clip", head="zero-shot-image")
    expected = clip_logits(model, [ex.image for ex in examples], PROMPTS)
    assert logits.shape == (6, 10)
    torch.testing.assert_close(logits, expected, atol=1e-4, rtol=1e-4)
    # the same from get_image_features / get_text_features, normalized and scaled by the learned temperature
    tokens = load_tokenizer("minilm-l6")(PROMPTS, padding=True, return_tensors="pt")
    pixels = trial.family.inputs(trial.items["test"][:6])
    with torch.no_grad():
        text = F.normalize(model.get_text_features(**tokens).pooler_output, dim=-1)
        image = F.normalize(model.get_image_features(**pixels).pooler_output, dim=-1)
        torch.testing.assert_close(logits, model.logit_scale.exp() * image @ text.T, atol=1e-5, rtol=1e-5)


def test_zero_shot_accuracy_is_the_argmax_of_clip_logits(zero_shot_trial):
    result = train_trial(zero_shot_trial)
    test = zero_shot_trial.splits.test
    model = load_model("tiny-clip", head="zero-shot-image")
    predictions = clip_logits(model, [ex.image for ex in test], PROMPTS).argmax(-1)
    expected = float(np.mean([int(p) == ex.label for p, ex in zip(predictions, test)]))
    assert result["test_metric"] == pytest.approx(expected) and result["trainable_params"] == 0
    assert result["notes"] == ["tokenizer of minilm-l6"]


def test_random_masking_trains_the_image_mlps_and_leaves_the_text_side_and_head_alone():
    trial = prepare_trial(dict(SMALL, ratio=0.01, lr=1e-2, max_steps=4, epochs=2))
    before = {name: p.detach().clone() for name, p in trial.model.named_parameters()}
    head_before = trial.family.text_embeds.clone()
    trainable = [name for name, p in trial.model.named_parameters() if p.requires_grad]
    targets = trial.setup.details["targets"]
    assert targets == [f"vision_model.encoder.layers.{i}.mlp.{fc}" for i in range(2) for fc in ("fc1", "fc2")]
    assert trainable == [f"{target}.rmask_values.default" for target in targets]
    result = train_trial(trial)
    assert result["status"] == "finished" and result["optimizer_steps"] == 4
    after = dict(trial.model.named_parameters())
    assert all(after[name].abs().sum() > 0 for name in trainable)  # deltas start at zero and moved
    frozen = [name for name in before if name not in trainable]
    assert any(is_text_side(name) for name in frozen)
    assert all(torch.equal(before[name], after[name]) for name in frozen)
    assert torch.equal(trial.family.text_embeds, head_before)
    # the masked layers live only in the image tower
    assert sorted(masked_layers(trial.model)) == targets


@pytest.mark.parametrize("method", ["full", "bitfit"])
def test_whole_model_methods_keep_the_text_side_frozen_and_targeted_ones_may_not_train_it(method):
    trial = prepare_trial(dict(SMALL, method=method, lr=1e-4, epochs=1))
    trainable = [name for name, p in trial.model.named_parameters() if p.requires_grad]
    assert trainable and not any(is_text_side(name) for name in trainable)
    assert all(name.startswith("vision_model.") or name == "visual_projection.weight" for name in trainable)
    assert trial.setup.trainable_params == sum(p.numel() for p in trial.model.parameters() if p.requires_grad)
    assert trial.notes[-1] == f"the zero-shot head's text side ({', '.join(TEXT_SIDE)}) stays frozen under {method}"
    with pytest.raises(RmaskError, match="zero-shot head is frozen, but method 'random_masking' trains text_model"):
        prepare_trial(dict(SMALL, ratio=0.01, targets="mlp"))


def expected_cosine_lr(lr: float, step: int, warmup: int, total: int) -> float:
    if step < warmup:
        return lr * step / warmup
    return lr * 0.5 * (1 + math.cos(math.pi * (step - warmup) / (total - warmup)))


@pytest.mark.slow
def test_step_based_training_runs_max_steps_under_the_cosine_warmup_schedule():
    # 8 training examples in batches of 4 are 2 batches a pass: 6 steps cycle the (reshuffled) data 3 times.
    config = dict(SMALL, train_examples=8, batch_size=4, ratio=0.01, lr=1e-2, max_steps=6, epochs=6)
    result = run_trial(dict(config, schedule="cosine", warmup_ratio=0.34))  # warmup round(0.34 * 6) = 2 steps
    assert result["optimizer_steps"] == 6 and len(result["epochs"]) == 6
    lrs = [record["scheduled_lr"] for record in result["epochs"]]
    assert lrs == pytest.approx([expected_cosine_lr(1e-2, step, 2, 6) for step in range(1, 7)], abs=1e-12)
    # evaluation rounds split the steps evenly; with accumulation a step takes grad_accum batches
    rounds = run_trial(dict(config, max_steps=5, epochs=2, grad_accum=2, schedule="linear"))
    assert rounds["optimizer_steps"] == 5 and [r["epoch"] for r in rounds["epochs"]] == [1, 2]
    assert rounds["epochs"][0]["scheduled_lr"] == pytest.approx(1e-2 * (5 - 2) / 5)  # round(2.5) = 2 steps first
    with pytest.raises(RmaskError, match=r"max_steps \(2\) must be at least epochs \(3\)"):
        TrialConfig(model="tiny-clip", task="CIFAR-10", max_steps=2, epochs=3)


def test_preprocessing_matches_clips_image_processor_on_odd_sizes():
    import transformers

    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (64, 96, 3), dtype=np.uint8), rng.integers(0, 256, (80, 40, 3), dtype=np.uint8)]
    ours = ImagePreprocessing(32, tuple(transformers.image_utils.OPENAI_CLIP_MEAN),
                              tuple(transformers.image_utils.OPENAI_CLIP_STD), True, "bicubic")(images)  # fmt: skip
    reference = clip_processor(32)(images=images, return_tensors="pt")["pixel_values"]
    assert ours.shape == reference.shape == (2, 3, 32, 32)
    assert (ours - reference).abs().mean() < 0.02  # PIL's and torch's bicubic filters differ in rounding only


@pytest.mark.parametrize("name, hub", [("GTSRB", "tanganke/gtsrb"), ("RESISC45", "tanganke/resisc45")])
def test_a_hub_only_dataset_offline_is_one_line_naming_it_and_how_to_provide_it(name, hub):
    with pytest.raises(RmaskError) as error:
        get_task(name).load_splits(DATA)
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith(f"task {name}: no data in {DATA / name.lower()}: provide an image folder")
    assert f"download {hub} from the Hugging Face hub" in message


def test_an_image_folder_with_index_named_classes_of_mixed_sizes_runs_zero_shot(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, count in (("train", 3), ("test", 2)):
        for label in (0, 14, 42):
            folder = tmp_path / "gtsrb" / split / f"{label:05d}"
            folder.mkdir(parents=True)
            for i in range(count):
                shape = (30 + 7 * i + label % 5, 40 - 3 * i, 3)
                Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(folder / f"{i}.png")
    config = dict(SMALL, task="GTSRB", data_dir=str(tmp_path), method="none", train_examples=5, dev_examples=4)
    result = run_trial(dict(config, test_examples=6))
    assert get_task("GTSRB").num_labels == 43 and result["data"]["sizes"] == {"train": 5, "dev": 4, "test": 6}
    assert result["test_metric"] is not None
    (tmp_path / "gtsrb" / "train" / "00043").mkdir()
    with pytest.raises(RmaskError, match=r"of GTSRB is named by one of its 43 class names or an index 0..42"):
        get_task("GTSRB").load_splits(tmp_path)


def test_the_vision_sweep_file_passes_dry_run(capsys):
    assert main(["sweep", str(REPO / "search_spaces" / "clip-vit-b16.yaml"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "clip-vit-b16 RESISC45 random_masking 0.001%" in out and "clip-vit-b16 GTSRB none" in out
    assert "optimizer steps: 3,510,000" in out  # 1770 trials x 2000 steps, whatever the dataset sizes
