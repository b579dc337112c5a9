"""The off-policy recipe (AMAGO-style) as a LightningModule (:class:`MemoAmago`): replay of whole
trials, a multi-discount critic ensemble with PopArt, an actor trained by ``-Q`` plus filtered behaviour
cloning, bilevel epsilon-greedy exploration."""

from lightning_memo.algos.amago.exploration import bilevel_epsilon, epsilon_greedy
from lightning_memo.algos.amago.heads import AmagoHeads, CriticEnsemble, EnsembleLinear, MultiGammaActor
from lightning_memo.algos.amago.losses import actor_loss, amago_loss, critic_loss, min_of_random_pair, td_targets
from lightning_memo.algos.amago.module import AmagoConfig, MemoAmago, amago_policy
from lightning_memo.algos.amago.policy import AmagoPolicy
from lightning_memo.algos.amago.popart import PopArt
from lightning_memo.algos.amago.replay import TrialReplay

__all__ = [
    "AmagoConfig",
    "AmagoPolicy",
    "MemoAmago",
    "AmagoHeads",
    "CriticEnsemble",
    "EnsembleLinear",
    "MultiGammaActor",
    "PopArt",
    "TrialReplay",
    "actor_loss",
    "amago_policy",
    "amago_loss",
    "bilevel_epsilon",
    "critic_loss",
    "epsilon_greedy",
    "min_of_random_pair",
    "td_targets",
]
