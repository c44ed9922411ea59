"""GSM8K (openai/gsm8k, subset `main`): grade-school math word problems, train 7,473 / test 1,319. Generative.

The reference solutions mark each calculation as `<<48/2=24>>`. We turn every such mark into a tool call, so the
model learns to use its calculator: a `python` part with the expression (trained: the model must write it) and a
`python_output` part with the result (not trained: at inference the engine computes it and writes it in). The final
line `#### 72` stays as text, and the number after `#### ` is the answer that evaluation compares.
"""

import re

from primechat.tasks.common import Task, extract_number
from primechat.tasks.hub import HubRows

CALC = re.compile(r"<<([^<>]*?)>>")


def solution_parts(solution: str) -> list[dict]:
    """A solution with `<<expr=result>>` marks as assistant parts: text, then python(expr) + python_output(result)."""
    parts = []
    for i, piece in enumerate(CALC.split(solution)):
        if i % 2 == 0:  # text between the marks
            if piece:
                parts.append({"type": "text", "text": piece})
            continue
        expr, _, result = piece.rpartition("=")
        parts.append({"type": "python", "text": expr})
        parts.append({"type": "python_output", "text": result})
    return parts


class GSM8K(Task):
    eval_type = "generative"

    def __init__(self, split: str, subset: str = "main", repo: str = "openai/gsm8k", seed: int = 42, **slice_args):
        super().__init__(**slice_args)
        self.rows = HubRows(repo, subset, split, ["question", "answer"], seed=seed)

    def num_examples(self) -> int:
        return len(self.rows)

    def get_example(self, index: int) -> dict:
        row = self.rows[index]
        return {"messages": [{"role": "user", "content": row["question"]},
                             {"role": "assistant", "content": solution_parts(row["answer"])}],
                "answer": extract_number(row["answer"])}

    def evaluate(self, conversation: dict, completion: str) -> bool:
        predicted = extract_number(completion)
        return predicted is not None and predicted == conversation["answer"]
