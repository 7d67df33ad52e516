"""Ray actors of the collaborative search: PruningAgent (SB3 policy + envs), Coordinator, Evaluator pool.

``agents.driver.run_search`` wires them together. Importing this package imports Ray and
Stable-Baselines3 (the driver module is imported lazily by the CLI).
"""

from agents.coordinator import Coordinator, CoordinatorCore, Deadlines, reward_terms
from agents.evaluator import EVALUATOR_NUM_CPUS, Evaluator, EvaluatorCore, make_evaluators
from agents.learners import ALGORITHMS, algo_kwargs
from agents.pruning_agent import AGENT_NUM_CPUS, AgentCore, CoordinatorLink, PruningAgent, RayCoordinatorLink
from agents.vec_env import RoundVecEnv

__all__ = [
    "AGENT_NUM_CPUS",
    "ALGORITHMS",
    "EVALUATOR_NUM_CPUS",
    "AgentCore",
    "Coordinator",
    "CoordinatorCore",
    "CoordinatorLink",
    "Deadlines",
    "Evaluator",
    "EvaluatorCore",
    "PruningAgent",
    "RayCoordinatorLink",
    "RoundVecEnv",
    "algo_kwargs",
    "make_evaluators",
    "reward_terms",
]
