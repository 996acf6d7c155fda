"""`testbed data synth|info`: build the cached built-in corpus or describe a corpus on disk."""

import argparse
import json
import time
from collections import Counter
from pathlib import Path

from testbed.data.layouts import LAYOUTS, SPLITS, detect_layout, load_corpus
from testbed.data.synth import CORPUS_DEFAULTS, builtin_corpus, synthesize_corpus


def add_data_args(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="data_action", metavar="ACTION", required=True)
    synth = actions.add_parser("synth", help="synthesise the built-in eSpeak corpus (cached)",
                               description="synthesise the built-in eSpeak corpus; without "
                               "--out it is cached and its path printed")
    synth.add_argument("--out", type=Path, help="write here instead of the cache (must be empty)")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--speakers", type=int, default=CORPUS_DEFAULTS["n_speakers"])
    synth.add_argument("--takes", type=int, default=CORPUS_DEFAULTS["takes"],
                       help="utterances per speaker and word")
    synth.add_argument("--words", type=word_list, default=CORPUS_DEFAULTS["words"],
                       help="comma-separated, default: %(default)s")
    synth.add_argument("--workers", type=int, default=2, help="mixing/writing processes")
    info = actions.add_parser("info", help="counts per split, word and speaker of a corpus")
    info.add_argument("path", type=Path, help="corpus folder or manifest file")
    info.add_argument("--layout", choices=sorted(LAYOUTS), help="default: detected")


def data(args: argparse.Namespace) -> int:
    return {"synth": _synth, "info": _info}[args.data_action](args)


def word_list(text: str) -> tuple[str, ...]:
    """`--words a,b,c` -> ("a", "b", "c"), blanks dropped."""
    return tuple(word.strip() for word in text.split(",") if word.strip())


def _synth(args: argparse.Namespace) -> int:
    params = {"seed": args.seed, "words": args.words, "n_speakers": args.speakers,
              "takes": args.takes, "workers": args.workers}
    started = time.perf_counter()
    path = synthesize_corpus(args.out, **params) if args.out else builtin_corpus(**params)
    seconds = time.perf_counter() - started  # near zero when the cache already held it
    counts = json.loads((path / "corpus.json").read_text())["counts"]
    speakers = ", ".join(f"{n} {split}" for split, n in counts["speakers"].items())
    print(path)
    print(f"{counts['utterances']} utterances, {counts['words']} words, speakers: {speakers}; "
          f"{seconds:.1f} s")
    return 0


def _info(args: argparse.Namespace) -> int:
    layout = args.layout or detect_layout(args.path)
    utterances = load_corpus(args.path, layout)
    speakers = {u.speaker for u in utterances}
    print(f"{args.path} ({layout}): {len(utterances)} utterances, "
          f"{len({u.word for u in utterances})} labels, {len(speakers)} speakers")
    for split in SPLITS:
        rows = [u for u in utterances if u.split == split]
        print(f"  {split:<10} {len(rows):>7} utterances {len({u.speaker for u in rows}):>5} "
              "speakers")
    print("  per label:   " + _counts(Counter(u.word for u in utterances)))
    per_speaker = Counter(u.speaker for u in utterances)
    print("  per speaker: " + _counts(per_speaker, limit=12) +
          f" (min {min(per_speaker.values())}, max {max(per_speaker.values())})")
    return 0


def _counts(counter: Counter, limit: int | None = None) -> str:
    items = sorted(counter.items())
    shown = ", ".join(f"{key} {count}" for key, count in items[:limit])
    return shown + (f", ... ({len(items) - limit} more)" if limit and len(items) > limit else "")
