"""Ray actors of the collaborative search: PruningAgent (SB3 policy + env), Coordinator, Evaluator pool.

``agents.driver.run_search`` wires them together. Importing this package imports Ray and
Stable-Baselines3 (the driver module is imported lazily by the CLI).
"""

from agents.coordinator import Coordinator, CoordinatorCore, normalised_terms, peer_info_from_record
from agents.evaluator import EVALUATOR_NUM_CPUS, Evaluator, EvaluatorCore, make_evaluators
from agents.pruning_agent import (
    AGENT_NUM_CPUS,
    ALGORITHMS,
    AgentCore,
    CoordinatorLink,
    PruningAgent,
    RayCoordinatorLink,
    algo_kwargs,
)

__all__ = [
    "AGENT_NUM_CPUS",
    "ALGORITHMS",
    "EVALUATOR_NUM_CPUS",
    "AgentCore",
    "Coordinator",
    "CoordinatorCore",
    "CoordinatorLink",
    "Evaluator",
    "EvaluatorCore",
    "PruningAgent",
    "RayCoordinatorLink",
    "algo_kwargs",
    "make_evaluators",
    "normalised_terms",
    "peer_info_from_record",
]
