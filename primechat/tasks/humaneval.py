"""HumanEval (openai/openai_humaneval): 164 Python functions to complete from a signature and docstring. Generative.

The user turn is the prompt; the reference assistant turn is prompt + canonical solution. A completion passes when
the program "imports of the prompt + the completion's first ```python block (else all of it) + the tests +
check(entry_point)" runs without error in the sandbox (primechat/eval/sandbox.py).
"""

import re

from primechat.eval.sandbox import execute_code
from primechat.tasks.common import Task
from primechat.tasks.hub import HubRows

CODE_BLOCK = re.compile(r"```(?:python|py)?\s*\n(.*?)```", re.DOTALL)


def extract_program(completion: str) -> str:
    """The first fenced code block of a completion, or the whole completion when it has none."""
    match = CODE_BLOCK.search(completion)
    return match.group(1) if match else completion


def prompt_imports(prompt: str) -> str:
    """The prompt's import lines: completions often restate the function without them."""
    return "\n".join(line for line in prompt.splitlines() if line.startswith(("import ", "from ")))


class HumanEval(Task):
    eval_type = "generative"

    def __init__(self, split: str = "test", subset: str = "openai_humaneval", repo: str = "openai/openai_humaneval",
                 seed: int = 42, timeout: float = 5.0, **slice_args):
        super().__init__(**slice_args)
        self.timeout = timeout
        self.rows = HubRows(repo, subset, split, ["task_id", "prompt", "canonical_solution", "test", "entry_point"],
                            seed=seed)

    def num_examples(self) -> int:
        return len(self.rows)

    def get_example(self, index: int) -> dict:
        row = self.rows[index]
        return {"messages": [{"role": "user", "content": row["prompt"]},
                             {"role": "assistant", "content": row["prompt"] + row["canonical_solution"]}],
                "task_id": row["task_id"], "prompt": row["prompt"], "test": row["test"],
                "entry_point": row["entry_point"]}

    def evaluate(self, conversation: dict, completion: str) -> bool:
        program = "\n\n".join([prompt_imports(conversation["prompt"]), extract_program(completion),
                               conversation["test"], f"check({conversation['entry_point']})"])
        return execute_code(program, timeout=self.timeout).success
