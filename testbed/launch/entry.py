"""Process entry points (module preloaded by the fork server, so children start in milliseconds)."""

from __future__ import annotations

import gc
import os
import sys
from pathlib import Path

import torch
import transformers.models.hubert.modeling_hubert
import transformers.models.wav2vec2.modeling_wav2vec2
import transformers.models.wavlm.modeling_wavlm  # noqa: F401

import testbed.aggregator.server
import testbed.client.local  # noqa: F401
from testbed.emulation.dilation import Dilation
from testbed.launch.processes import die_with_parent, keep_freed_blocks, log_to


def aggregator_main(run_dir: str, bind: str, publish: str | None, resume: bool, fixed_dilation: bool = False,
                    tokens: dict[str, str] | None = None, curve_dir: str | None = None,
                    dilation: Dilation | None = None) -> None:
    """`tokens`: each client's secret (see aggregator/credentials.py), handed over by the fork server, never
    on a command line, in the environment or in a file. `curve_dir`: the run's CURVE keys instead (clients on
    other hosts: `testbed run --cluster`), and `dilation` the initial factor their nodes need."""
    from testbed.aggregator.checkpoint import CheckpointRefused
    from testbed.aggregator.plan import make_plan
    from testbed.aggregator.server import Aggregator
    from testbed.config.loader import load_scenario

    die_with_parent()
    log_to(Path(run_dir) / "logs" / "aggregator.log")
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    keep_freed_blocks()  # the aggregator evaluates: see there
    scenario = load_scenario(Path(run_dir) / "scenario.yaml")
    try:
        aggregator = Aggregator(make_plan(scenario), Path(run_dir), bind=bind, publish=publish, resume=resume,
                                fixed_dilation=fixed_dilation, tokens=tokens,
                                curve_dir=Path(curve_dir) if curve_dir else None, dilation=dilation)
    except CheckpointRefused:
        sys.exit(1)  # logged, and recorded as the run's run_failed event: the launcher shows that line
    sys.exit(aggregator.run())


def client_main(connect: str, client_id: str, run_dir: str, kernel_cpu: bool = False, token: str | None = None,
                curve_dir: str | None = None, join_timeout_s: float | None = None) -> None:
    """`token`: this client's secret alone, its proof of identity in its JOIN (handed over as `tokens` above).
    `curve_dir`: its CURVE keys instead, on a Ray node (cluster_host.py), where `run_dir` is the run's folder on
    the node and `join_timeout_s` how long it waits for the aggregator's WELCOME (None: the worker's default)."""
    import logging

    from testbed.client.worker import run_client
    from testbed.errors import UserError

    die_with_parent()
    log_to(Path(run_dir) / "logs" / f"{client_id}.log")
    torch.set_num_threads(1)  # while joining; the profile sets its own thread count once WELCOME names it
    try:
        code = run_client(connect, client_id, kernel_cpu=kernel_cpu, run_dir=Path(run_dir), token=token,
                          curve_dir=Path(curve_dir) if curve_dir else None,
                          **({"join_timeout_s": join_timeout_s} if join_timeout_s is not None else {}))
    except UserError as error:  # could not join: one line in its log, no traceback
        logging.getLogger("testbed.client").error("%s: %s", client_id, error)
        code = 2
    sys.exit(code)


# Everything imported so far is shared with every forked child. Python's garbage collector would
# touch each of these objects in every child and so copy their memory pages; frozen, they stay shared.
gc.freeze()
