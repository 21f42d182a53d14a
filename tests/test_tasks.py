"""Tasks: prompt rendering on real data, seeded disjoint sampling, data-source errors, and metrics."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from rmask_tune.errors import RmaskError
from rmask_tune.tasks import TASKS, ChoiceExample, GenerationExample, ImageExample, get_task
from rmask_tune.tasks import metrics, sources, templates
from rmask_tune.tasks.data import read_jsonl
from paths import DATA



def whole_test_split(task: str) -> dict[str, object]:
    """Every example of the task's test pool, by uid (train/dev left empty)."""
    splits = get_task(task).load_splits(DATA, train_examples=0, dev_examples=0, test_examples=10**7)
    return {ex.uid: ex for ex in splits.test}


def uids(examples) -> list[str]:
    return [ex.uid for ex in examples]


# ---------------------------------------------------------------- registry


def test_get_task_ignores_case_and_punctuation():
    assert get_task("SST-2") is get_task("sst2") is get_task("Sst_2") is TASKS["SST-2"]
    assert get_task("cifar10") is TASKS["CIFAR-10"]
    assert get_task("record").name == "ReCoRD"
    assert list(TASKS) == [
        "SST-2", "RTE", "CB", "BoolQ", "WSC", "WiC", "MultiRC", "COPA", "ReCoRD", "SQuAD", "DROP", "CIFAR-10",
        "GTSRB", "MNIST", "SVHN", "RESISC45",
    ]  # fmt: skip


def test_unknown_task_lists_known_tasks():
    with pytest.raises(RmaskError, match=r"unknown task 'sst5'; known tasks: SST-2, RTE, .*CIFAR-10"):
        get_task("sst5")


def test_task_attributes():
    table = {name: (t.kind, t.metric, t.num_labels) for name, t in TASKS.items()}
    assert table == {
        "SST-2": ("choice", "accuracy", 2),
        "RTE": ("choice", "accuracy", 2),
        "CB": ("choice", "accuracy", 3),
        "BoolQ": ("choice", "accuracy", 2),
        "WSC": ("choice", "accuracy", 2),
        "WiC": ("choice", "accuracy", 2),
        "MultiRC": ("choice", "accuracy", 2),
        "COPA": ("choice", "accuracy", None),
        "ReCoRD": ("choice", "accuracy", None),
        "SQuAD": ("generation", "f1", None),
        "DROP": ("generation", "f1", None),
        "CIFAR-10": ("image", "accuracy", 10),
        "GTSRB": ("image", "accuracy", 43),
        "MNIST": ("image", "accuracy", 10),
        "SVHN": ("image", "accuracy", 10),
        "RESISC45": ("image", "accuracy", 45),
    }
    assert get_task("RTE").require_num_labels() == 2
    for name in ("COPA", "ReCoRD", "SQuAD"):
        with pytest.raises(RmaskError, match=f"task {name} has per-example candidates"):
            get_task(name).require_num_labels()


# ---------------------------------------------------------------- rendering on real examples

BASEBALL = (
    "What causes a change in motion? The application of a force. Any time an object changes motion, a force has "
    "been applied. In what ways can this happen? Force can cause an object at rest to start moving. Forces can cause "
    "objects to speed up or slow down. Forces can cause a moving object to stop. Forces can also cause a change in "
    "direction. In short, forces cause changes in motion. The moving object may change its speed, its direction, or "
    "both. We know that changes in motion require a force. We know that the size of the force determines the change "
    "in motion. How much an objects motion changes when a force is applied depends on two things. It depends on the "
    "strength of the force. It also depends on the objects mass. Think about some simple tasks you may regularly do. "
    "You may pick up a baseball. This requires only a very small force. "
)


@pytest.mark.needs_data
def test_sst2_prompt():
    ex = whole_test_split("SST-2")["dev-0"]
    assert ex == ChoiceExample(
        uid="dev-0",
        context="one long string of cliches . It was",
        candidates=(" terrible", " great"),
        label=0,
        text_pair=("one long string of cliches .", None),
    )


@pytest.mark.needs_data
def test_sst2_train_rows_with_stray_carriage_returns_parse():
    train = get_task("SST-2").load_splits(DATA, train_examples=67349, dev_examples=0, test_examples=0).train
    by_uid = {ex.uid: ex for ex in train}
    assert len(by_uid) == 67349
    assert by_uid["train-0"].context == "hide new secretions from the parental units It was"
    assert by_uid["train-0"].label == 0


@pytest.mark.needs_data
def test_rte_prompt():
    ex = whole_test_split("RTE")["val-0"]
    premise = (
        "Dana Reeve, the widow of the actor Christopher Reeve, has died of lung cancer at age 44, according to the "
        "Christopher Reeve Foundation."
    )
    assert ex.context == f'{premise}\nDoes this mean that "Christopher Reeve had an accident." is true? Yes or No?\n'
    assert ex.candidates == ("Yes", "No")
    assert ex.label == 1  # not_entailment
    assert ex.text_pair == (premise, "Christopher Reeve had an accident.")
    assert whole_test_split("RTE")["val-1"].label == 0  # entailment = Yes


@pytest.mark.needs_data
def test_cb_prompt():
    ex = whole_test_split("CB")["val-0"]
    assert ex.context == (
        "Suppose Valence the void-brain, Valence the virtuous valet. Why couldn't the figger choose his own portion "
        'of titanic anatomy to shaft? Did he think he was helping? Can we infer that "Valence was helping"? '
        "Yes, No, or Maybe?\n"
    )
    assert ex.candidates == ("Yes", "No", "Maybe")
    assert ex.label == 1  # contradiction
    assert whole_test_split("CB")["val-1"].label == 2  # neutral


@pytest.mark.needs_data
def test_boolq_prompt():
    ex = whole_test_split("BoolQ")["val-0"]
    assert ex.context.startswith("Ethanol fuel -- All biomass goes through at least some of these steps")
    assert ex.context.endswith(
        "concluded that producing ethanol from corn uses much less petroleum than producing gasoline. "
        "Does ethanol take more energy make that produces?\n"
    )
    assert ex.candidates == ("No", "Yes")
    assert ex.label == 0
    assert ex.text_pair[0] == "does ethanol take more energy make that produces"


@pytest.mark.needs_data
def test_wsc_prompt():
    ex = whole_test_split("WSC")["val-0"]
    assert ex.context == (
        "Bernard , who had not told the government official that he was less than 21 when he filed for a homestead "
        "claim, did not consider that he had done anything dishonest. Still, anyone who knew that he was 19 years old "
        'could take his claim away from him .\nIn the previous sentence, does the pronoun "him" refer to anyone? '
        "Yes or No?\n"
    )
    assert (ex.candidates, ex.label) == (("No", "Yes"), 0)
    assert whole_test_split("WSC")["val-1"].label == 1


@pytest.mark.needs_data
def test_wic_prompt():
    ex = whole_test_split("WiC")["val-0"]
    assert ex.context == (
        'Does the word "class" have the same meaning in these two sentences? Yes, No?\n'
        "An emerging professional class.\n"
        "Apologizing for losing your temper, even though you were badly provoked, showed real class.\n"
    )
    assert (ex.candidates, ex.label) == (("No", "Yes"), 0)
    assert ex.text_pair == (
        "class: An emerging professional class.",
        "Apologizing for losing your temper, even though you were badly provoked, showed real class.",
    )


@pytest.mark.needs_data
def test_multirc_prompt_one_decision_per_answer():
    test = whole_test_split("MultiRC")
    question = "Would the mass of a baseball affect how much force you have to use to pick it up?"
    answers = ["No", "Yes", "Less the mass, less the force applied", "It depends on the shape of the baseball"]
    for i, (answer, label) in enumerate(zip(answers, [0, 1, 1, 0])):
        ex = test[f"val-p0-q0-a{i}"]
        prompt = f'{BASEBALL}\nQuestion: {question}\nI found this answer "{answer}". Is that correct? Yes or No?\n'
        assert ex.context == prompt
        assert (ex.candidates, ex.label, ex.group) == (("No", "Yes"), label, "val-p0-q0")
    assert "val-p0-q0-a4" not in test
    assert len(test) == 4848  # every answer row of val.jsonl


@pytest.mark.needs_data
def test_copa_prompt():
    test = whole_test_split("COPA")
    ex = test["val-0"]
    assert ex.context == "The man turned on the faucet so"
    assert ex.candidates == (" the toilet filled with water.", " water flowed from the spout.")
    assert ex.label == 1
    cause = test["val-4"]
    assert cause.context == "The hamburger meat browned because"
    assert (cause.candidates, cause.label) == ((" the cook froze it.", " the cook grilled it."), 1)
    assert test["val-5"].candidates == (" I turned his offer down.", " he persuaded me to buy the product.")


@pytest.mark.needs_data
def test_record_prompt_substitutes_entities_into_the_query():
    ex = whole_test_split("ReCoRD")["val-12705-19617"]
    assert ex.context.startswith("Islamabad, Pakistan (CNN) -- The 24-year-old son of the late Benazir Bhutto")
    assert ex.context.endswith(
        "\n- Benazir Bhutto was killed five years ago in a gun-suicide bomb attack"
        "\n- Thousands gathered near the home to mark the fifth anniversary of her death\n-"
    )
    assert "@highlight" not in ex.context
    assert len(ex.candidates) == 11
    assert ex.candidates[0] == " They will sew our lips, but we will chant, 'Long live Islamabad.'"
    # gold answers "Benazir Bhutto" and "Bhutto" are two distinct entities; both count
    assert ex.golds == (3, 8) and ex.label == 3
    assert ex.candidates[3] == " They will sew our lips, but we will chant, 'Long live Benazir Bhutto.'"
    assert ex.candidates[8] == " They will sew our lips, but we will chant, 'Long live Bhutto.'"
    assert ex.is_correct(8) and not ex.is_correct(0)


@pytest.mark.needs_data
def test_squad_prompt():
    ex = whole_test_split("SQuAD")["dev-0"]
    assert isinstance(ex, GenerationExample)
    assert ex.context.startswith("Context: The plains at the foot of the Sierra Madre Occidental is an elongated mesa")
    assert ex.context.endswith(
        "The steppe zone is the most populated area of the state.\n"
        "Question: Which months make up the pronounced rainy season in the steppe?\nAnswer:"
    )
    assert ex.answers == ("July, August, and September",)


@pytest.mark.needs_data
def test_hub_shaped_rows_render_like_the_local_files():
    """The hub converters (rows as `datasets` yields them) give the examples the jsonl files give."""
    passages = read_jsonl(DATA / "superglue" / "MultiRC" / "val.jsonl")[:3]
    flat = [
        {
            "paragraph": p["passage"]["text"],
            "question": q["question"],
            "answer": a["text"],
            "label": a["label"],
            "idx": {"paragraph": p["idx"], "question": q["idx"], "answer": a["idx"]},
        }
        for p in passages
        for q in p["passage"]["questions"]
        for a in q["answers"]
    ]
    offline, hub = sources.multirc_questions_offline(passages), sources.multirc_questions_hub(flat)
    assert [templates.multirc(q, q["uid"]) for q in hub] == [templates.multirc(q, q["uid"]) for q in offline]

    (query,) = sources.record_queries_offline(read_jsonl(DATA / "superglue" / "ReCoRD" / "val.jsonl")[:1])
    row = {  # the hub lists entities sorted, with repeats removed
        "passage": query["passage"],
        "query": query["query"],
        "entities": sorted(query["entities"]),
        "answers": query["answers"],
        "idx": {"passage": 12705, "query": 19617},
    }
    from_hub = templates.record_task(sources.record_queries_hub([row])[0], "u")
    from_file = templates.record_task(query, "u")
    assert from_hub.context == from_file.context
    assert sorted(from_hub.candidates) == sorted(from_file.candidates)
    assert {from_hub.candidates[i] for i in from_hub.golds} == {from_file.candidates[i] for i in from_file.golds}


# ---------------------------------------------------------------- sampling


@pytest.mark.needs_data
def test_sampling_sizes_seed_determinism_and_disjointness():
    rte = get_task("RTE")
    a = rte.load_splits(DATA, seed=0)
    b = rte.load_splits(DATA, seed=0)
    c = rte.load_splits(DATA, seed=1)
    assert (len(a.train), len(a.dev), len(a.test)) == (1000, 500, 277)
    assert (uids(a.train), uids(a.dev), uids(a.test)) == (uids(b.train), uids(b.dev), uids(b.test))
    assert uids(a.train) != uids(c.train)
    assert not set(uids(a.train)) & set(uids(a.dev))
    assert all(u.startswith("train-") for u in uids(a.train) + uids(a.dev))
    assert sorted(uids(a.test)) == sorted(f"val-{i}" for i in range(277))
    assert a.meta["sizes"] == {"train": 1000, "dev": 500, "test": 277}
    assert a.meta["seed"] == 0 and a.meta["source"] == str(DATA / "superglue" / "RTE")
    assert a.meta["notes"] == ["val split has 277 examples (< 1000 asked): used whole as test"]
    small = rte.load_splits(DATA, train_examples=16, dev_examples=8, test_examples=32, seed=3)
    assert (len(small.train), len(small.dev), len(small.test)) == (16, 8, 32)


@pytest.mark.needs_data
def test_smaller_train_split_is_shared_whole_between_train_and_dev():
    cb = get_task("CB").load_splits(DATA, seed=0)
    assert cb.meta["sizes"] == {"train": 166, "dev": 84, "test": 56}
    assert set(uids(cb.train)) | set(uids(cb.dev)) == {f"train-{i}" for i in range(250)}
    assert not set(uids(cb.train)) & set(uids(cb.dev))
    assert cb.meta["notes"][0] == (
        "train split has 250 examples (< 1000 + 500 asked): used whole, 166 for train and 84 for dev"
    )


@pytest.mark.needs_data
def test_boolq_offline_carves_train_dev_test_from_val():
    boolq = get_task("BoolQ").load_splits(DATA, seed=0)
    train, dev, test = set(uids(boolq.train)), set(uids(boolq.dev)), set(uids(boolq.test))
    assert (len(train), len(dev), len(test)) == (1000, 500, 1000)
    assert not (train & dev or train & test or dev & test)
    assert all(u.startswith("val-") for u in train | dev | test)
    assert "carved disjointly from val.jsonl" in boolq.meta["notes"][0]
    assert boolq.meta["available"] == {"val": 3270}


@pytest.mark.needs_data
def test_multirc_samples_whole_questions():
    task = get_task("MultiRC")
    splits = task.load_splits(DATA, train_examples=100, dev_examples=50, test_examples=60, seed=0)
    assert "sampled in whole groups" in splits.meta["notes"][-1]
    groups = [{ex.group for ex in split} for split in (splits.train, splits.dev, splits.test)]
    assert not groups[0] & groups[1]
    # every sampled question brings all of its answer options
    full_train = task.load_splits(DATA, train_examples=10**7, dev_examples=0, test_examples=0).train
    options: dict[str, int] = {}
    for ex in full_train:
        options[ex.group] = options.get(ex.group, 0) + 1
    for split, budget in ((splits.train, 100), (splits.dev, 50)):
        assert sum(options[g] for g in {ex.group for ex in split}) == len(split)
        last = split[-1].group
        assert budget <= len(split) < budget + options[last]


# ---------------------------------------------------------------- sources and errors


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


DROP_ROWS = [
    {"passage": f"The Bears scored {n} touchdowns.", "question": "How many touchdowns?", "answers": [str(n)]}
    for n in range(6)
]


def test_drop_from_a_local_directory(tmp_path):
    write_jsonl(tmp_path / "drop" / "train.jsonl", DROP_ROWS[:4])
    (tmp_path / "drop" / "dev.json").write_text(json.dumps(DROP_ROWS[4:]))
    drop = get_task("DROP")
    splits = drop.load_splits(tmp_path, train_examples=3, dev_examples=5, test_examples=10, seed=0)
    assert splits.meta["sizes"] == {"train": 1, "dev": 3, "test": 2}  # 4 train rows shared 3:5 -> 1/3
    ex = next(e for e in splits.test if e.uid == "dev-0")
    assert ex == GenerationExample(
        uid="dev-0",
        context="Passage: The Bears scored 4 touchdowns.\nQuestion: How many touchdowns?\nAnswer:",
        answers=("4",),
    )
    golds = [e.answers[0] for e in splits.test]
    assert drop.evaluate(splits.test, golds) == {"f1": 1.0, "em": 1.0}
    assert drop.evaluate(splits.test, ["9"] * len(golds)) == {"f1": 0.0, "em": 0.0}


def test_drop_missing_file_names_the_path(tmp_path):
    write_jsonl(tmp_path / "drop" / "train.jsonl", DROP_ROWS)
    with pytest.raises(RmaskError, match=rf"task DROP: missing data file {tmp_path}/drop/dev.jsonl \(or dev.json\)"):
        get_task("DROP").load_splits(tmp_path)


def test_missing_superglue_file_names_the_path(tmp_path):
    row = {"premise": "p", "hypothesis": "h", "label": "entailment"}
    write_jsonl(tmp_path / "superglue" / "RTE" / "val.jsonl", [row])
    with pytest.raises(RmaskError, match=rf"task RTE: missing data file {tmp_path}/superglue/RTE/train.jsonl"):
        get_task("RTE").load_splits(tmp_path)
    with pytest.raises(RmaskError, match=rf"missing data file {tmp_path}/glue/SST-2/train.tsv"):
        get_task("SST-2").load_splits(tmp_path)
    with pytest.raises(RmaskError, match=r"data directory not found: .*nowhere"):
        get_task("RTE").load_splits(tmp_path / "nowhere")


def test_bad_records_are_user_errors(tmp_path):
    rte = tmp_path / "superglue" / "RTE"
    write_jsonl(rte / "val.jsonl", [{"premise": "p", "hypothesis": "h", "label": "entailment"}])
    (rte / "train.jsonl").write_text('{"premise": "p", "hypothesis": "h", "label": "entailment"}\n{oops\n')
    with pytest.raises(RmaskError, match=r"train.jsonl:2: not valid JSON"):
        get_task("RTE").load_splits(tmp_path)
    write_jsonl(rte / "train.jsonl", [{"premise": "p", "hypothesis": "h", "label": "contradiction"}])
    with pytest.raises(RmaskError, match=r"unknown label 'contradiction' \(expected entailment / not_entailment\)"):
        get_task("RTE").load_splits(tmp_path)
    write_jsonl(rte / "train.jsonl", [{"premise": "p", "label": "entailment"}])
    with pytest.raises(RmaskError, match=r"task RTE: record train-0 lacks field 'hypothesis'"):
        get_task("RTE").load_splits(tmp_path)


def test_data_dir_falls_back_to_the_environment(tmp_path, monkeypatch):
    write_jsonl(tmp_path / "drop" / "train.jsonl", DROP_ROWS[:3])
    write_jsonl(tmp_path / "drop" / "dev.jsonl", DROP_ROWS[3:])
    monkeypatch.setenv("RMASK_DATA_DIR", str(tmp_path))
    assert get_task("DROP").load_splits(None).meta["source"] == str(tmp_path / "drop")


def test_without_data_dir_or_datasets_asks_for_data_dir(monkeypatch):
    monkeypatch.delenv("RMASK_DATA_DIR", raising=False)
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` fail as if not installed
    with pytest.raises(RmaskError, match=r"no data for task RTE: pass --data-dir"):
        get_task("RTE").load_splits(None)


@pytest.mark.needs_data
def test_tasks_work_without_datasets_installed():
    code = (
        "import sys; sys.modules['datasets'] = None\n"
        "from rmask_tune.tasks import get_task\n"
        f"s = get_task('RTE').load_splits({str(DATA)!r}, train_examples=4, dev_examples=2, test_examples=3)\n"
        "print(len(s.train), len(s.dev), len(s.test))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["4", "2", "3"]


# ---------------------------------------------------------------- CIFAR-10


@pytest.mark.needs_data
def test_cifar10_npz():
    task = get_task("CIFAR-10")
    splits = task.load_splits(DATA, seed=0)
    assert splits.meta["sizes"] == {"train": 1000, "dev": 500, "test": 1000}
    assert splits.meta["source"] == str(DATA / "cifar10" / "cifar10_subset.npz")
    ex = splits.train[0]
    assert isinstance(ex, ImageExample) and ex.image.shape == (32, 32, 3) and ex.image.dtype == np.uint8
    assert {e.label for e in splits.test} == set(range(10))
    assert not set(uids(splits.train)) & set(uids(splits.dev))
    with np.load(DATA / "cifar10" / "cifar10_subset.npz") as npz:
        index = int(ex.uid.removeprefix("train-"))
        assert np.array_equal(ex.image, npz["train_images"][index]) and ex.label == npz["train_labels"][index]
    assert task.evaluate(splits.test, [e.label for e in splits.test]) == {"accuracy": 1.0}


def test_cifar10_image_folder(tmp_path):
    from PIL import Image

    from rmask_tune.tasks.images import CIFAR10_CLASSES

    for split in ("train", "test"):
        for label, name in enumerate(CIFAR10_CLASSES):
            folder = tmp_path / "cifar10" / split / name
            folder.mkdir(parents=True)
            Image.new("RGB", (32, 32), (label * 20, 0, 0)).save(folder / "a.png")
    splits = get_task("CIFAR-10").load_splits(tmp_path, train_examples=6, dev_examples=4, test_examples=10)
    assert splits.meta["sizes"] == {"train": 6, "dev": 4, "test": 10}
    for ex in splits.test:
        assert ex.image.shape == (32, 32, 3) and ex.image[0, 0, 0] == ex.label * 20


# ---------------------------------------------------------------- metrics


def test_answer_normalization_f1_and_em():
    assert metrics.normalize_answer("  The Cat, sat on a   MAT! ") == "cat sat on mat"
    assert metrics.answer_em("An apple.", "apple") == 1.0
    # pred "the big red dog" -> [big, red, dog]; gold "a red dog barked" -> [red, dog, barked]: P=R=2/3
    assert metrics.answer_f1("the big red dog", "a red dog barked") == pytest.approx(2 / 3)
    assert metrics.answer_f1("July", "July, August, and September") == pytest.approx(2 * 1 * (1 / 4) / (1 + 1 / 4))
    assert metrics.answer_f1("the", "a") == 1.0  # both normalize to empty
    assert metrics.answer_f1("", "Paris") == 0.0


def test_generation_scores_max_over_golds_and_cut_at_newline():
    examples = [
        GenerationExample("q0", "ctx", ("Denver Broncos", "Broncos")),
        GenerationExample("q1", "ctx", ("1912",)),
    ]
    scores = metrics.generation_scores(examples, [" the Broncos\nQuestion: next", "in 1912 maybe"])
    # q0: EM 1 against "Broncos"; q1: F1 = 2*(1/3)*1/(1/3+1) = 0.5, EM 0
    assert scores == {"f1": pytest.approx(0.75), "em": pytest.approx(0.5)}
    assert get_task("SQuAD").evaluate(examples, ["Broncos", "1912"]) == {"f1": 1.0, "em": 1.0}


def test_multirc_scores_group_by_question():
    def option(q, i, label):
        return ChoiceExample(f"{q}-a{i}", "ctx", ("No", "Yes"), label, group=q)

    examples = [option("q1", 0, 1), option("q1", 1, 0), option("q1", 2, 1), option("q2", 0, 0), option("q2", 1, 1)]
    predictions = [1, 0, 1, 0, 0]  # q1 all right; q2 misses its true answer
    scores = get_task("MultiRC").evaluate(examples, predictions)
    # per-option accuracy 4/5; EM 1/2 questions; F1a: tp=2 fp=0 fn=1 -> 4/5
    assert scores == {"accuracy": pytest.approx(0.8), "em": 0.5, "f1a": pytest.approx(0.8)}


def test_cb_macro_f1_and_accuracy():
    examples = [ChoiceExample(str(i), "c", ("Yes", "No", "Maybe"), y) for i, y in enumerate([0, 0, 1, 1, 2])]
    scores = get_task("CB").evaluate(examples, [0, 1, 1, 1, 0])
    # class 0: tp1 fp1 fn1 -> .5; class 1: tp2 fp1 fn0 -> .8; class 2: tp0 -> 0
    assert scores == {"accuracy": pytest.approx(0.6), "macro_f1": pytest.approx(1.3 / 3)}


def test_every_task_scores_gold_predictions_perfectly_under_its_primary_metric():
    for task in TASKS.values():
        if task.kind == "generation":
            examples = [GenerationExample("g", "ctx", ("an answer",))]
            gold = ["an answer"]
        elif task.kind == "image":
            examples = [ImageExample("i", np.zeros((2, 2, 3), np.uint8), 7)]
            gold = [7]
        else:
            examples = [ChoiceExample("c", "ctx", (" a", " b"), 1, group="q")]
            gold = [1]
        assert task.evaluate(examples, gold)[task.metric] == 1.0, task.name
