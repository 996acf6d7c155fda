"""Device emulation: a client process made to behave like the device its profile describes.

User backend (default, no privileges): CPU affinity and intra-op thread caps, compute slowdown by
duty cycling (`throttle`), link shaping inside the transport (`link`), availability and injected
faults (`availability`), a memory budget (`memory`). Kernel backend (opt-in): cgroup CPU quota and
memory limit, tc netem on a veth pair per client (`kernel_cgroup`, `kernel_net`). `dilation`
stretches every emulated duration by one factor when the fleet asks for more CPU than the host has.
"""
