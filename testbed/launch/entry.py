"""Process entry points (module preloaded by the fork server, so children start in milliseconds)."""

from __future__ import annotations

import gc
import os
import sys
from pathlib import Path

import torch  # noqa: F401  (preloaded: the expensive import happens once, in the fork server)
import transformers.models.hubert.modeling_hubert  # noqa: F401
import transformers.models.wav2vec2.modeling_wav2vec2  # noqa: F401
import transformers.models.wavlm.modeling_wavlm  # noqa: F401

import testbed.aggregator.server  # noqa: F401
import testbed.client.local  # noqa: F401
from testbed.launch.processes import die_with_parent, log_to


def aggregator_main(run_dir: str, bind: str, publish: str | None, resume: bool, fixed_dilation: bool = False) -> None:
    from testbed.aggregator.plan import make_plan
    from testbed.aggregator.server import Aggregator
    from testbed.config.loader import load_scenario

    die_with_parent()
    log_to(Path(run_dir) / "logs" / "aggregator.log")
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    scenario = load_scenario(Path(run_dir) / "scenario.yaml")
    aggregator = Aggregator(make_plan(scenario), Path(run_dir), bind=bind, publish=publish, resume=resume,
                            fixed_dilation=fixed_dilation)
    sys.exit(aggregator.run())


def client_main(connect: str, client_id: str, run_dir: str, kernel_cpu: bool = False) -> None:
    from testbed.client.worker import run_client

    die_with_parent()
    log_to(Path(run_dir) / "logs" / f"{client_id}.log")
    torch.set_num_threads(1)  # while joining; the profile sets its own thread count once WELCOME names it
    sys.exit(run_client(connect, client_id, kernel_cpu=kernel_cpu, run_dir=Path(run_dir)))


# Everything imported so far is shared with every forked child. Python's garbage collector would
# touch each of these objects in every child and so copy their memory pages; frozen, they stay shared.
gc.freeze()
