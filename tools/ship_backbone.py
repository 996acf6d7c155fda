"""Ship the pretrained tiny backbone with the package (testbed/model/shipped/), so that a first run needs no pretraining.

Copies the cache entry that `testbed pretrain` wrote here with the default settings, unchanged, and writes beside
it what it is: the digest of its parameters, the corpus it was pretrained on, its frozen keyword probe per exit
(about a minute), torch's version and the host. Replaces the backbone shipped before. Run it after any change
that changes the default backbone (the corpus, the pretraining settings):

    python -m testbed pretrain && python tools/ship_backbone.py
"""

from __future__ import annotations

import argparse
import os
import platform
from dataclasses import asdict

import torch

from testbed.data.synth import CORPUS_DEFAULTS, FORMAT_VERSION, corpus_cache_path
from testbed.errors import UserError
from testbed.model.architecture import model_class
from testbed.model.pretrain import pretrain_record
from testbed.model.settings import PretrainSettings, backbone_entry
from testbed.model.shipped import installed_from_package, keyword_probe, ship
from testbed.model.state import state_digest


def main() -> None:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()
    settings = PretrainSettings()
    entry = backbone_entry(settings)
    if not entry.exists() or installed_from_package(entry):
        raise SystemExit(f"{entry}: no backbone pretrained here with the default settings; "
                         "run `python -m testbed pretrain` first")
    backbone = model_class(settings.family).from_pretrained(entry)
    probe = keyword_probe(backbone, settings)
    record = {
        "digest": state_digest(backbone.state_dict()),
        "settings": asdict(settings),
        "corpus": {"entry": corpus_cache_path(settings.corpus_seed).name, "format_version": FORMAT_VERSION,
                   "seed": settings.corpus_seed, **{key: list(value) if isinstance(value, tuple) else value
                                                    for key, value in CORPUS_DEFAULTS.items()}},
        "keyword_probe": {str(layer): round(accuracy, 4) for layer, accuracy in probe.items()},
        "pretraining": pretrain_record(entry),
        "torch": torch.__version__,
        "host": f"{os.cpu_count()} cores, {platform.machine()}",
    }
    shipped = ship(entry, record)
    size = sum(file.stat().st_size for file in shipped.iterdir()) / 2**20
    print(f"shipped {shipped} ({size:.1f} MiB): digest {record['digest']}, keyword probe "
          + ", ".join(f"L{layer} {accuracy:.1%}" for layer, accuracy in probe.items()))


if __name__ == "__main__":
    try:
        main()
    except UserError as error:
        raise SystemExit(str(error)) from None
