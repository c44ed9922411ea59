"""The chat-training loader: conversations packed best-fit into rows, padded, with the loss on the assistant only.

Each conversation is rendered (tokenizer.render_conversation: ids, and a mask that is 1 on what the assistant writes)
and kept in a small buffer. A row of T+1 tokens takes the longest buffered conversation that still fits, again and
again; when none fits, the rest of the row is padding (BOS, never trained on). Conversations are never cut in two, so
every one keeps its whole context (nanochat B7's "pad" packing); one longer than a row is cut to the row.
Targets are the next tokens, set to -1 (ignored by the loss) where the mask is 0: user turns, tool outputs, padding.

Rank r of N reads conversations r, r+N, r+2N, … of the mixture; `progress` counts epochs consumed (1.0 = the whole
mixture once), which the training loop uses for its schedule and to stop. The state (cursor, epoch, buffer) is saved
with each checkpoint, so a resumed run sees exactly the batches an uninterrupted one would have.
"""

import bisect

import torch

from primechat.common import UserError


class ChatLoader:
    def __init__(self, tokenizer, conversations, batch_size: int, seq_len: int, rank: int = 0, world: int = 1,
                 device="cpu", buffer_size: int = 100, state: dict | None = None):
        self.tokenizer, self.conversations = tokenizer, conversations
        self.B, self.T = batch_size, seq_len
        self.rank, self.world, self.device = rank, world, torch.device(device)
        self.indices = range(rank, len(conversations), world)
        if not self.indices:
            raise UserError(f"the mixture has {len(conversations)} conversations, fewer than the {world} processes: "
                            "add data or use fewer GPUs")
        self.buffer_size = buffer_size
        self.buffer = []  # (length, arrival number, ids, mask) sorted by length
        self.cursor, self.epoch, self.arrivals = 0, 1, 0  # the next conversation: self.indices[self.cursor]
        if state:
            self.load_state_dict(state)

    @property
    def progress(self) -> float:
        """Epochs of this rank's conversations read so far (fractional)."""
        return self.epoch - 1 + self.cursor / len(self.indices)

    def _next_conversation(self) -> tuple[list[int], list[int]]:
        for _ in range(len(self.indices) + 1):
            if self.cursor == len(self.indices):
                self.cursor, self.epoch = 0, self.epoch + 1
            conversation = self.conversations[self.indices[self.cursor]]
            self.cursor += 1
            ids, mask = self.tokenizer.render_conversation(conversation, max_tokens=self.T + 1)
            if any(mask[1:]):  # cut to the row, it may have nothing left to learn from: skip it
                return ids, mask
        raise UserError(f"no conversation of this mixture has an assistant token within the first {self.T} tokens: "
                        "raise --max-seq-len or check the data")

    def _row(self) -> tuple[list[int], list[int]]:
        ids, mask, room = [], [], self.T + 1
        while room:
            while len(self.buffer) < self.buffer_size:
                conv_ids, conv_mask = self._next_conversation()
                bisect.insort(self.buffer, (len(conv_ids), self.arrivals, conv_ids, conv_mask))
                self.arrivals += 1
            i = bisect.bisect_right(self.buffer, room, key=lambda entry: entry[0]) - 1
            if i < 0:
                break
            _, _, conv_ids, conv_mask = self.buffer.pop(i)
            ids += conv_ids
            mask += conv_mask
            room -= len(conv_ids)
        return ids + [self.tokenizer.bos_id] * room, mask + [0] * room

    def next_batch(self):
        """(inputs, targets): int64 tensors of shape (B, T) on the device; targets are -1 where nothing is learned."""
        rows, masks = zip(*(self._row() for _ in range(self.B)))
        rows, masks = torch.tensor(rows, dtype=torch.long), torch.tensor(masks, dtype=torch.bool)
        targets = rows[:, 1:].masked_fill(~masks[:, 1:], -1)
        batch = torch.stack([rows[:, :-1], targets])
        if self.device.type == "cuda":
            batch = batch.pin_memory().to(self.device, non_blocking=True)
        else:
            batch = batch.to(self.device)
        return batch[0], batch[1]

    def state_dict(self) -> dict:
        return {"cursor": self.cursor, "epoch": self.epoch, "arrivals": self.arrivals,
                "buffer": [(n, a, list(ids), list(mask)) for n, a, ids, mask in self.buffer],
                "rank": self.rank, "world": self.world, "conversations": len(self.conversations)}

    def load_state_dict(self, state: dict):
        if (state["rank"], state["world"]) != (self.rank, self.world):
            raise UserError(f"loader state was saved by rank {state['rank']} of {state['world']}, not rank "
                            f"{self.rank} of {self.world}: resume with the same number of processes")
        if state["conversations"] != len(self.conversations):
            raise UserError(f"the checkpoint was trained on a mixture of {state['conversations']:,} conversations, "
                            f"this one has {len(self.conversations):,}: resume with the same --mixture")
        self.cursor, self.epoch, self.arrivals = state["cursor"], state["epoch"], state["arrivals"]
        self.buffer = [tuple(entry) for entry in state["buffer"]]
