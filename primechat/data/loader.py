"""The pretraining loader: BOS-aligned best-fit packing of documents into rows, with an exact resumable state.

Every row of T+1 tokens starts at a document's <|bos|>. A buffer of tokenized documents is kept; each row is filled
by repeatedly placing the longest buffered document that still fits, and when none fits, the shortest one is
cropped to fill the row exactly (its tail is dropped). No padding, no attention across a row's start, and far fewer
tokens cropped away than cutting a stream at fixed offsets (nanochat B3).

Data stream s of S reads row groups s, s+S, s+2S, … of every shard, so streams see disjoint data; DataParallelLoader
gives each process its streams. The state (position of the next unread document + the buffer's contents) is saved
with each checkpoint, so a resumed run sees exactly the batches an uninterrupted one would have.
"""

import bisect

import torch

from primechat.common import UserError
from primechat.data.shards import open_shard, read_row_group


class PretrainLoader:
    def __init__(self, tokenizer, paths, batch_size, seq_len, stream=0, num_streams=1, device="cpu",
                 buffer_size=1000, state=None):
        self.tokenizer, self.paths = tokenizer, paths
        self.B, self.T = batch_size, seq_len
        self.stream, self.num_streams, self.device = stream, num_streams, torch.device(device)
        self.buffer_size = buffer_size
        self.buffer = []  # (length, arrival number, tokens) sorted by length
        self.arrivals = 0
        self.epoch, self.shard, self.row_group, self.doc = 1, 0, stream, 0  # the next document to read
        self.pending = []  # tokenized documents of the current row group from self.doc on
        if state:
            self.load_state_dict(state)

    # ---- reading documents in a fixed order --------------------------------------------------------------------
    def _next_document(self):
        empty_passes = 0
        while not self.pending:
            if self.shard >= len(self.paths):  # end of the split: start the next epoch
                empty_passes = empty_passes + 1 if self.arrivals == 0 else 0
                if empty_passes > 1:
                    raise UserError(f"{len(self.paths)} shard(s) hold too few row groups for data stream "
                                    f"{self.stream} of {self.num_streams}: add data, or use fewer GPUs or "
                                    f"--data-streams")
                self.epoch, self.shard, self.row_group, self.doc = self.epoch + 1, 0, self.stream, 0
                continue
            pf = open_shard(self.paths[self.shard])  # a damaged shard: one line naming it
            if self.row_group >= pf.num_row_groups:
                self.shard, self.row_group, self.doc = self.shard + 1, self.stream, 0
                continue
            texts = read_row_group(pf, self.paths[self.shard], self.row_group)
            self.pending = self.tokenizer.encode(texts[self.doc:], prepend=self.tokenizer.bos_id)
            if not self.pending:
                self.row_group, self.doc = self.row_group + self.num_streams, 0
        tokens = self.pending.pop(0)
        self.doc += 1
        if not self.pending:
            self.row_group, self.doc = self.row_group + self.num_streams, 0
        return tokens

    def _fill_buffer(self):
        while len(self.buffer) < self.buffer_size:
            tokens = self._next_document()
            bisect.insort(self.buffer, (len(tokens), self.arrivals, tokens))
            self.arrivals += 1

    # ---- packing --------------------------------------------------------------------------------------------
    def _row(self):
        row, room = [], self.T + 1
        while room > 0:
            self._fill_buffer()
            i = bisect.bisect_right(self.buffer, room, key=lambda entry: entry[0]) - 1
            if i >= 0:  # the longest document that fits
                tokens = self.buffer.pop(i)[2]
            else:  # none fits: crop the shortest
                tokens = self.buffer.pop(0)[2][:room]
            row += tokens
            room -= len(tokens)
        return row

    def next_batch(self):
        """(inputs, targets): int64 tensors of shape (B, T) on the device; targets are inputs shifted by one."""
        rows = torch.tensor([self._row() for _ in range(self.B)], dtype=torch.long)
        if self.device.type == "cuda":
            rows = rows.pin_memory().to(self.device, non_blocking=True)
        else:
            rows = rows.to(self.device)
        return rows[:, :-1], rows[:, 1:]

    def __iter__(self):
        while True:
            yield self.next_batch()

    # ---- exact resume -------------------------------------------------------------------------------------------
    def position(self) -> tuple:
        """Where the stream stands, taken in microseconds: buffered token lists are replaced, never modified, so a
        shallow copy of the buffer keeps them. Pending documents are re-read from (row_group, doc) on load."""
        return self.epoch, self.shard, self.row_group, self.doc, self.arrivals, list(self.buffer)

    def state_dict(self, position: tuple | None = None) -> dict:
        """The state now, or at an earlier position()."""
        epoch, shard, row_group, doc, arrivals, buffer = position or self.position()
        return {"epoch": epoch, "shard": shard, "row_group": row_group, "doc": doc, "arrivals": arrivals,
                "buffer": [(n, a, list(t)) for n, a, t in buffer], "stream": self.stream,
                "num_streams": self.num_streams}

    def load_state_dict(self, state: dict):
        if (state["stream"], state["num_streams"]) != (self.stream, self.num_streams):
            raise UserError(f"loader state was saved by data stream {state['stream']} of {state['num_streams']}, "
                            f"not {self.stream} of {self.num_streams}: resume with the same number of processes "
                            f"and --data-streams")
        self.epoch, self.shard, self.row_group, self.doc = state["epoch"], state["shard"], state["row_group"], \
            state["doc"]
        self.arrivals, self.buffer, self.pending = state["arrivals"], [tuple(e) for e in state["buffer"]], []


class DataParallelLoader:
    """This process's share of S data streams: stream s packs row groups s, s+S, s+2S, … and this rank owns streams
    rank, rank+world, …, taking them in turn for successive micro-batches.

    The rows of an optimizer step then depend on S, not on how many processes share the work, so one process with
    gradient accumulation and S=2 trains on exactly what 2 GPUs would (S defaults to the process count).
    """

    def __init__(self, tokenizer, paths, batch_size, seq_len, rank, world, num_streams, device, state=None):
        if num_streams % world:
            raise UserError(f"--data-streams {num_streams} must be a multiple of the {world} processes")
        if state and "streams" not in state:
            raise UserError("this checkpoint's loader state was saved by an older primechat, whose format this "
                            "version cannot continue exactly: start the run afresh (or resume with the older version)")
        streams = range(rank, num_streams, world)
        states = state["streams"] if state else [None] * len(streams)
        self.streams = [PretrainLoader(tokenizer, paths, batch_size, seq_len, s, num_streams, device, state=st)
                        for s, st in zip(streams, states)]
        self.turn = state["turn"] if state else 0
        self.ahead = None  # (batch, turn, stream position before it): a batch packed early by prefetch()

    def next_batch(self):
        if self.ahead:
            batch, self.ahead = self.ahead[0], None
            return batch
        batch = self.streams[self.turn].next_batch()
        self.turn = (self.turn + 1) % len(self.streams)
        return batch

    def prefetch(self):
        """Pack the next batch now, while the GPU still works on the last step, rather than when it is asked for
        and the GPU waits. state_dict still describes the batches handed out: a resumed run packs this one again."""
        if self.ahead is None:
            turn, position = self.turn, self.streams[self.turn].position()
            self.ahead = (self.next_batch(), turn, position)

    def state_dict(self) -> dict:
        if self.ahead is None:
            return {"turn": self.turn, "streams": [s.state_dict() for s in self.streams]}
        _, turn, position = self.ahead
        return {"turn": turn, "streams": [s.state_dict(position if i == turn else None)
                                          for i, s in enumerate(self.streams)]}
