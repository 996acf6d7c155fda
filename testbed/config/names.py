"""Allowed names for scenario fields: plain tuples that the schema and later registries share."""

from testbed.client.policies import POLICIES

TASKS = ("keyword", "speaker")  # a client trains exactly one task

STRATEGIES = (
    "fedavg_full",          # Homo-FL: everyone to full depth, the round waits for all
    "fedavg_drop",          # updates after the deadline are discarded
    "fedavg_min_depth",     # everyone trains to the shallowest depth in the fleet
    "fedavg_hetero_naive",  # own depth, untrained layers averaged in as unchanged globals
    "layerwise",            # partial FedAvg over the clients that trained each layer
    "depth_aware",          # the paper: layerwise, weighted by samples x trained depth
    "depthfl",              # unweighted partial mean + self-distillation
)
WEIGHTINGS = ("samples_depth", "samples")  # depth_aware's weight per client: n_k * L_k or n_k

EXIT_POLICIES = tuple(POLICIES)  # the exit policies' registry (testbed/client/policies.py), in its order
PREFERRED_EXIT_AUTO = "auto"  # preferred_exits value: let the policy pick from measurements

BACKENDS = ("user", "kernel", "auto")  # device emulation: auto = kernel where permitted
CLOCKS = ("real", "events")  # how emulated time passes (testbed/emulation/clock.py)
COMPUTE_MODES = ("measured", "modeled")  # what a step costs: its own CPU seconds, or the run's cost table

DATA_SOURCES = ("builtin", "speech_commands", "manifest", "fsdd")
PARTITIONS = ("speaker", "dirichlet", "iid")
FAMILIES = ("wav2vec2", "hubert", "wavlm")
LOSSES = ("all_exits", "deepest", "self_distill")  # sum over exits <= d, deepest head only, DepthFL KD

#: Field name -> allowed names, for code that wants to look a list up by what it constrains.
ALLOWED = {
    "task": TASKS,
    "strategy": STRATEGIES,
    "weighting": WEIGHTINGS,
    "exit_policy": EXIT_POLICIES,
    "backend": BACKENDS,
    "clock": CLOCKS,
    "compute": COMPUTE_MODES,
    "data_source": DATA_SOURCES,
    "partition": PARTITIONS,
    "family": FAMILIES,
    "loss": LOSSES,
}
