"""`primechat tokenizer eval`: how well our tokenizer compresses text, next to GPT-2's and GPT-4's.

Compression is bytes per token: the more bytes a token stands for, the more text fits in a context window and the
less compute a given amount of text costs. Measured on short samples of news, Korean, code, LaTeX and science (our
own texts, below) and on the dataset's own text: the first row group of the first training shard ("train") and of
the validation shard ("val"). GPT-2's and GPT-4's vocabularies come through tiktoken, which downloads them on first
use; where it cannot, their columns are left out and the table says why.
"""

import tiktoken

from primechat import report
from primechat.data import shards
from primechat.tokenizer import load_tokenizer, trained_on

BASELINES = [("GPT-2", "gpt2"), ("GPT-4", "cl100k_base")]  # (label, tiktoken encoding name)

NEWS = """\
HARBOR CITY, Nov. 3 — The city council voted 7 to 2 on Tuesday night to fund a $48 million sea wall along the
eastern waterfront, ending a debate that has split neighborhoods since the floods of 2023 left parts of the Old
Market district under three feet of water.

Construction is expected to begin in the spring and take about four years. The wall, a mix of concrete barriers and
planted earth berms, will run 2.6 miles from the ferry terminal to the mouth of the Pell River. Engineers told the
council that it is designed to hold back a storm surge roughly 40 percent higher than the worst on record.

"We can keep arguing about the perfect plan, or we can protect people before the next storm," said council member
Rosa Delgado, who represents the district. Two members voted against the measure, citing the cost and warning that
the berms would cut residents off from a popular stretch of beach.

The money will come from a state resilience grant and a bond issue that voters approved last year. Business owners in
the Old Market welcomed the decision; several said insurance premiums had tripled since the floods. The mayor's office
said public meetings on the final design will be held in January, and that the beach path will stay open during most
of the work.
"""

KOREAN = """\
서울시는 올해 가을부터 한강 공원 일대에 공공 도서관 세 곳을 새로 열기로 했다고 밝혔다. 새 도서관은 주말에도 밤 열 시까지
문을 열며, 어린이를 위한 그림책 코너와 어르신을 위한 큰 글씨 책 서가를 따로 마련한다. 시 관계자는 "시민들이 산책을 하다가
잠시 들러 책을 읽을 수 있는 쉼터를 만들고 싶었다"고 설명했다. 도서관 건물은 재활용 목재로 지어졌으며, 지붕에는 태양광
패널을 설치해 필요한 전기의 절반가량을 스스로 만든다. 한편 일부 주민들은 주차 공간이 부족하다며 우려를 나타냈고, 시는
자전거 보관대를 늘리고 버스 노선을 조정하겠다고 답했다. 개관 첫 달에는 작가와의 만남, 독서 토론회, 그리고 외국인 주민을
위한 한국어 읽기 모임이 열릴 예정이다.
"""

CODE = '''\
import heapq
from collections import defaultdict


def shortest_paths(graph: dict[str, list[tuple[str, float]]], source: str) -> dict[str, float]:
    """Dijkstra: the length of the shortest path from source to every node it can reach."""
    dist = defaultdict(lambda: float("inf"))
    dist[source] = 0.0
    queue = [(0.0, source)]
    while queue:
        d, node = heapq.heappop(queue)
        if d > dist[node]:
            continue  # a stale entry: this node was already reached by a shorter path
        for neighbor, weight in graph.get(node, []):
            if weight < 0:
                raise ValueError(f"negative edge {node}->{neighbor} ({weight})")
            new = d + weight
            if new < dist[neighbor]:
                dist[neighbor] = new
                heapq.heappush(queue, (new, neighbor))
    return dict(dist)


if __name__ == "__main__":
    roads = {"a": [("b", 7), ("c", 9), ("f", 14)], "b": [("c", 10), ("d", 15)], "c": [("d", 11), ("f", 2)],
             "d": [("e", 6)], "f": [("e", 9)]}
    for node, d in sorted(shortest_paths(roads, "a").items()):
        print(f"{node}: {d:6.1f}")
'''

MATH = r"""\begin{theorem}
For every integer $n \ge 1$, the sum of the first $n$ odd numbers is a perfect square:
\[ \sum_{k=1}^{n} (2k - 1) = n^2. \]
\end{theorem}

\begin{proof}
By induction on $n$. For $n = 1$ both sides equal $1$. Suppose the identity holds for some $n \ge 1$. Then
\begin{align*}
  \sum_{k=1}^{n+1} (2k - 1) &= \sum_{k=1}^{n} (2k - 1) + \bigl(2(n+1) - 1\bigr) \\
                            &= n^2 + 2n + 1 = (n + 1)^2,
\end{align*}
which is the claim for $n + 1$.
\end{proof}

\begin{remark}
The same idea gives $\int_0^1 x^n \, dx = \frac{1}{n+1}$ and, with $\alpha > 0$,
$\int_{-\infty}^{\infty} e^{-\alpha x^2} \, dx = \sqrt{\pi / \alpha}$; the variance of $\mathcal{N}(\mu, \sigma^2)$ is
$\mathbb{E}\left[(X - \mu)^2\right] = \sigma^2$.
\end{remark}
"""

SCIENCE = """\
Plants, algae and cyanobacteria turn light into chemical energy through photosynthesis. In the thylakoid membranes
of the chloroplast, chlorophyll absorbs mostly red and blue light; the energy drives electrons from water through a
chain of proteins, splitting the water into oxygen, protons and electrons. The oxygen is released as a by-product,
while the flow of electrons pumps protons across the membrane, and the resulting gradient powers ATP synthase.
Together with the reduced carrier NADPH, this ATP fuels the Calvin cycle in the stroma, where the enzyme RuBisCO fixes
carbon dioxide onto a five-carbon sugar. Six turns of the cycle yield the equivalent of one glucose molecule:
6 CO2 + 6 H2O + light -> C6H12O6 + 6 O2. RuBisCO is slow, handling only a few molecules per second, and it sometimes
grabs oxygen instead of carbon dioxide, a wasteful process called photorespiration. C4 plants such as maize and
sugarcane avoid much of this loss by first capturing carbon in mesophyll cells and concentrating it around RuBisCO in
bundle-sheath cells, which is why they thrive in hot, bright climates.
"""


def unwrap(prose: str) -> str:
    """Join the lines of each paragraph: the prose samples are wrapped above only to keep this file readable."""
    return "\n\n".join(paragraph.replace("\n", " ") for paragraph in prose.strip().split("\n\n")) + "\n"


def first_row_group(path) -> str:
    return "\n".join(shards.read_row_group(shards.open_shard(path), path, 0))  # damaged: one line naming it


def eval_texts(dataset: str) -> dict[str, str]:
    train, val = shards.list_shards(dataset)
    return {"news": unwrap(NEWS), "korean": unwrap(KOREAN), "code": CODE, "math": MATH, "science": unwrap(SCIENCE),
            "train": first_row_group(train[0]), "val": first_row_group(val)}


def load_baseline(name: str):
    """(tiktoken Encoding, None), or (None, why not) when tiktoken cannot get the vocabulary (offline, no cache)."""
    try:
        return tiktoken.get_encoding(name), None
    except Exception as e:  # network errors, a blocked download, a corrupt cache: all mean "no column"
        return None, type(e).__name__


def compression_table(texts: dict[str, str], ours, baselines: list[tuple[str, object]]) -> str:
    """Markdown table: per text, bytes, then tokens and bytes/token for ours and each baseline, with the relative
    difference (baseline - ours) / baseline in tokens: positive means ours needs fewer tokens."""
    header = ["Text", "Bytes", "Ours tokens", "Ours bytes/token"]
    for label, _ in baselines:
        header += [f"{label} tokens", f"{label} bytes/token", f"vs {label}"]
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    for name, text in texts.items():
        n_bytes = len(text.encode("utf-8"))
        n_ours = len(ours.encode(text))
        row = [name, f"{n_bytes:,}", f"{n_ours:,}", f"{n_bytes / n_ours:.2f}"]
        for _, enc in baselines:
            n_base = len(enc.encode_ordinary(text))
            row += [f"{n_base:,}", f"{n_bytes / n_base:.2f}", f"{100 * (n_base - n_ours) / n_base:+.1f}%"]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def add_arguments(parser) -> None:
    shards.add_dataset_argument(parser, "dataset whose first training and validation row groups give the train and "
                                        "val rows", default="the one the tokenizer was trained on, else ")


def main(args) -> None:
    tokenizer = load_tokenizer()
    if not args.dataset and trained_on():
        args.dataset = trained_on()
        print(f"dataset: {args.dataset} (the tokenizer was trained on it; choose another with --dataset)")
    args.dataset = shards.pick_dataset(args.dataset)
    texts = eval_texts(args.dataset)
    available, notes = [], []
    for label, name in BASELINES:
        enc, why_not = load_baseline(name)
        if enc is None:
            notes.append(f"{label} (tiktoken `{name}`): unavailable offline, tiktoken could not download its "
                         f"vocabulary ({why_not})")
        else:
            available.append((label, enc))
    table = compression_table(texts, tokenizer, available)
    explained = " vs X = (X tokens - ours) / X tokens: positive means ours needs fewer tokens." if available else ""
    notes.append(f"Ours: vocabulary {tokenizer.vocab_size:,}; train/val rows from dataset {args.dataset}.{explained}")
    text = table + "\n\n" + "\n".join(f"- {note}" for note in notes)
    report.log_section("Tokenizer evaluation", text)
    print(text)


if __name__ == "__main__":
    from primechat.cli import run_module
    run_module(add_arguments, main)
