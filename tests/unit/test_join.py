"""The label join: the id hash against an independent pure-Python implementation, the hash table
against a dict, the join rule against a sequential reference model, independence from how the two
streams interleave and are batched, the budget, and snapshot/restore."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pytest

from detectors.exceptions import SnapshotError
from detectors.join import HashTable, LabelJoin, id_hashes, id_text, unpack

pytestmark = pytest.mark.unit

M64 = (1 << 64) - 1


def _rotl(x: int, r: int) -> int:
    return ((x << r) | (x >> (64 - r))) & M64


def _fmix(k: int) -> int:
    k ^= k >> 33
    k = (k * 0xFF51AFD7ED558CCD) & M64
    k ^= k >> 33
    k = (k * 0xC4CEB9FE1A85EC53) & M64
    return k ^ (k >> 33)


def slow_hash(text: str) -> int:
    """The documented hash, one id at a time with Python integers (no numpy)."""
    data = text.encode("utf-8").rstrip(b"\0")
    n = len(data)
    h = 0x9E3779B97F4A7C15 ^ ((n * 0x4CF5AD432745937F) & M64)
    for j in range(0, n, 8):
        w = int.from_bytes(data[j : j + 8].ljust(8, b"\0"), "little")
        k = (_rotl((w * 0x87C37B91114253D5) & M64, 31) * 0x4CF5AD432745937F) & M64
        h = (_rotl(h ^ k, 27) * 5 + 0x52DCE729) & M64
    h = _fmix(h ^ n)
    return h + 2 if h < 2 else h


def test_id_hash_matches_an_independent_implementation() -> None:
    ids = ["", "a", "tx-1", "12345678", "123456789", "ünïcødé-id", "x" * 100, "pred-000000000042", "日本"]
    got = id_hashes(ids)
    assert got.tolist() == [slow_hash(s) for s in ids]
    # one id's hash does not depend on the others of its batch
    assert [int(id_hashes([s])[0]) for s in ids] == got.tolist()


def test_id_hash_has_no_collisions_on_a_million_sequential_ids() -> None:
    h = id_hashes([f"order-{i}" for i in range(1_000_000)])
    assert len(np.unique(h)) == 1_000_000
    assert int(h.min()) >= 2


def test_id_text() -> None:
    assert [id_text(v) for v in ("a", 7, np.int64(-3), True, None, 2.0, "", [1])] == ["a", "7", "-3"] + [None] * 5


def test_hash_table_behaves_like_a_dict() -> None:
    rng = np.random.default_rng(3)
    table = HashTable()
    model: dict[int, int] = {}
    for _ in range(60):
        keys = np.unique(rng.integers(2, 5_000, rng.integers(1, 400)).astype(np.uint64))
        new = keys[table.lookup(keys) < 0]
        table.reserve(len(new))
        t = rng.integers(0, 10**9, len(new))
        table.insert(new, t, np.zeros(len(new)), np.zeros(len(new), np.int32))
        model.update(zip(new.tolist(), t.tolist(), strict=True))
        gone = np.unique(rng.choice(np.fromiter(model, np.uint64), size=min(len(model), 150)))
        table.delete(table.lookup(gone))
        for k in gone.tolist():
            model.pop(k)
        probe = np.arange(2, 5_000, dtype=np.uint64)
        slots = table.lookup(probe)
        assert [int(k) for k in probe[slots >= 0]] == sorted(model)
        assert [int(v) for v in table.t[slots[slots >= 0]]] == [model[k] for k in sorted(model)]
        assert table.live == len(model) and table.live + table.tombs <= 0.7 * table.capacity


# -- the join rule ------------------------------------------------------------------------------------
MAX_DELAY, SKEW, TICK = 1_000, 50, 250


@dataclass
class Model:
    """The join rule of detectors/join.py, one event at a time, with Python containers."""

    pending: dict[str, tuple[int, float, int]] = field(default_factory=dict)
    queue: list[tuple[str, int, float]] = field(default_factory=list)
    wl: float = -math.inf
    out: list[tuple] = field(default_factory=list)  # ("pair", id fields...) and ("tick", T)
    joined: int = 0
    orphans: int = 0

    def predictions(self, rows: list[tuple[str, int, float, int]]) -> None:
        for ident, t, s, seg in rows:
            self.pending.setdefault(ident, (t, s, seg))

    def labels(self, rows: list[tuple[str, int, float]]) -> None:
        self.queue.extend(rows)

    def process(self, wp: int) -> None:
        while self.queue and self.queue[0][1] + SKEW < wp:
            ident, t, y = self.queue.pop(0)
            before = self.wl
            self.wl = max(self.wl, t)
            p = self.pending.get(ident)
            if p is not None and p[0] - SKEW <= t and self.wl < p[0] + MAX_DELAY:
                del self.pending[ident]
                self.out.append(("pair", p[0], p[2], p[1], y, t))
                self.joined += 1
            else:
                self.orphans += 1
            if before == -math.inf or self.wl // TICK > before // TICK:
                self.out.append(("tick", int(self.wl // TICK) * TICK))


def flatten(chunks: list) -> list[tuple]:
    out: list[tuple] = []
    for c in chunks:
        for i in range(len(c.t_pred)):
            out.append(
                ("pair", int(c.t_pred[i]), int(c.seg[i]), float(c.score[i]), float(c.label[i]), int(c.t_label[i]))
            )
        if c.tick is not None:
            out.append(("tick", c.tick))
    return out


def streams(seed: int, n: int = 3_000) -> tuple[list, list]:
    """Predictions in time order; labels for most of them (some late, some early, some never, some for
    unknown ids), in an arrival order with some disorder."""
    rng = np.random.default_rng(seed)
    t = np.cumsum(rng.integers(0, 7, n)) + 10_000
    preds = [(f"p{i}", int(t[i]), float(rng.random()), int(rng.integers(0, 3))) for i in range(n)]
    labels = []
    for i in range(n):
        r = rng.random()
        if r < 0.1:
            continue  # never labelled
        delay = int(rng.integers(-2 * SKEW, 2 * MAX_DELAY)) if r < 0.3 else int(rng.integers(0, MAX_DELAY))
        labels.append((f"p{i}", int(t[i]) + delay, float(rng.integers(0, 2))))
        if rng.random() < 0.02:
            labels.append((f"p{i}", int(t[i]) + delay + 5, 1.0))  # a repeated label
    labels += [(f"ghost{i}", int(rng.integers(10_000, int(t[-1]))), 0.0) for i in range(100)]
    arrival = np.argsort([lt + rng.integers(0, 300) for _id, lt, _y in labels], kind="stable")
    return preds, [labels[i] for i in arrival]


def run_join(preds: list, labels: list, seed: int, join: LabelJoin | None = None, stop_after: int | None = None):
    """Feed the two streams in random batches with a random interleaving; the flattened output."""
    rng = np.random.default_rng(seed)
    join = join or LabelJoin(max_delay_ms=MAX_DELAY, clock_skew_ms=SKEW, budget=10**6, tick_ms=TICK)
    out: list = []
    i = j = 0
    steps = 0
    while i < len(preds) or j < len(labels):
        if stop_after is not None and steps == stop_after:
            return out, join, (i, j)
        steps += 1
        if j >= len(labels) or (i < len(preds) and rng.random() < 0.5):
            k = min(len(preds), i + int(rng.integers(1, 400)))
            while k < len(preds) and preds[k][1] == preds[k - 1][1]:
                k += 1  # a batch ends at a time boundary, so the watermark below is exact
            rows = preds[i:k]
            join.add_predictions(
                id_hashes([r[0] for r in rows]),
                np.array([r[1] for r in rows], np.int64),
                np.array([r[2] for r in rows]),
                np.array([r[3] for r in rows], np.int32),
            )
            i = k
        else:
            k = min(len(labels), j + int(rng.integers(1, 400)))
            rows = labels[j:k]
            join.add_labels(
                id_hashes([r[0] for r in rows]),
                np.array([r[1] for r in rows], np.int64),
                np.array([r[2] for r in rows]),
            )
            j = k
        wp = preds[i - 1][1] + 1 if i < len(preds) and i > 0 else (2**62 if i >= len(preds) else -(2**62))
        if rng.random() < 0.7:
            out += flatten(join.process(wp))
    out += flatten(join.process(2**62))
    return out, join, (i, j)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_join_follows_the_rule_whatever_the_interleaving(seed: int) -> None:
    preds, labels = streams(seed)
    model = Model()
    model.predictions(preds)  # all predictions first: the rule says it must not matter
    model.labels(labels)
    model.process(2**62)
    assert 0.5 * len(preds) < model.joined < len(preds) and model.orphans > 100  # the data exercises both
    for feed in range(4):
        got, join, _ = run_join(preds, labels, seed=100 * seed + feed)
        assert got == model.out
        assert join.counts["joined"] == model.joined and join.counts["label_orphan"] == model.orphans
        assert join.pending + join.counts["label_timeout"] == len(preds) - model.joined
        assert join.held == 0


def test_the_boundaries_of_the_rule() -> None:
    j = LabelJoin(max_delay_ms=100, clock_skew_ms=10, budget=100, tick_ms=1_000)
    ids = ["a", "b", "c", "d", "e"]
    j.add_predictions(id_hashes(ids), np.array([1_000] * 5), np.array([0.1, 0.2, 0.3, 0.4, 0.5]), np.zeros(5, np.int32))
    # a: 99 ms later (in time); b: 100 ms later (too late); c: 10 ms early (skew); d: 11 ms early; e: never
    j.add_labels(id_hashes(["a", "c", "d", "b"]), np.array([1_099, 990, 989, 1_100]), np.ones(4))
    got = flatten(j.process(2_000))
    assert [p[3] for p in got if p[0] == "pair"] == [0.1, 0.3]
    assert j.counts["joined"] == 2 and j.counts["label_orphan"] == 2
    # b's label came at W_L = 1100 = its deadline: b can never pair now, and is swept as a timeout
    j.add_labels(id_hashes(["x"]), np.array([1_400]), np.zeros(1))
    j.process(3_000)
    assert j.counts["label_timeout"] == 3 and j.pending == 0  # b, d, e


def test_a_label_waits_for_the_predictions_to_pass_its_time() -> None:
    j = LabelJoin(max_delay_ms=1_000, clock_skew_ms=0, budget=100, tick_ms=1_000)
    j.add_labels(id_hashes(["a"]), np.array([5_000]), np.ones(1))
    assert flatten(j.process(5_000)) == [] and j.held == 1  # predictions up to 4999 only
    j.add_predictions(id_hashes(["a"]), np.array([4_500]), np.array([0.7]), np.zeros(1, np.int32))
    assert flatten(j.process(5_001)) == [("pair", 4_500, 0, 0.7, 1.0, 5_000), ("tick", 5_000)]


def test_an_out_of_order_label_past_its_deadline_does_not_pair() -> None:
    j = LabelJoin(max_delay_ms=100, clock_skew_ms=0, budget=100, tick_ms=1_000)
    j.add_predictions(id_hashes(["a"]), np.array([1_000]), np.array([0.5]), np.zeros(1, np.int32))
    # the label stream has reached 1200 before a's label (stamped 1050) arrives: a has timed out
    j.add_labels(id_hashes(["z", "a"]), np.array([1_200, 1_050]), np.zeros(2))
    assert [e for e in flatten(j.process(5_000)) if e[0] == "pair"] == []
    assert j.counts["label_orphan"] == 2


def test_duplicates_and_the_budget_are_counted() -> None:
    j = LabelJoin(max_delay_ms=1_000, clock_skew_ms=0, budget=5, tick_ms=1_000)
    h = id_hashes(["a", "a", "b", "c"])
    j.add_predictions(h, np.array([1, 2, 3, 4]), np.zeros(4), np.zeros(4, np.int32))
    assert j.counts["duplicate_prediction"] == 1 and j.pending == 3
    j.add_predictions(id_hashes(["d", "e", "f"]), np.array([5, 6, 7]), np.zeros(3), np.zeros(3, np.int32))
    assert j.pending == 5 and j.counts["label_timeout"] == 1 and j.counts["overflow"] == 1
    j.add_labels(id_hashes(["a", "b", "c", "d", "e", "f", "g"]), np.arange(10, 17), np.zeros(7))
    assert j.held == 5 and j.counts["label_orphan"] == 2 and j.counts["overflow"] == 3  # held labels: a budget too
    assert sum(j.counts[k] for k in ("label_timeout", "label_orphan")) == j.counts["overflow"]


def test_expired_predictions_make_room_before_anything_overflows() -> None:
    j = LabelJoin(max_delay_ms=100, clock_skew_ms=0, budget=3, tick_ms=1_000)
    j.add_predictions(id_hashes(["a", "b", "c"]), np.array([1, 2, 3]), np.zeros(3), np.zeros(3, np.int32))
    j.add_labels(id_hashes(["zz"]), np.array([50]), np.zeros(1))  # a full table does not keep labels out
    j.process(100)
    j.add_labels(id_hashes(["z"]), np.array([500]), np.zeros(1))  # the label stream moves past a, b, c's deadlines
    j.process(1_000)
    j.add_predictions(id_hashes(["d", "e", "f"]), np.array([600, 601, 602]), np.zeros(3), np.zeros(3, np.int32))
    assert j.counts["overflow"] == 0 and j.counts["label_timeout"] == 3 and j.pending == 3


@pytest.mark.parametrize("stop", [3, 10, 25])
def test_snapshot_restore_anywhere_gives_the_same_output(stop: int) -> None:
    preds, labels = streams(7, 2_000)
    clean, _, _ = run_join(preds, labels, seed=5)
    first, join, (i, j) = run_join(preds, labels, seed=5, stop_after=stop)
    blob = join.snapshot()
    restored = LabelJoin.restore(blob)
    assert restored.counts == join.counts and restored.pending == join.pending and restored.held == join.held
    # continue both the restored and the original join with the same (fresh) batching of what is left
    rest_p, rest_l = preds[i:], labels[j:]
    wp = preds[i - 1][1] + 1 if i else -(2**62)
    rest = flatten(restored.process(wp))
    more, _, _ = run_join(rest_p, rest_l, seed=9, join=restored)
    first_orig, _, _ = run_join(rest_p, rest_l, seed=9, join=join)
    assert first + rest + more == clean
    assert first + first_orig == clean


def test_snapshot_is_binary_without_pickle_and_checks_its_version() -> None:
    j = LabelJoin(max_delay_ms=10, clock_skew_ms=0, budget=10, tick_ms=10)
    header, arrays = unpack(j.snapshot())
    assert header["version"] == 1 and set(arrays) >= {"keys", "t", "score", "seg", "queue_h"}
    with pytest.raises(SnapshotError):
        LabelJoin.restore(b"not a snapshot")
