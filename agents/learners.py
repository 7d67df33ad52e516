"""Stable-Baselines3 learners set up for a search of a few hundred episodes (AMC's practice).

He et al. 2018, "AMC: AutoML for Model Compression", §3.4 and its released agent:

- **The episode's reward is credited to every step, gamma = 1.** The only reward comes after the
  last group, so the undiscounted return from every step of an episode is the episode's reward R.
  :class:`EpisodeCreditMixin` holds an episode's transitions until it ends, then stores each with
  reward R and ``done=True``: the critic regresses Q(s_t, a_t) on R directly instead of
  bootstrapping through n noisy steps. The stored actions are the *executed* ones (the projected or,
  on resume, logged ratios mapped back to actions), so the buffer holds what was evaluated.
- **Rewards normalised by a moving baseline.** :class:`NormalisedReplayBuffer` serves rewards as
  ``(R - mean) / std`` over the rewards in the buffer (the baseline moves with the buffer's content,
  and is restored exactly with it on resume).
- **A centred actor** (TD3/DDPG, :class:`CentredActorMixin`): the projection makes the reward blind
  to a common shift of an episode's actions, so the actor's mean is pinned at the zero action.
- **Self-imitation** (Oh et al. 2018, "Self-Imitation Learning", eq. 2-3, for a deterministic actor):
  the actor is also pulled towards the stored actions of episodes that scored better than the critic
  expects of the current policy, ``w * max(R - Q(s, mu(s)), 0) * (mu(s) - a)**2``
  (``agents.self_imitation``). With a few dozen episodes the critic alone moves the actor slowly;
  this term moves it to the best allocations found so far at once, and the exploration noise then
  searches around them (README "Quality").
- **Warm-up near uniform, then decaying exploration.** For the first ``agents.warmup_episodes``
  episodes actions are drawn from N(0, warmup_sigma^2) (the zero action is the uniform candidate);
  after that TD3/DDPG add N(0, sigma_e^2) to the deterministic policy with
  ``sigma_e = noise_sigma * noise_decay ** e`` after ``e`` learning episodes (SAC samples its policy
  and keeps its entropy target small instead). Draws are seeded by (seed, timestep), so a resumed
  learner explores exactly as the original would have.

A round of a search is one episode of every env of the learner's VecEnv (n_envs = candidates per
round): rollouts are ``n_groups`` steps (``train_freq=(n_groups, "step")``), after which SB3 trains
``n_groups * n_envs`` gradient steps (``gradient_steps=-1``).

**Learning during evaluation** (``agents.learn_during_evaluation``, off-policy learners; by default
from 4 candidates evaluated at once, :func:`learns_during_evaluation`): SB3's own
train step after a rollout is switched off (``gradient_steps=0``) and the agent calls
:meth:`EpisodeCreditMixin.train_round` instead right after it has handed round ``r``'s proposals to the
Coordinator, while they are evaluated: the gradient steps on rounds ``0..r-1`` then overlap the
evaluations, and round ``r``'s proposals come from a policy that has not yet learned from round
``r-1`` (one round of lag, as in asynchronous actor-learner setups). The same number of gradient steps
is taken after the same rounds, one round later; after the last round the agent takes the pending
ones, so the final policy has learned from every round. ``agents.steps_before_proposal`` of a round's
steps are taken before the next round's proposals instead (on the critical path, but the proposals
have learned from the newest round), the rest while that round is evaluated.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
from stable_baselines3 import DDPG, PPO, SAC, TD3
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.buffers import ReplayBuffer

from collabprune.config import AgentsConfig

__all__ = [
    "ALGORITHMS",
    "CentredActorMixin",
    "EpisodeCreditMixin",
    "NormalisedReplayBuffer",
    "SearchDDPG",
    "SearchSAC",
    "SearchTD3",
    "algo_kwargs",
    "exploration_sigma",
    "learns_during_evaluation",
]


class NormalisedReplayBuffer(ReplayBuffer):
    """Replay buffer that serves rewards normalised by the buffer's own mean and standard deviation.

    AMC's moving-average baseline: ``(R - mean) / (std + 1e-8)`` over every reward stored so far (an
    episode's n transitions carry the same R, so every episode weighs the same). Identical after a
    save/load of the buffer, so resume is exact.
    """

    def _normalize_reward(self, reward: np.ndarray, env: Any = None) -> np.ndarray:  # type: ignore[override]
        upper = self.buffer_size if self.full else self.pos
        stored = self.rewards[:upper].reshape(-1)
        if stored.size < 2:
            return reward
        return ((reward - stored.mean()) / (stored.std() + 1e-8)).astype(np.float32)


def exploration_sigma(agents: AgentsConfig, episodes_learned: int) -> float:
    """Standard deviation of the exploration noise after ``episodes_learned`` learning episodes."""
    return float(agents.noise_sigma * agents.noise_decay ** max(0, episodes_learned))


class EpisodeCreditMixin:
    """Off-policy learner with AMC's episode credit and seeded, decaying exploration (module docstring).

    The agent sets :attr:`executed_actions` to a callable returning, after an episode ended, the
    executed actions of every env: an array (n_envs, episode_steps). :meth:`configure_search` sets
    it, :attr:`agents_cfg` and :attr:`episode_steps` (SB3's own ``n_steps`` is its n-step returns).
    """

    executed_actions: Callable[[], np.ndarray] | None = None
    agents_cfg: AgentsConfig | None = None
    #: every transition is stored with ``done=True`` (:meth:`_store_transition`)
    terminal_transitions_only: bool = True
    episode_steps: int = 1
    explore_seed: int = 0
    _pending: list[tuple[np.ndarray, np.ndarray, np.ndarray]]

    def _rng(self) -> np.random.Generator:
        return np.random.default_rng([int(self.explore_seed), int(self.num_timesteps)])  # type: ignore[attr-defined]

    def _sample_action(self, learning_starts: int, action_noise: Any = None, n_envs: int = 1):  # type: ignore[no-untyped-def]
        cfg = self.agents_cfg
        assert cfg is not None, "make_learner sets agents_cfg"
        rng = self._rng()
        if self.num_timesteps < learning_starts:  # type: ignore[attr-defined]
            action = np.clip(rng.normal(0.0, cfg.warmup_sigma, (n_envs, 1)), -1.0, 1.0).astype(np.float32)
        else:
            assert self._last_obs is not None  # type: ignore[attr-defined]
            deterministic = not isinstance(self, SAC)
            action, _ = self.predict(self._last_obs, deterministic=deterministic)  # type: ignore[attr-defined]
            if deterministic:
                learned = (self.num_timesteps - learning_starts) // max(1, self.episode_steps * n_envs)  # type: ignore[attr-defined]
                sigma = exploration_sigma(cfg, learned)
                action = np.clip(action + rng.normal(0.0, sigma, action.shape), -1.0, 1.0).astype(np.float32)
        return action, self.policy.scale_action(action)  # type: ignore[attr-defined]

    def _store_transition(self, replay_buffer: ReplayBuffer, buffer_action: np.ndarray, new_obs: Any,  # type: ignore[override]
                          reward: np.ndarray, dones: np.ndarray, infos: list[dict[str, Any]]) -> None:
        if not hasattr(self, "_pending"):
            self._pending = []
        self._pending.append((np.array(self._last_obs, copy=True), np.array(new_obs, copy=True),  # type: ignore[attr-defined]
                              np.array(buffer_action, copy=True)))
        self._last_obs = new_obs
        self._last_original_obs = new_obs
        if not np.all(dones):
            if np.any(dones):
                raise RuntimeError("the envs of one learner must finish their episodes together")
            return
        executed = self.executed_actions() if self.executed_actions is not None else None
        for t, (obs, next_obs, action) in enumerate(self._pending):
            if executed is not None:
                action = self.policy.scale_action(executed[:, t:t + 1].astype(np.float32))  # type: ignore[attr-defined]
            replay_buffer.add(obs, next_obs, action, np.asarray(reward, dtype=np.float32),
                              np.ones_like(dones, dtype=np.float32), [{} for _ in infos])
        self._pending = []

    def round_gradient_steps(self, rounds_stored: int, n_envs: int) -> int:
        """Gradient steps :meth:`train_round` takes once ``rounds_stored`` rounds are in the buffer.

        The schedule of SB3's own loop: none while ``rounds_stored <= agents.warmup_episodes``
        (``num_timesteps <= learning_starts``), then ``agents.gradient_steps``, or one per stored
        transition of a round (``episode_steps * n_envs``) when that is -1.
        """
        cfg = self.agents_cfg
        assert cfg is not None, "make_learner sets agents_cfg"
        if rounds_stored <= cfg.warmup_episodes:
            return 0
        return cfg.gradient_steps if cfg.gradient_steps >= 0 else self.episode_steps * n_envs

    def train_round(self, rounds_stored: int, n_envs: int, part: str = "all") -> int:
        """Train on the buffer as SB3's loop would after ``rounds_stored`` rounds (module docstring).

        :param rounds_stored: rounds whose transitions are in the replay buffer.
        :param n_envs: envs of the learner's VecEnv.
        :param part: ``"before"``: the first ``agents.steps_before_proposal`` of the round's steps (taken
            before the next round's proposals); ``"during"``: the rest (taken while that round is
            evaluated); ``"all"``: every step.
        :returns: gradient steps taken.
        :raises ValueError: ``part`` is none of those.
        """
        steps = self.round_gradient_steps(rounds_stored, n_envs)
        cfg = self.agents_cfg
        assert cfg is not None, "make_learner sets agents_cfg"
        before = min(steps, cfg.steps_before_proposal)
        if part == "before":
            steps = before
        elif part == "during":
            steps -= before
        elif part != "all":
            raise ValueError(f"part={part!r} is not 'before', 'during' or 'all'")
        if steps > 0:
            self.train(gradient_steps=steps, batch_size=self.batch_size)  # type: ignore[attr-defined]
        return steps

    def _excluded_save_params(self) -> list[str]:
        return super()._excluded_save_params() + ["executed_actions", "agents_cfg", "_pending"]  # type: ignore[misc]

    def configure_search(self, agents: AgentsConfig, episode_steps: int, explore_seed: int,
                         executed_actions: Callable[[], np.ndarray]) -> None:
        """Attach what is not saved with the model (called after building or loading it)."""
        self.agents_cfg = agents
        self.episode_steps = episode_steps
        self.explore_seed = explore_seed
        self.executed_actions = executed_actions
        if hasattr(self, "mean_action_penalty"):
            self.mean_action_penalty = agents.mean_action_penalty  # type: ignore[attr-defined]
            self.self_imitation = agents.self_imitation  # type: ignore[attr-defined]


class CentredActorMixin:
    """TD3/DDPG whose actor is kept centred and imitates its best episodes.

    ``actor_loss = -Q(s, mu(s)) + lambda * mean(mu(s))**2 + w * mean(max(R - Q(s, mu(s)), 0) * (mu(s) - a)**2)``
    over a minibatch of stored (s, a, R), R normalised by :class:`NormalisedReplayBuffer`.

    The budget projection removes any common shift of an episode's actions (all groups asking for
    more is projected back to the uniform candidate), so the reward cannot tell the actor where its
    actions' mean should be. Left free, that mean drifts on the critic's extrapolation until tanh
    saturates and every proposal collapses onto the uniform candidate (seen on synthetic rewards).
    The penalty on the batch mean of mu(s) (``agents.mean_action_penalty``) pins the mean at the zero
    action, leaving the relative allocation to the critic. The last term is self-imitation
    (``agents.self_imitation``, module docstring). Otherwise this is SB3's ``TD3.train``, except that
    with :attr:`terminal_transitions_only` (set by :class:`EpisodeCreditMixin`, which stores every
    transition with ``done=True``) the target ``r + (1 - done) * gamma * Q'(s', mu'(s'))`` is computed as
    ``r``: the same numbers without the target networks' passes and Polyak updates (a quarter of a
    gradient step's time).
    """

    mean_action_penalty: float = 0.0
    self_imitation: float = 0.0
    #: every stored transition ends its episode (:class:`EpisodeCreditMixin`): the critic's target is
    #: the reward itself, so the target networks are neither evaluated nor updated
    terminal_transitions_only: bool = False

    def train(self, gradient_steps: int, batch_size: int = 100) -> None:
        import torch as th
        from stable_baselines3.common.utils import polyak_update
        from torch.nn import functional as F

        self.policy.set_training_mode(True)  # type: ignore[attr-defined]
        self._update_learning_rate([self.actor.optimizer, self.critic.optimizer])  # type: ignore[attr-defined]
        bootstrap = not self.terminal_transitions_only
        actor_losses, critic_losses = [], []
        for _ in range(gradient_steps):
            self._n_updates += 1  # type: ignore[attr-defined]
            data = self.replay_buffer.sample(batch_size, env=self._vec_normalize_env)  # type: ignore[attr-defined]
            with th.no_grad():
                # drawn even when unused, so the random stream is the one SB3's TD3.train draws
                noise = data.actions.clone().data.normal_(0, self.target_policy_noise)  # type: ignore[attr-defined]
                if bootstrap:
                    noise = noise.clamp(-self.target_noise_clip, self.target_noise_clip)  # type: ignore[attr-defined]
                    next_actions = (self.actor_target(data.next_observations) + noise).clamp(-1, 1)  # type: ignore[attr-defined]
                    next_q = th.cat(self.critic_target(data.next_observations, next_actions), dim=1)  # type: ignore[attr-defined]
                    next_q, _ = th.min(next_q, dim=1, keepdim=True)
                    target_q = data.rewards + (1 - data.dones) * self.gamma * next_q  # type: ignore[attr-defined]
                elif not bool(data.dones.all()):
                    raise RuntimeError("a non-terminal transition in a buffer of terminal ones")
                else:  # every transition ends its episode: the target is the reward, as (1 - done) = 0 makes it
                    target_q = data.rewards
            current_q = self.critic(data.observations, data.actions)  # type: ignore[attr-defined]
            critic_loss = sum(F.mse_loss(q, target_q) for q in current_q)
            critic_losses.append(float(critic_loss.item()))  # type: ignore[union-attr]
            self.critic.optimizer.zero_grad()  # type: ignore[attr-defined]
            critic_loss.backward()  # type: ignore[union-attr]
            self.critic.optimizer.step()  # type: ignore[attr-defined]
            if self._n_updates % self.policy_delay == 0:  # type: ignore[attr-defined]
                mu = self.actor(data.observations)  # type: ignore[attr-defined]
                q_mu = self.critic.q1_forward(data.observations, mu)  # type: ignore[attr-defined]
                actor_loss = -q_mu.mean() + self.mean_action_penalty * mu.mean() ** 2
                if self.self_imitation > 0:
                    advantage = (data.rewards - q_mu.detach()).clamp(min=0.0)
                    actor_loss = actor_loss + self.self_imitation * (advantage * (mu - data.actions) ** 2).mean()
                actor_losses.append(float(actor_loss.item()))
                self.actor.optimizer.zero_grad()  # type: ignore[attr-defined]
                actor_loss.backward()
                self.actor.optimizer.step()  # type: ignore[attr-defined]
                if bootstrap:
                    polyak_update(self.critic.parameters(), self.critic_target.parameters(), self.tau)  # type: ignore[attr-defined]
                    polyak_update(self.actor.parameters(), self.actor_target.parameters(), self.tau)  # type: ignore[attr-defined]
                    polyak_update(self.critic_batch_norm_stats, self.critic_batch_norm_stats_target, 1.0)  # type: ignore[attr-defined]
                    polyak_update(self.actor_batch_norm_stats, self.actor_batch_norm_stats_target, 1.0)  # type: ignore[attr-defined]
        self.logger.record("train/n_updates", self._n_updates, exclude="tensorboard")  # type: ignore[attr-defined]
        if actor_losses:
            self.logger.record("train/actor_loss", np.mean(actor_losses))  # type: ignore[attr-defined]
        self.logger.record("train/critic_loss", np.mean(critic_losses))  # type: ignore[attr-defined]


class SearchTD3(EpisodeCreditMixin, CentredActorMixin, TD3):
    """TD3 with episode credit, decaying exploration and a centred actor."""


class SearchDDPG(EpisodeCreditMixin, CentredActorMixin, DDPG):
    """DDPG (AMC's learner) with episode credit, decaying exploration and a centred actor."""


class SearchSAC(EpisodeCreditMixin, SAC):
    """SAC with episode credit (its own stochastic policy explores; small entropy target)."""


#: ``agents.algo`` -> SB3 learner class.
ALGORITHMS: dict[str, type[BaseAlgorithm]] = {"td3": SearchTD3, "ddpg": SearchDDPG, "sac": SearchSAC, "ppo": PPO}


#: ``agents.learn_during_evaluation: auto`` learns during evaluation from this many candidates a round
AUTO_DURING_EVALUATION_SLOTS = 4


def learns_during_evaluation(agents: AgentsConfig, at_once: int) -> bool:
    """Whether an off-policy learner takes its gradient steps while the next round is evaluated (module
    docstring), as ``agents.learn_during_evaluation`` resolves for a run that evaluates ``at_once``
    candidates at once (its slots, at most its evaluator pool: ``RunDir.evaluations_at_once``).

    ``true`` / ``false`` as set; ``auto``: from :data:`AUTO_DURING_EVALUATION_SLOTS` at once.
    Sequential learning puts one gradient step per candidate and group between two rounds' evaluations,
    so its share of a round grows with the candidates evaluated at once (a round of 4 candidates on one
    evaluator lasts 4 evaluations, and its share stays that of 1): with the 2 s stand-in evaluation of
    ``benchmarks/search_scale.py`` 2.5% of a round at 1 candidate, 3.6% at 2, 6.1% at 4 and 9.5% at 8,
    against 1.5-3.2% learning during evaluation (README "Scaling the search loop"). The price is one round
    of lag: on ``benchmarks/learning_schedule.py`` (a known best allocation, 12 seeds, 2-8 candidates a
    round, 20-60 rounds) no measurable difference in the best allocation found (paired intervals all
    include 0); on the learning test's config (``tests/test_agents.py``) 0.045 of the uniform
    candidate's distance [0.001, 0.085] at 8 candidates over 20 rounds and 0.055 [0.019, 0.092] at 2
    over 40, none measurable over 30 rounds or more. Small rounds, where the lag costs most and the
    steps least, stay sequential. PPO always learns sequentially.

    :param agents: the agents section of the config.
    :param at_once: candidates the run evaluates at once.
    """
    if agents.algo == "ppo":
        return False
    if agents.learn_during_evaluation == "auto":
        return at_once >= AUTO_DURING_EVALUATION_SLOTS
    return bool(agents.learn_during_evaluation)


def algo_kwargs(agents: AgentsConfig, n_groups: int, n_envs: int, seed: int, at_once: int | None = None) -> dict[str, Any]:
    """SB3 constructor keyword arguments for ``agents.algo`` (``agents.extra`` overrides).

    Off-policy (TD3/DDPG/SAC): gamma 1 (see the module docstring), ``learning_starts =
    warmup_episodes * n_groups * n_envs`` steps, one rollout = one episode per env
    (``train_freq=(n_groups, "step")``), :class:`NormalisedReplayBuffer`, ``gradient_steps`` as
    configured (-1: as many as env steps collected); SAC gets ``target_entropy =
    agents.sac_target_entropy``. PPO: gamma = gae_lambda = 1 (every step's return is the episode's
    reward), a rollout of ``rollout_episodes`` episodes, minibatch the largest divisor of the
    rollout at most ``batch_size``. When the learner learns during evaluation
    (:func:`learns_during_evaluation`) SB3's own train step is off (``gradient_steps=0``): the agent
    calls :meth:`EpisodeCreditMixin.train_round`.

    :param agents: the agents section of the config.
    :param n_groups: steps per episode.
    :param n_envs: envs of the learner's VecEnv (candidates per round).
    :param seed: the learner's seed.
    :param at_once: candidates the run evaluates at once (default ``n_envs``; :func:`learns_during_evaluation`).
    """
    extra = dict(agents.extra)
    common: dict[str, Any] = dict(
        learning_rate=agents.learning_rate,
        gamma=1.0,
        policy_kwargs=dict(net_arch=list(agents.net_arch)),
        seed=seed,
        device="cpu",
        verbose=0,
    )
    if agents.algo == "ppo":
        n_steps = n_groups * max(1, agents.rollout_episodes)
        total = n_steps * n_envs
        batch = max(d for d in range(1, min(total, agents.batch_size) + 1) if total % d == 0)
        common.update(n_steps=n_steps, batch_size=batch, gae_lambda=1.0)
    else:
        common.update(
            buffer_size=agents.buffer_size,
            batch_size=agents.batch_size,
            learning_starts=agents.warmup_episodes * n_groups * n_envs,
            train_freq=(n_groups, "step"),
            # learning during evaluation: the agent calls train_round itself (module docstring)
            gradient_steps=0 if learns_during_evaluation(agents, n_envs if at_once is None else at_once) else agents.gradient_steps,
            replay_buffer_class=NormalisedReplayBuffer,
        )
        if agents.algo == "sac":
            common["target_entropy"] = agents.sac_target_entropy
    common.update(extra)
    return common
