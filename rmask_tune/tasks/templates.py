"""Prompt templates: one canonical record -> examples, rendering the prompts of the MeZO setup.

A ChoiceExample's ``context`` is the prompt and each candidate the continuation scored after it
(with its leading space where the prompt needs one), so ``context + candidates[label]`` is the
full gold prompt. Candidates for fixed label sets follow the dataset's label order. Each
template's docstring shows its rendering; ``\\n`` is a newline.
"""

from __future__ import annotations

from typing import Any

from rmask_tune.errors import RmaskError
from rmask_tune.tasks.base import ChoiceExample, GenerationExample

Record = dict[str, Any]

RTE_LABELS = ("entailment", "not_entailment")
CB_LABELS = ("entailment", "contradiction", "neutral")
YES_NO = ("Yes", "No")
NO_YES = ("No", "Yes")


def label_index(value: Any, names: tuple[str, ...] = ()) -> int:
    """A gold label as an index: an int or bool as is, a digit string, or a name looked up in ``names``."""
    if isinstance(value, str):
        if value in names:
            return names.index(value)
        if value.strip().isdigit():
            return int(value)
    elif isinstance(value, (bool, int)):
        return int(value)
    raise RmaskError(f"unknown label {value!r} (expected {' / '.join(names) or 'an integer'})")


def sst2(record: Record, uid: str) -> ChoiceExample:
    """SST-2: ``{sentence} It was`` + `` terrible`` | `` great`` (label 0 negative, 1 positive)."""
    sentence = record["sentence"].strip()
    return ChoiceExample(
        uid=uid,
        context=f"{sentence} It was",
        candidates=(" terrible", " great"),
        label=label_index(record["label"]),
        text_pair=(sentence, None),
    )


def rte(record: Record, uid: str) -> ChoiceExample:
    """RTE: ``{premise}\\nDoes this mean that "{hypothesis}" is true? Yes or No?\\n`` + ``Yes`` | ``No``.

    Labels: entailment = 0 = Yes, not_entailment = 1 = No.
    """
    premise, hypothesis = record["premise"], record["hypothesis"]
    return ChoiceExample(
        uid=uid,
        context=f'{premise}\nDoes this mean that "{hypothesis}" is true? Yes or No?\n',
        candidates=YES_NO,
        label=label_index(record["label"], RTE_LABELS),
        text_pair=(premise, hypothesis),
    )


def cb(record: Record, uid: str) -> ChoiceExample:
    """CB: ``Suppose {premise} Can we infer that "{hypothesis}"? Yes, No, or Maybe?\\n`` + ``Yes`` | ``No`` | ``Maybe``.

    Labels: entailment = 0 = Yes, contradiction = 1 = No, neutral = 2 = Maybe.
    """
    premise, hypothesis = record["premise"], record["hypothesis"]
    return ChoiceExample(
        uid=uid,
        context=f'Suppose {premise} Can we infer that "{hypothesis}"? Yes, No, or Maybe?\n',
        candidates=("Yes", "No", "Maybe"),
        label=label_index(record["label"], CB_LABELS),
        text_pair=(premise, hypothesis),
    )


def boolq(record: Record, uid: str) -> ChoiceExample:
    """BoolQ: ``{passage} {Question}?\\n`` + ``No`` | ``Yes`` (label 0 false, 1 true).

    The question gets a capital first letter and a trailing ``?`` when it lacks one.
    Encoder pair: (question, passage).
    """
    question = record["question"].strip()
    if not question.endswith("?"):
        question += "?"
    question = question[:1].upper() + question[1:]
    return ChoiceExample(
        uid=uid,
        context=f"{record['passage']} {question}\n",
        candidates=NO_YES,
        label=label_index(record["label"]),
        text_pair=(record["question"], record["passage"]),
    )


def wsc(record: Record, uid: str) -> ChoiceExample:
    """WSC: ``{text}\\nIn the previous sentence, does the pronoun "{span2 lowercased}" refer to {span1}? Yes or No?\\n``
    + ``No`` | ``Yes`` (label 0 false, 1 true).

    Spans come from ``target`` (SuperGLUE jsonl) or the record itself (hub ``wsc.fixed``).
    Encoder pair: (text, ``Does the pronoun "{span2}" refer to {span1}?``).
    """
    spans = record.get("target", record)
    text, span1, span2 = record["text"], spans["span1_text"], spans["span2_text"]
    question = f'does the pronoun "{span2.lower()}" refer to {span1}?'
    return ChoiceExample(
        uid=uid,
        context=f"{text}\nIn the previous sentence, {question} Yes or No?\n",
        candidates=NO_YES,
        label=label_index(record["label"]),
        text_pair=(text, question[:1].upper() + question[1:]),
    )


def wic(record: Record, uid: str) -> ChoiceExample:
    """WiC: ``Does the word "{word}" have the same meaning in these two sentences? Yes, No?\\n``
    ``{sentence1}\\n{sentence2}\\n`` + ``No`` | ``Yes`` (label 0 false, 1 true).

    Encoder pair: (``{word}: {sentence1}``, sentence2).
    """
    word, s1, s2 = record["word"], record["sentence1"], record["sentence2"]
    return ChoiceExample(
        uid=uid,
        context=f'Does the word "{word}" have the same meaning in these two sentences? Yes, No?\n{s1}\n{s2}\n',
        candidates=NO_YES,
        label=label_index(record["label"]),
        text_pair=(f"{word}: {s1}", s2),
    )


def multirc(record: Record, uid: str) -> list[ChoiceExample]:
    """MultiRC, one decision per answer option of a question (all share ``group`` = the question uid):
    ``{paragraph}\\nQuestion: {question}\\nI found this answer "{answer}". Is that correct? Yes or No?\\n``
    + ``No`` | ``Yes`` (label 0 wrong answer, 1 right answer).

    ``record`` is a question: {paragraph, question, answers: [{text, label}, ...]}.
    Encoder pair: (paragraph, ``{question} {answer}``).
    """
    paragraph, question = record["paragraph"], record["question"]
    prompt = f"{paragraph}\nQuestion: {question}\nI found this answer"
    return [
        ChoiceExample(
            uid=f"{uid}-a{i}",
            context=f'{prompt} "{answer["text"]}". Is that correct? Yes or No?\n',
            candidates=NO_YES,
            label=label_index(answer["label"]),
            text_pair=(paragraph, f"{question} {answer['text']}"),
            group=uid,
        )
        for i, answer in enumerate(record["answers"])
    ]


def copa(record: Record, uid: str) -> ChoiceExample:
    """COPA: ``{premise without its final period} so`` (effect) or ``... because`` (cause), then each
    choice as the continuation `` {choice}`` with its first word lowercased unless it is "I".

    E.g. ``The man turned on the faucet so`` + `` the toilet filled with water.`` | `` water flowed from the spout.``
    """
    premise = record["premise"].rstrip()
    if premise.endswith("."):
        premise = premise[:-1]
    conjunction = {"effect": "so", "cause": "because"}[record["question"]]
    return ChoiceExample(
        uid=uid,
        context=f"{premise} {conjunction}",
        candidates=(f" {_lower_first_word(record['choice1'])}", f" {_lower_first_word(record['choice2'])}"),
        label=label_index(record["label"]),
    )


def _lower_first_word(text: str) -> str:
    first, _, rest = text.strip().partition(" ")
    if first != "I":
        first = first.lower()
    return f"{first} {rest}" if rest else first


def record_task(record: Record, uid: str) -> ChoiceExample:
    """ReCoRD: the passage with each ``@highlight\\n`` turned into ``- ``, then ``\\n-``; each candidate
    is `` {query}`` with ``@placeholder`` replaced by one passage entity.

    ``record``: {passage, query, entities: [str] (distinct, passage order), answers: [str]}.
    ``label`` is the first gold entity; ``golds`` every entity that is a gold answer.
    """
    passage = record["passage"].replace("@highlight\n", "- ")
    entities, answers = record["entities"], set(record["answers"])
    golds = tuple(i for i, entity in enumerate(entities) if entity in answers)
    if not golds:
        raise RmaskError(f"ReCoRD record {uid}: no gold answer among its entities")
    return ChoiceExample(
        uid=uid,
        context=f"{passage}\n-",
        candidates=tuple(" " + record["query"].replace("@placeholder", entity) for entity in entities),
        label=golds[0],
        golds=golds,
    )


def squad(record: Record, uid: str) -> GenerationExample:
    """SQuAD: ``Title: {title}\\nContext: {context}\\nQuestion: {question}\\nAnswer:`` (target `` {answer}\\n``).

    The ``Title:`` line is left out when the record has no title (the offline squad/dev.json has none).
    """
    title = record.get("title")
    prefix = f"Title: {title}\n" if title else ""
    return GenerationExample(
        uid=uid,
        context=f"{prefix}Context: {record['context']}\nQuestion: {record['question'].strip()}\nAnswer:",
        answers=_answers(record, uid),
    )


def drop(record: Record, uid: str) -> GenerationExample:
    """DROP: ``Passage: {passage}\\nQuestion: {question}\\nAnswer:`` (target `` {answer}\\n``)."""
    return GenerationExample(
        uid=uid,
        context=f"Passage: {record['passage']}\nQuestion: {record['question'].strip()}\nAnswer:",
        answers=_answers(record, uid),
    )


def _answers(record: Record, uid: str) -> tuple[str, ...]:
    answers = record["answers"]
    answers = (answers,) if isinstance(answers, str) else tuple(a for a in answers if a.strip())
    if not answers:
        raise RmaskError(f"record {uid}: no gold answer")
    return answers
