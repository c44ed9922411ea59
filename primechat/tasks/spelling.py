"""Generated spelling tasks (nanochat's SpellingBee and SimpleSpelling), over a word list from words.py.

Tokens hide letters from a model ("strawberry" is one or two tokens), so counting letters is hard for it. These tasks
teach the two skills that work around that:
- SimpleSpelling: "Spell the word: apple" -> "apple:a,p,p,l,e".
- SpellingBee: "How many r are in strawberry?" -> spell the word out, count by hand, check with the python tool
  (`'strawberry'.count('r')`), and answer `#### 3`. Generative: evaluate() compares the number after `#### `.
Example i of a split is generated from its own Random(f"{seed}:{split}:{i}"), so any slice is cheap and the same on
every run and rank, and train and test draw different examples.
"""

import random

from primechat.tasks.common import Task, extract_number

LETTERS = "abcdefghijklmnopqrstuvwxyz"

# {letter} and {word} are filled in, each maybe quoted; a few languages so the skill is not tied to one phrasing.
QUESTIONS = [
    "How many {letter} are in {word}?",
    "How many times does the letter {letter} appear in {word}?",
    "Count the {letter}s in {word}.",
    "How many {letter}'s does {word} have?",
    "In the word {word}, how many times does {letter} occur?",
    "What is the number of {letter} in {word}?",
    "Can you count how many {letter} there are in {word}?",
    "how many {letter} in {word}",
    "Tell me how often {letter} shows up in {word}.",
    "Number of occurrences of {letter} in {word}?",
    "I need the count of the letter {letter} in the word {word}.",
    "Quick one: {letter} in {word}, how many?",
    "¿Cuántas {letter} hay en {word}?",
    "Combien de {letter} y a-t-il dans {word} ?",
    "Wie viele {letter} sind in {word}?",
    "Quante {letter} ci sono in {word}?",
    "Quantas letras {letter} há em {word}?",
    "{word} 里有几个 {letter}？",
]
SIMPLE_QUESTIONS = ["Spell the word: {word}", "Spell {word}", "How do you spell {word}?",
                    "Spell out {word} letter by letter."]
TEST_OFFSET = 10_000_000  # nanochat's offset between train and test seeds; kept in the seed string below


def quoted(rng: random.Random, text: str) -> str:
    return rng.choice(["{}", "'{}'", '"{}"'] * 2 + ["`{}`"]).format(text)


class SpellingTask(Task):
    needs_words = True

    def __init__(self, words: list[str], size: int, split: str = "train", seed: int = 42, **slice_args):
        super().__init__(**slice_args)
        if not words:
            raise ValueError("the word list is empty")
        self.words, self.size, self.split, self.seed = words, size, split, seed

    def num_examples(self) -> int:
        return self.size

    def rng(self, index: int) -> random.Random:
        offset = 0 if self.split == "train" else TEST_OFFSET
        return random.Random(f"{self.name}:{self.seed}:{offset + index}")


class SimpleSpelling(SpellingTask):
    def get_example(self, index: int) -> dict:
        rng = self.rng(index)
        word = rng.choice(self.words)
        return {"messages": [{"role": "user", "content": rng.choice(SIMPLE_QUESTIONS).format(word=word)},
                             {"role": "assistant", "content": f"{word}:{','.join(word)}"}]}


class SpellingBee(SpellingTask):
    eval_type = "generative"

    def get_example(self, index: int) -> dict:
        rng = self.rng(index)
        word = rng.choice(self.words)
        # mostly a letter of the word, sometimes any letter, so that 0 is a possible answer too
        letter = rng.choice(word) if rng.random() < 0.9 else rng.choice(LETTERS)
        question = rng.choice(QUESTIONS).format(letter=quoted(rng, letter), word=quoted(rng, word))
        if rng.random() < 0.3:
            question = question.lower()
        count = word.count(letter)
        running, lines = 0, []
        for char in word:
            running += char == letter
            lines.append(f"{char} ({running})" if char == letter else char)
        parts = [
            {"type": "text", "text": f"Let me spell '{word}' and count the letter '{letter}' as I go:\n"
                                     + "\n".join(lines) + f"\nThat makes {count}. Let me check with python:"},
            {"type": "python", "text": f"'{word}'.count('{letter}')"},
            {"type": "python_output", "text": str(count)},
            {"type": "text", "text": f"Both agree: '{letter}' appears {count} time{'' if count == 1 else 's'} in "
                                     f"'{word}'.\n#### {count}"},
        ]
        return {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": parts}],
                "answer": str(count)}

    def evaluate(self, conversation: dict, completion: str) -> bool:
        return extract_number(completion) == conversation["answer"]
