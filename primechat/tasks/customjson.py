"""A user's own conversations from a JSONL file, e.g. the identity/personality set (configs/identity.jsonl).

Each line is one conversation: {"messages": [...]} or just the list of messages, an optional system message, then
user and assistant in turn, ending with the assistant. The whole file is checked when loaded, and the first bad line
is reported as `file:line: what is wrong`, so a typo never surfaces halfway through a training run.
"""

import json
from pathlib import Path

from primechat.common import UserError
from primechat.tasks.common import Task, check_messages


def read_conversations(path: str | Path) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"conversation file {path} not found: give a JSONL file, one conversation per line")
    conversations = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                item = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"{where}: not valid JSON ({e.msg} at column {e.colno})") from None
            messages = item.get("messages") if isinstance(item, dict) else item
            try:
                check_messages(messages, where)
            except ValueError as e:
                raise UserError(str(e)) from None
            conversations.append({"messages": messages})
    if not conversations:
        raise UserError(f"{path} holds no conversations: write one JSON conversation per line")
    return conversations


class CustomJSON(Task):
    def __init__(self, path: str | Path, **slice_args):
        super().__init__(**slice_args)
        self.path = Path(path)
        self.conversations = read_conversations(path)

    @property
    def name(self) -> str:
        return self.path.name

    def num_examples(self) -> int:
        return len(self.conversations)

    def get_example(self, index: int) -> dict:
        return self.conversations[index]
