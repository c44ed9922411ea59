"""Talk to a model in the terminal: multi-turn chat with streamed replies and speed stats after each one.

The conversation is kept as one growing list of token ids (<|bos|>, then <|user_start|>…<|user_end|>
<|assistant_start|>…<|assistant_end|> per turn), so history is never re-encoded. A base model has no chat format:
with -i base each prompt is completed as plain text instead.

Commands: /clear (or clear: new conversation), /temperature [value], /topk [k], /help, /quit (or quit, exit, Ctrl-D).
Ctrl-C stops the reply being written (it stays in the conversation) or, at the prompt, clears the line.
"""

import random
import sys
import time

from primechat.common import UserError, compute_init
from primechat.engine import Engine, StreamDecoder, tool_call_specials
from primechat.train.checkpoint import STAGE_DIRS, checkpoint_dir, default_tag, load_model, resolve_step

HELP = """commands:
  /clear              start a new conversation
  /temperature [v]    show or set the sampling temperature (0 = greedy)
  /topk [k]           show or set top-k sampling (0 = no limit)
  /help               this list
  /quit               leave (also quit, exit, Ctrl-D)
Ctrl-C stops a reply; what it wrote so far stays in the conversation."""


def load_stage(stage: str, tag: str | None, step: int | None, device):
    """(model, tokenizer, name): load_model, named stage/tag/step as everywhere else in primechat; a stage without
    checkpoints is answered with the stages that have some."""
    if tag is None:
        if not _has_checkpoints(stage):
            present = [other for other in STAGE_DIRS if _has_checkpoints(other)]
            hint = (f"checkpoints exist for: {', '.join(present)} (pick one with -i)" if present
                    else "there are no checkpoints at all: train a model first")
            raise UserError(f"no {stage} checkpoint to chat with; {hint}")
        tag = default_tag(stage)
    step = resolve_step(checkpoint_dir(stage, tag), step)
    model, tokenizer, _ = load_model(stage, tag, step, device)
    return model, tokenizer, f"{stage}/{tag}/{step}"


def _has_checkpoints(stage: str) -> bool:
    try:
        default_tag(stage)
        return True
    except UserError:
        return False


class Chat:
    """One conversation with a model: sends a turn, streams the reply to `out`, keeps the token history."""

    def __init__(self, engine, tokenizer, chat_format: bool, temperature: float, top_k: int, max_tokens: int,
                 out=None, seed: int = 0):
        self.engine, self.tokenizer, self.chat_format = engine, tokenizer, chat_format
        self.temperature, self.top_k, self.max_tokens = temperature, top_k, max_tokens
        self.out = out or sys.stdout
        special = tokenizer.encode_special
        self.user_start, self.user_end = special("<|user_start|>"), special("<|user_end|>")
        self.assistant_start, self.assistant_end = special("<|assistant_start|>"), special("<|assistant_end|>")
        self.decoder = StreamDecoder(tokenizer, tool_call_specials(tokenizer))
        self.seed = seed  # each reply draws with the next one
        self.stopped = False  # whether Ctrl-C cut the last reply short
        self.context = 0  # tokens in context after the last reply
        self.clear()

    def clear(self):
        self.tokens = [self.tokenizer.bos_id]

    def reply(self, text: str, heading: str = "") -> str:
        """Generate the answer to `text`, streaming it after `heading`; returns the one-line stats. Ctrl-C stops the
        reply and sets self.stopped; what it wrote stays in the history. UserError, with the history unchanged, when
        the prompt leaves the model no room to answer (the engine would silently write nothing)."""
        if self.chat_format:
            prompt = self.tokens + [self.user_start, *self.tokenizer.encode(text), self.user_end, self.assistant_start]
        else:  # plain completion: each prompt stands alone
            prompt = [self.tokenizer.bos_id, *self.tokenizer.encode(text)]
        if len(prompt) >= self.engine.context:
            raise UserError(self._too_long(len(prompt)))
        self.out.write(heading)
        if not self.chat_format:
            self.out.write(text)  # the reply continues it
        self.out.flush()
        self.seed += 1  # a fresh draw each turn; the same --seed repeats a session's replies
        self.stopped = False
        start = time.perf_counter()
        first = None
        generated = []
        steps = self.engine.generate(prompt, max_tokens=self.max_tokens, temperature=self.temperature,
                                     top_k=self.top_k, seed=self.seed)
        try:
            for column, _ in steps:
                token = column[0]
                if first is None:
                    first = time.perf_counter()
                if token in self.engine.ends:
                    break
                generated.append(token)  # before it shows: whoever sees a word and presses Ctrl-C keeps it
                self.out.write(self.decoder.push(token))
                self.out.flush()
        except KeyboardInterrupt:  # Ctrl-C stops this reply, not the whole conversation
            self.stopped = True
        finally:
            steps.close()
        end = time.perf_counter()
        self.out.write(self.decoder.flush() + "\n")
        if self.chat_format:
            self.tokens = prompt + generated + [self.assistant_end]  # close the turn even if the reply was cut off
        n = len(generated)
        ttft = (first or end) - start
        rate = f"{(n - 1) / (end - first):.1f} tok/s" if n > 1 and end > first else "- tok/s"
        stopped = " (stopped)" if self.stopped else ""
        self.context = len(self.tokens) if self.chat_format else len(prompt) + n
        return f"time to first token {ttft * 1000:.0f} ms · {rate} · {n} tokens{stopped} · {self.context} in context"

    def _too_long(self, length: int) -> str:
        limit = f"too long for this model's {self.engine.context:,}-token limit"
        if self.chat_format and len(self.tokens) > 1:  # earlier turns take room: starting again may help
            return f"the conversation is {length:,} tokens, {limit}: /clear to start again"
        return f"the prompt is {length:,} tokens, {limit}"

    def command(self, line: str) -> bool:
        """Handle a /command; False when the user wants to leave."""
        name, _, value = line.partition(" ")
        value = value.strip()
        if name in ("/quit", "/exit"):
            return False
        if name == "/clear":
            self.clear()
            print("(new conversation)", file=self.out)
        elif name == "/temperature":
            if value:
                self.temperature = _non_negative(value, float, self.temperature, self.out)
            print(f"temperature {self.temperature}", file=self.out)
        elif name == "/topk":
            if value:
                self.top_k = _non_negative(value, int, self.top_k, self.out)
            print(f"top-k {self.top_k or 'off'}", file=self.out)
        elif name == "/help":
            print(HELP, file=self.out)
        else:
            print(f"unknown command {name}; /help lists them", file=self.out)
        return True


def _non_negative(text: str, kind, current, out):
    """text as a number >= 0 of the given kind, else a message and the current value kept."""
    try:
        value = kind(text)
    except ValueError:
        value = -1
    if value < 0:
        print(f"not a {kind.__name__} >= 0: {text!r}", file=out)
        return current
    return value


def add_arguments(parser) -> None:
    parser.add_argument("-i", "--source", choices=list(STAGE_DIRS), default="sft", help="which stage's model")
    parser.add_argument("-g", "--model-tag", help="checkpoint tag (default: the stage's deepest d<N>)")
    parser.add_argument("-s", "--step", type=int, help="checkpoint step (default: the latest)")
    parser.add_argument("-p", "--prompt", help="answer this one prompt, print the reply and exit")
    parser.add_argument("-t", "--temperature", type=float, default=0.6, help="sampling temperature (0 = greedy)")
    parser.add_argument("-k", "--top-k", type=int, default=50, help="sample among the k likeliest tokens (0 = all)")
    parser.add_argument("-m", "--max-tokens", type=int, default=512, help="longest reply in tokens")
    parser.add_argument("--seed", type=int, default=None, help="sampling seed, to repeat replies (default: a new "
                        "one each run, so a prompt asked again gets another answer)")
    parser.add_argument("--device-type", choices=["cuda", "mps", "cpu"], help="default: autodetect")


def main(args) -> None:
    if args.temperature < 0 or args.top_k < 0 or args.max_tokens < 1:
        raise UserError("--temperature and --top-k must be >= 0 and --max-tokens >= 1")
    device, _, _ = compute_init(args.device_type)
    model, tokenizer, name = load_stage(args.source, args.model_tag, args.step, device)
    seed = random.SystemRandom().randrange(2**31) if args.seed is None else args.seed
    chat = Chat(Engine(model, tokenizer), tokenizer, chat_format=args.source != "base",
                temperature=args.temperature, top_k=args.top_k, max_tokens=args.max_tokens, seed=seed)
    if args.prompt is not None:
        stats = chat.reply(args.prompt)
        print(f"{stats} · seed {seed}", file=sys.stderr)  # --seed with it repeats the reply
        if chat.context > model.config.sequence_len:
            print(f"(the prompt and reply, {chat.context:,} tokens, run past the {model.config.sequence_len}-token "
                  f"context the model was trained on, where replies degrade)", file=sys.stderr)
        if chat.stopped:  # one-shot: Ctrl-C ends the command as usual (exit 130), after what it wrote
            raise KeyboardInterrupt
        return

    interactive = sys.stdin.isatty()
    dim, reset = ("\033[2m", "\033[0m") if sys.stdout.isatty() else ("", "")
    kind = "chat" if chat.chat_format else "text completion (base model: no chat format)"
    print(f"primechat {kind} · {name} · seed {seed} · /help for commands, /quit to leave")
    while True:
        try:
            line = input("\nYou: " if interactive else "").strip()
        except EOFError:
            if interactive:
                print()  # so that the shell's prompt starts on a line of its own after "You: "
            break
        except KeyboardInterrupt:  # as in most REPLs: Ctrl-C drops the line, leaving takes Ctrl-D or /quit
            print("\n(Ctrl-D or /quit to leave)")
            continue
        if not line:
            continue
        if line in ("quit", "exit", "clear"):  # nanochat's chat_cli commands, without the slash
            line = "/" + line
        if line.startswith("/"):
            if not chat.command(line):
                break
            continue
        if not interactive:
            print(f"You: {line}")
        before = len(chat.tokens)
        try:
            stats = chat.reply(line, heading="Assistant: " if chat.chat_format else "")
        except UserError as e:  # the conversation no longer fits: say so and keep it as it was
            print(e)
            continue
        print(dim + stats + reset)
        if before < model.config.sequence_len <= len(chat.tokens):  # said once, as the conversation crosses it
            print(f"(the conversation now fills the {model.config.sequence_len}-token context the model was trained "
                  "on, so replies will degrade: /clear starts a new one)")


if __name__ == "__main__":
    from primechat.cli import run_module
    run_module(add_arguments, main)
