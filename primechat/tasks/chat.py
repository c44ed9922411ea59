"""Any Hub dataset of chats as a Task: rows with a `messages` column, or instruction/response columns.

The mixture file says which columns hold what (`columns:`), so a new dataset needs no code:
    messages: COL                  a list of {"role", "content"} (the default, as in SmolTalk)
    instruction: COL, response: COL   one user turn and one assistant turn; optional `input: COL` (appended to the
                                   instruction after a blank line, as in Alpaca) and `system: COL`
A row that is not a valid conversation raises a UserError naming the dataset and row, so a bad dataset shows itself
in `primechat data mixture` before any training starts.
"""

from primechat.common import UserError
from primechat.tasks.common import Task, check_messages
from primechat.tasks.hub import HubRows

ROLES = ("messages", "instruction", "response", "input", "system")


def check_columns(columns: dict) -> None:
    """ValueError(why) unless `columns` maps roles of ROLES to column names in one of the two supported shapes."""
    unknown = [k for k in columns if k not in ROLES]
    if unknown:
        raise ValueError(f"unknown column role {unknown[0]!r}: use {', '.join(ROLES)}")
    if "messages" in columns and len(columns) > 1:
        raise ValueError("give either `messages` or `instruction` + `response` (+ `input`, `system`), not both")
    if "messages" not in columns and not {"instruction", "response"} <= set(columns):
        raise ValueError("give `messages: COLUMN`, or both `instruction: COLUMN` and `response: COLUMN`")


class ChatTask(Task):
    def __init__(self, repo: str, split: str, subset: str | None = None, columns: dict | None = None, seed: int = 42,
                 **slice_args):
        super().__init__(**slice_args)
        self.columns = columns or {"messages": "messages"}
        check_columns(self.columns)
        self.rows = HubRows(repo, subset, split, list(self.columns.values()), seed=seed)
        self.repo, self.split = repo, split

    @property
    def name(self) -> str:
        return self.repo

    def num_examples(self) -> int:
        return len(self.rows)

    def get_example(self, index: int) -> dict:
        row, col = self.rows[index], self.columns
        if "messages" in col:
            messages = [{"role": m.get("role"), "content": m.get("content")} if isinstance(m, dict) else m
                        for m in row[col["messages"]] or []]
        else:
            user = row[col["instruction"]]
            if col.get("input") and row[col["input"]]:
                user = f"{user}\n\n{row[col['input']]}"
            messages = [{"role": "user", "content": user}, {"role": "assistant", "content": row[col["response"]]}]
            if col.get("system") and row[col["system"]]:
                messages.insert(0, {"role": "system", "content": row[col["system"]]})
        try:
            check_messages(messages, f"{self.repo} {self.split} row {index}")
        except ValueError as e:
            raise UserError(f"{e}: map its columns with `columns:` in the mixture, or leave this dataset out") from None
        return {"messages": messages}

