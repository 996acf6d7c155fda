"""Scenario, device-profile and link configuration: typed schema, YAML loading, `--set` overrides."""

from testbed.config.loader import (
                                   ClientSpec,
                                   apply_overrides,
                                   available,
                                   dump_scenario,
                                   load_link,
                                   load_profile,
                                   load_scenario,
                                   resolve_fleet,
                                   scenario_to_dict,
)
from testbed.config.schema import (
                                   Availability,
                                   BackboneSpec,
                                   DataSpec,
                                   ExitPolicySpec,
                                   Failure,
                                   FleetEntry,
                                   LinkSpec,
                                   Profile,
                                   Scenario,
                                   StrategySpec,
                                   TrainingSpec,
)

__all__ = ["Availability", "BackboneSpec", "ClientSpec", "DataSpec", "ExitPolicySpec", "Failure",
           "FleetEntry", "LinkSpec", "Profile", "Scenario", "StrategySpec", "TrainingSpec",
           "apply_overrides", "available", "dump_scenario", "load_link", "load_profile",
           "load_scenario", "resolve_fleet", "scenario_to_dict"]
