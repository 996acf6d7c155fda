"""Held-out test splits and client partitions (IID, by speaker, Dirichlet label skew), seeded."""

from collections import defaultdict
from collections.abc import Sequence

import numpy as np

from testbed.data.layouts import Utterance
from testbed.errors import DataError


def split_test_speakers(utterances: Sequence[Utterance], fraction: float,
                        seed: int) -> tuple[list[Utterance], list[Utterance]]:
    """(train, test) with disjoint speakers. When the layout marks test utterances (Speech
    Commands' testing_list.txt) their speakers are held out; otherwise a seeded `fraction` of
    the speakers (at least one, never all) is. Validation utterances join train."""
    speakers = sorted({u.speaker for u in utterances})
    if len(speakers) < 2:
        raise DataError(f"need at least 2 speakers to hold some out, got {len(speakers)}")
    held_out = {u.speaker for u in utterances if u.split == "test"}
    if not held_out or held_out == set(speakers):
        count = min(max(1, round(fraction * len(speakers))), len(speakers) - 1)
        rng = np.random.default_rng(seed)
        held_out = {speakers[i] for i in rng.choice(len(speakers), count, replace=False)}
    train = [u for u in utterances if u.speaker not in held_out]
    test = [u for u in utterances if u.speaker in held_out]
    return train, test


def split_per_speaker(utterances: Sequence[Utterance], fraction: float,
                      seed: int) -> tuple[list[Utterance], list[Utterance]]:
    """(train, test) where test is a seeded `fraction` of each speaker's utterances (at least one
    when the speaker has two or more), so both sides hold the same speakers."""
    rng = np.random.default_rng(seed)
    by_speaker = _group(u.speaker for u in utterances)
    test_rows = set()
    for speaker in sorted(by_speaker):
        rows = by_speaker[speaker]
        if len(rows) >= 2:
            count = min(max(1, round(fraction * len(rows))), len(rows) - 1)
            test_rows.update(rng.choice(rows, count, replace=False).tolist())
    train = [u for row, u in enumerate(utterances) if row not in test_rows]
    test = [u for row, u in enumerate(utterances) if row in test_rows]
    return train, test


def partition_iid(n_items: int, n_clients: int, seed: int) -> list[list[int]]:
    """Shuffle the items and deal them into `n_clients` near-equal shards."""
    _check_clients(n_items, n_clients, "items")
    order = np.random.default_rng(seed).permutation(n_items)
    return [sorted(shard.tolist()) for shard in np.array_split(order, n_clients)]


def partition_by_speaker(speakers: Sequence[str], n_clients: int, seed: int) -> list[list[int]]:
    """Each client gets whole speakers (natural non-IID); speakers are shuffled, then dealt
    largest first to the client holding the fewest items, which balances shard sizes."""
    by_speaker = _group(speakers)
    _check_clients(len(by_speaker), n_clients, "speakers")
    names = sorted(by_speaker)
    shuffled = [names[i] for i in np.random.default_rng(seed).permutation(len(names))]
    shards: list[list[int]] = [[] for _ in range(n_clients)]
    # stable sort keeps the seeded shuffle among speakers of equal size
    for speaker in sorted(shuffled, key=lambda s: -len(by_speaker[s])):
        smallest = min(range(n_clients), key=lambda c: (len(shards[c]), c))
        shards[smallest].extend(by_speaker[speaker])
    return [sorted(shard) for shard in shards]


def partition_dirichlet(labels: Sequence | np.ndarray, n_clients: int, alpha: float,
                        seed: int, max_draws: int = 50) -> list[list[int]]:
    """Label skew (Hsu et al. 2019, arXiv:1909.06335): each class is split over the clients by
    proportions drawn from Dirichlet(alpha); small alpha = few classes per client. Draws are
    repeated until no client is empty, then any empty client takes one item from the largest."""
    labels = np.asarray(labels)
    _check_clients(len(labels), n_clients, "items")
    if alpha <= 0:
        raise DataError(f"dirichlet alpha must be > 0, got {alpha}")
    rng = np.random.default_rng(seed)
    for _ in range(max_draws):
        shards = _dirichlet_draw(labels, n_clients, alpha, rng)
        if min(map(len, shards)) > 0:
            break
    for shard in shards:
        if not shard:
            shard.append(max(shards, key=len).pop())
    return [sorted(shard) for shard in shards]


def _dirichlet_draw(labels: np.ndarray, n_clients: int, alpha: float,
                    rng: np.random.Generator) -> list[list[int]]:
    shards: list[list[int]] = [[] for _ in range(n_clients)]
    for label in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == label))
        shares = rng.dirichlet(np.full(n_clients, alpha))
        cuts = (np.cumsum(shares)[:-1] * len(rows)).astype(int)
        for client, part in enumerate(np.split(rows, cuts)):
            shards[client].extend(part.tolist())
    return shards


def _group(keys) -> dict[str, list[int]]:
    groups: dict[str, list[int]] = defaultdict(list)
    for row, key in enumerate(keys):
        groups[key].append(row)
    return groups


def _check_clients(n_units: int, n_clients: int, unit: str) -> None:
    if n_clients < 1:
        raise DataError(f"need at least 1 client, got {n_clients}")
    if n_units < n_clients:
        raise DataError(f"cannot give {n_clients} clients at least one each: only "
                        f"{n_units} {unit}")
