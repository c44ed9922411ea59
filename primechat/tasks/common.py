"""Tasks: datasets of conversations with a logical slice, mixtures of them, and the multiple-choice format.

A conversation is {"messages": [{"role", "content"}, ...], ...extra} as tokenizer.render_conversation takes it; an
assistant content is a string or a list of parts {"type": "text"|"python"|"python_output", "text"}. Extras carry
what evaluation needs (the answer letters of a multiple-choice question, the reference answer, a test program).

Every Task has:
    len(task), task[i]               the i-th conversation of the slice start:stop:step of the underlying rows
    task.eval_type                   "categorical" (score the answer letter's logit), "generative" (sample, check),
                                     or None: training data only, no evaluate()
    task.evaluate(conv, completion)  True when the assistant's completion answers conversation `conv` correctly
    task.needs_words                 True for generated tasks built from a word list (mixture.generated_task)

TaskMixture shuffles all examples of its tasks together with a fixed seed (Random(42), as nanochat), so listing a
task twice doubles its share: that is how mixtures oversample.
"""

import random
import re

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
FINAL_NUMBER = re.compile(r"#### (\-?[0-9\.\,]+)")


class Task:
    """Base class: subclasses implement num_examples() and get_example(index) over their whole underlying data.

    A generated task (tasks/arithmetic.py, say) is one class plus its line in tasks/mixture.py's GENERATED:
    - its constructor takes size, split ("train"/"test"), seed and the slice's start/stop/step as keywords, and
      words (a list) when needs_words = True (mixture.generated_task loads it);
    - example i is the same on every run (e.g. drawn from Random(f"name:{seed}:{split}:{i}")), and test differs
      from train;
    - eval_type = "generative" with evaluate(conversation, completion) makes it count for `eval chat -a`,
      `--metrics` and `train rl --task`; its examples then carry "answer", what evaluate compares against. None: it
      is training data only. extract_number reads a number only: a task with text answers needs its own reader.
    """

    eval_type = None
    needs_words = False

    def __init__(self, start: int = 0, stop: int | None = None, step: int = 1):
        if start < 0 or step < 1 or (stop is not None and stop < start):
            raise ValueError(f"bad slice start={start} stop={stop} step={step}: need 0 <= start <= stop, step >= 1")
        self.start, self.stop, self.step = start, stop, step

    @property
    def name(self) -> str:
        return type(self).__name__

    def num_examples(self) -> int:
        raise NotImplementedError

    def get_example(self, index: int) -> dict:
        raise NotImplementedError

    def evaluate(self, conversation: dict, completion: str) -> bool:
        raise NotImplementedError(f"{self.name} has no evaluation")

    def __len__(self) -> int:
        stop = self.num_examples() if self.stop is None else min(self.stop, self.num_examples())
        return max(0, -(-(stop - self.start) // self.step))

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < len(self):
            raise IndexError(f"{self.name} has {len(self)} examples, no index {index}")
        return self.get_example(self.start + index * self.step)

    def __iter__(self):
        return (self[i] for i in range(len(self)))


class TaskMixture:
    """All examples of several tasks, interleaved in a fixed random order; a task listed k times is seen k times."""

    def __init__(self, tasks: list[Task], seed: int = 42):
        self.tasks = tasks
        self.index = [(t, i) for t, task in enumerate(tasks) for i in range(len(task))]
        random.Random(seed).shuffle(self.index)

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, index: int) -> dict:
        t, i = self.index[index]
        return self.tasks[t][i]

    def __iter__(self):
        return (self[i] for i in range(len(self)))


def extract_number(text: str) -> str | None:
    """The number after the first `#### ` (GSM8K's final-answer line), commas removed ("1,234" -> "1234"), or None
    if there is none: a text after `#### ` is None too."""
    match = FINAL_NUMBER.search(text)
    return match.group(1).strip().replace(",", "") if match else None


def render_mc(question: str, letters: list[str], choices: list[str]) -> str:
    """nanochat's multiple-choice prompt. The letter comes after its choice ("- Paris=A"): a small model reads the
    choice before it has to bind a letter to it, which helps it; the answer is the bare letter, one token."""
    lines = [f"Multiple Choice question: {question}"]
    lines += [f"- {choice}={letter}" for letter, choice in zip(letters, choices)]
    return "\n".join(lines) + "\n\nRespond only with the letter of the correct answer."


class MultipleChoiceTask(Task):
    """A categorical task: each example carries "letters" (the allowed answers) and "answer" (the right one)."""

    eval_type = "categorical"

    @staticmethod
    def conversation(question: str, choices: list[str], answer: int, letters: list[str] | None = None, **extra):
        letters = list(letters or LETTERS[:len(choices)])
        return {"messages": [{"role": "user", "content": render_mc(question, letters, choices)},
                             {"role": "assistant", "content": letters[answer]}],
                "letters": letters, "answer": letters[answer], **extra}

    def evaluate(self, conversation: dict, completion: str) -> bool:
        return completion.strip() == conversation["answer"]


def check_messages(messages, where: str) -> None:
    """Raise ValueError(why) unless `messages` is a trainable conversation: an optional system message, then user and
    assistant turns in alternation, ending with the assistant. `where` names the conversation in the message."""
    if not isinstance(messages, list) or not messages:
        raise ValueError(f"{where}: 'messages' must be a non-empty list")
    first = 1 if isinstance(messages[0], dict) and messages[0].get("role") == "system" else 0
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise ValueError(f"{where}: message {i} is not an object with role and content")
        expected = "system" if i < first else ("user", "assistant")[(i - first) % 2]
        if message.get("role") != expected:
            raise ValueError(f"{where}: message {i} has role {message.get('role')!r}, expected {expected!r} (roles "
                             "alternate user/assistant, starting with user after an optional system message)")
        content = message.get("content")
        ok = isinstance(content, str) or (expected == "assistant" and isinstance(content, list) and all(
            isinstance(p, dict) and p.get("type") in ("text", "python", "python_output")
            and isinstance(p.get("text"), str) for p in content))
        if not ok:
            raise ValueError(f"{where}: message {i} ({expected}) needs text content (an assistant may also have a "
                             "list of {'type': 'text'|'python'|'python_output', 'text': ...} parts)")
    if len(messages) == first or messages[-1]["role"] != "assistant":
        raise ValueError(f"{where}: the conversation must end with an assistant message")
