"""Pure scheduling policy: instance load views in, decisions out.

No clock, no I/O, no randomness of its own; imports only the standard library. The
controller and the simulator call this same code (see docs/architecture.md).
"""

from llumctl.policy.decisions import Decision, Dispatch, Migrate, ScaleDown, ScaleUp
from llumctl.policy.freeness import blocks_for_tokens, freeness, infaas_load, virtual_usage
from llumctl.policy.index import DispatchIndex
from llumctl.policy.migration import SELECTORS, select_candidates
from llumctl.policy.params import PolicyParams
from llumctl.policy.registry import POLICY_NAMES, Policy, get_policy
from llumctl.policy.views import (
    ClusterView,
    InstanceLoad,
    NewRequest,
    PendingDispatch,
    Priority,
    RequestLoad,
    without_departed,
)

__all__ = [
    "POLICY_NAMES",
    "SELECTORS",
    "ClusterView",
    "Decision",
    "Dispatch",
    "DispatchIndex",
    "InstanceLoad",
    "Migrate",
    "NewRequest",
    "PendingDispatch",
    "Policy",
    "PolicyParams",
    "Priority",
    "RequestLoad",
    "ScaleDown",
    "ScaleUp",
    "blocks_for_tokens",
    "freeness",
    "get_policy",
    "infaas_load",
    "select_candidates",
    "virtual_usage",
    "without_departed",
]
