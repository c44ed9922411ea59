"""MMLU (cais/mmlu): 57 subjects of four-choice exam questions. Subset `all` has test (14K), validation (1.5K) and
dev (285); subset `auxiliary_train` (~100K questions from other exams, each row wrapped in a `train` field) is what
nanochat mid-trains on to teach the multiple-choice format. Categorical: the answer is one letter A-D."""

from primechat.tasks.common import MultipleChoiceTask
from primechat.tasks.hub import HubRows


class MMLU(MultipleChoiceTask):
    def __init__(self, split: str, subset: str = "all", repo: str = "cais/mmlu", seed: int = 42, **slice_args):
        super().__init__(**slice_args)
        self.wrapped = subset == "auxiliary_train"
        columns = ["train"] if self.wrapped else ["question", "subject", "choices", "answer"]
        self.rows = HubRows(repo, subset, split, columns, seed=seed)

    def num_examples(self) -> int:
        return len(self.rows)

    def get_example(self, index: int) -> dict:
        row = self.rows[index]
        if self.wrapped:
            row = row["train"]
        return self.conversation(row["question"], row["choices"], row["answer"], subject=row.get("subject", ""))
