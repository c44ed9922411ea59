"""A generated arithmetic task with calculator calls, for the offline demo: "What is 37 * 12?".

The assistant restates the sum, calls the python tool on it, and ends with `#### 444`, the same shapes as GSM8K's
solutions, so a tiny demo model can practise tool use and the answer format without downloading GSM8K. Numbers have
1-3 digits; one problem in four has three operands. Example i comes from Random(f"arithmetic:{seed}:{split}:{i}").
Generative: evaluate() compares the number after `#### `.
"""

import random

from primechat.tasks.common import Task, extract_number

QUESTIONS = ["What is {expr}?", "Compute {expr}.", "Calculate {expr}", "what's {expr}?", "{expr} = ?",
             "Please work out {expr}.", "Can you tell me what {expr} equals?", "Solve: {expr}"]


class Arithmetic(Task):
    eval_type = "generative"

    def __init__(self, size: int, split: str = "train", seed: int = 42, **slice_args):
        super().__init__(**slice_args)
        self.size, self.split, self.seed = size, split, seed

    def num_examples(self) -> int:
        return self.size

    def get_example(self, index: int) -> dict:
        rng = random.Random(f"arithmetic:{self.seed}:{self.split}:{index}")
        terms = [str(rng.randint(0, 10 ** rng.randint(1, 3) - 1)) for _ in range(3 if rng.random() < 0.25 else 2)]
        expr = terms[0]
        for term in terms[1:]:
            expr += f" {rng.choice('+-*')} {term}"
        result = str(eval(expr))  # our own digits and operators only
        parts = [{"type": "text", "text": f"I'll use the calculator for {expr}."},
                 {"type": "python", "text": expr},
                 {"type": "python_output", "text": result},
                 {"type": "text", "text": f"{expr} = {result}\n#### {result}"}]
        return {"messages": [{"role": "user", "content": rng.choice(QUESTIONS).format(expr=expr)},
                             {"role": "assistant", "content": parts}],
                "answer": result}

    def evaluate(self, conversation: dict, completion: str) -> bool:
        return extract_number(completion) == conversation["answer"]
