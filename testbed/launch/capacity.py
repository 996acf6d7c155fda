"""What a run needs of this host, checked before any process starts: its time dilation and its memory.

Both depend on the host, so `testbed validate` cannot judge them; a run that needs more than the
host has would not fail quickly but crawl (a dilation of thousands) or drive the host out of memory.
"""

from __future__ import annotations

from pathlib import Path

from testbed.config.convert import fields_of
from testbed.config.loader import ClientSpec
from testbed.config.schema import EmulationSpec, Scenario
from testbed.emulation.dilation import fleet_dilation
from testbed.errors import UserError

# The automatic factor is held to the bound a scenario may set: a round of deadline D emulated
# seconds takes D x factor wall seconds.
MAX_DILATION: float = fields_of(EmulationSpec)["dilation"][1]["le"]
# MiB a client process holds at the least: 78 measured with 256 clients of which 16 trained per round
# (docs/benchmarks.md, "Scale"); a training client holds 150-220.
CLIENT_MB_AT_LEAST = 78


def check_host(scenario: Scenario, clients: list[ClientSpec]) -> None:
    """A UserError (one line) when this host cannot carry the run's fleet."""
    dilation = fleet_dilation(scenario, clients)
    if dilation.factor > MAX_DILATION:
        raise UserError(
            f"scenario {scenario.name!r}: its fleet needs a time dilation of {dilation.factor:.0f} on "
            f"{dilation.cores} host cores (allowed: at most {MAX_DILATION:g}, as a round of deadline D s takes "
            "D x dilation wall seconds): select fewer clients per round (strategy.clients_per_round), "
            "fewer or slower clients, or run on more cores")
    available = available_mb()
    needed = len(clients) * CLIENT_MB_AT_LEAST
    if available is not None and needed > available:
        raise UserError(
            f"scenario {scenario.name!r}: {len(clients)} client processes need at least {needed} MiB "
            f"({CLIENT_MB_AT_LEAST} MiB each), this host has {available} MiB available "
            "(allowed: a fleet whose processes fit): use fewer clients or a larger host")


def available_mb(meminfo: Path = Path("/proc/meminfo")) -> int | None:
    """MiB of memory the host can still give (MemAvailable); None where the kernel does not say."""
    return meminfo_mb("MemAvailable", meminfo)


def meminfo_mb(field: str, meminfo: Path = Path("/proc/meminfo")) -> int | None:
    """One /proc/meminfo figure (e.g. MemTotal, MemAvailable) in MiB; None where the kernel does not say."""
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) // 1024  # kB
    except (OSError, ValueError, IndexError):
        return None
    return None
