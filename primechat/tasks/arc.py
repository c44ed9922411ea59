"""ARC (allenai/ai2_arc): grade-school science questions, subsets ARC-Easy and ARC-Challenge, splits train,
validation, test. Most have four choices, a few three or five, labelled A-E or 1-5: we keep the dataset's own labels
as the answer letters. Categorical."""

from primechat.tasks.common import MultipleChoiceTask
from primechat.tasks.hub import HubRows

SUBSETS = ("ARC-Easy", "ARC-Challenge")


class ARC(MultipleChoiceTask):
    def __init__(self, subset: str, split: str, repo: str = "allenai/ai2_arc", seed: int = 42, **slice_args):
        super().__init__(**slice_args)
        if subset not in SUBSETS:
            raise ValueError(f"ARC subset must be one of {', '.join(SUBSETS)}, not {subset!r}")
        self.subset = subset
        self.rows = HubRows(repo, subset, split, ["question", "choices", "answerKey"], seed=seed)

    @property
    def name(self) -> str:
        return self.subset

    def num_examples(self) -> int:
        return len(self.rows)

    def get_example(self, index: int) -> dict:
        row = self.rows[index]
        labels = row["choices"]["label"]
        return self.conversation(row["question"], row["choices"]["text"], labels.index(row["answerKey"]),
                                 letters=labels)
