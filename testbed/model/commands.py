"""`testbed pretrain`: build (or show) the cached SSL-pretrained tiny backbone."""

from __future__ import annotations

import argparse

from testbed.data.commands import word_list
from testbed.model.architecture import FAMILIES


def add_pretrain_args(parser: argparse.ArgumentParser) -> None:
    from testbed.model.settings import PretrainSettings

    defaults = PretrainSettings()
    parser.add_argument("--family", choices=FAMILIES, default=defaults.family,
                        help="model class of the tiny backbone (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=defaults.steps, help="optimizer steps (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size, help="clips per step (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="model/mask seed (default: %(default)s)")
    parser.add_argument("--corpus-seed", type=int, default=defaults.corpus_seed,
                        help="which built-in corpus to pretrain on (default: %(default)s)")
    parser.add_argument("--words", type=word_list, default=None,
                        help="the built-in corpus's vocabulary, comma-separated (default: its own)")
    parser.add_argument("--force", action="store_true",
                        help="pretrain again even when pretrained here before (an interrupted pretraining still "
                             "continues); the backbone shipped with testbed is always rebuilt")


def pretrain(args: argparse.Namespace) -> int:
    from testbed.errors import UserError
    from testbed.model.pretrain import pretrain_record, pretrained_tiny
    from testbed.model.settings import PretrainSettings, backbone_entry
    from testbed.model.shipped import installed_from_package
    from testbed.model.state import state_digest

    if args.steps < 1 or args.batch_size < 1:
        raise UserError(f"--steps and --batch-size must be >= 1 (got {args.steps}, {args.batch_size})")
    settings = PretrainSettings(family=args.family, steps=args.steps, batch_size=args.batch_size,
                                seed=args.seed, corpus_seed=args.corpus_seed, words=args.words)
    # the command builds the backbone here: a cache entry copied from the package is replaced, not shown
    rebuild = args.force or installed_from_package(backbone_entry(settings))
    backbone, path = pretrained_tiny(settings, progress=True, force=rebuild, shipped=False)
    record = pretrain_record(path)
    parameters = sum(p.numel() for p in backbone.parameters())
    digest = state_digest(backbone.state_dict())
    print(f"tiny {args.family} backbone: {parameters / 1e6:.1f} M parameters, cached at {path}")
    print(f"pretraining: {record['seconds']} s on {record['clips']} clips, loss (clusters + spectrum) "
          f"{record['first_loss']} -> {record['final_loss']}, accuracy {record['final_masked_accuracy']:.1%}")
    print(f"backbone digest {digest} (SHA-256 of its parameters)")
    _against_shipped(backbone, settings, path.name, digest, record["final_loss"])
    return 0


def _against_shipped(backbone, settings, name: str, digest: str, final_loss: float) -> None:
    """How the backbone pretrained here stands against the one shipped for the same settings and corpus: the same
    parameters bit for bit, or else both final losses and keyword probes per exit (measured here for this one).

    Pretraining is bit for bit reproducible on one host (an interrupted run continues to the same digest), not
    across CPU kinds: their float kernels round differently (docs/benchmarks.md, "Shipped backbone")."""
    from testbed.model.shipped import keyword_probe, shipped_entry, shipped_record

    entry = shipped_entry(name)
    if entry is None:
        print("no backbone ships for these settings and corpus")
        return
    shipped = shipped_record(entry)
    if digest == shipped["digest"]:
        print(f"identical to the backbone shipped with testbed (digest {digest})")
        return
    print(f"differs from the backbone shipped with testbed (digest {shipped['digest']}, made with torch "
          f"{shipped['torch']} on {shipped['host']}): bit for bit agreement needs the same kind of CPU and torch "
          f"build. Final pretraining loss {final_loss} here, {shipped['pretraining']['final_loss']} shipped; "
          "keyword probe per exit, held-out speakers:")
    ours = keyword_probe(backbone, settings)
    for layer, accuracy in ours.items():
        theirs = shipped["keyword_probe"][str(layer)]
        print(f"  L{layer}: {accuracy:.1%} here, {theirs:.1%} shipped ({100 * (accuracy - theirs):+.1f} points)")
