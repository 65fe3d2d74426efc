"""Elastic Weight Consolidation (Kirkpatrick et al. 2017, Eq. 3), for the DV2 Finetune + EWC
baseline: finetuning is penalised for moving the weights the source task relied on."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Mapping

import torch
from tensordict import TensorDict, TensorDictBase
from torch import nn
from torchrl.objectives import LossModule

# The CoWorld paper gives no EWC weight. 1e4 is the EWC coefficient of Continual World's
# example command (Wolczyk et al. 2021, README: ``--cl_method ewc --cl_reg_coef 1e4``), a
# tuned value for deep RL; our Fisher is the batch-level empirical one (see
# ``diagonal_fisher``), so treat it as an order of magnitude to tune from, not a match.
DEFAULT_EWC_LMBDA = 1e4


def total_loss(out) -> torch.Tensor:
    """A scalar loss, or the sum of the ``loss_*`` entries of a TensorDict/dict of losses."""
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (TensorDictBase, Mapping)):
        terms = [value for key, value in out.items() if isinstance(key, str) and key.startswith("loss_")]
        if not terms:
            raise ValueError(f"the loss function returned no loss_* entry (it returned {sorted(out.keys())}).")
        return sum(terms)
    raise TypeError(f"the loss function returned a {type(out).__name__}; return a scalar tensor or a TensorDict "
                    f"of loss_* terms.")


def diagonal_fisher(module: nn.Module, loss_fn: Callable[[object], object], batches: Iterable) -> dict[str, torch.Tensor]:
    """Diagonal empirical Fisher of ``module``'s parameters: ``F_i = mean_b (d L(b) / d theta_i)^2``.

    ``L(b) = loss_fn(batch)`` is a scalar (or a TensorDict whose ``loss_*`` entries are
    summed) and the mean runs over ``batches``. This is the empirical Fisher at the BATCH
    level: the square of the gradient of each batch's mean loss, not the mean of per-sample
    squared gradients of Kirkpatrick et al. (one backward per batch instead of one per
    sample; it is smaller by up to the batch size where per-sample gradients are noise, so
    the EWC weight absorbs that factor). Gradients come from ``torch.autograd.grad``: the
    parameters' ``.grad`` and any optimiser are untouched, and no weight changes.

    Args:
        module: whose parameters (``named_parameters()``) the Fisher is of.
        loss_fn: ``batch -> loss``; it must run ``module`` with its graph.
        batches: what ``loss_fn`` is called on (at least one).

    Returns:
        ``{name: F}`` for every parameter of ``module`` (zeros for those that do not
        require grad or get no gradient), same shapes, detached.

    Examples:
        >>> fisher = diagonal_fisher(world_model, lambda b: WorldModelLoss(world_model)(b), source_batches)
        >>> EWCPenalty(world_model).consolidate(fisher)
    """
    named = list(module.named_parameters())
    trained = [(i, p) for i, (_, p) in enumerate(named) if p.requires_grad]
    fisher = [torch.zeros_like(p, dtype=torch.float32).detach() for _, p in named]
    count = 0
    for batch in batches:
        grads = torch.autograd.grad(total_loss(loss_fn(batch)), [p for _, p in trained], allow_unused=True)
        for (i, _), grad in zip(trained, grads):
            if grad is not None:
                fisher[i].add_(grad.detach().float().pow(2))
        count += 1
    if count == 0:
        raise ValueError("diagonal_fisher got no batches; give at least one batch of the source task.")
    return {name: f.div_(count) for (name, _), f in zip(named, fisher)}


def _buffer_tree(named: Iterable[tuple[str, torch.Tensor]]) -> nn.Module:
    """A module whose buffers mirror ``named`` (dotted names become submodules), so the
    state_dict keys read like the parameters': ``anchor.encoder.convs.0.weight``."""
    root = nn.Module()
    for name, tensor in named:
        *path, leaf = name.split(".")
        node = root
        for part in path:
            if part not in node._modules:
                node.add_module(part, nn.Module())
            node = node._modules[part]
        node.register_buffer(leaf, tensor)
    return root


class EWCPenalty(LossModule):
    """Kirkpatrick et al. (2017), Eq. 3: ``L_ewc = lmbda / 2 * sum_i F_i (theta_i - theta_src_i)^2``.

    ``theta`` are ``module``'s live parameters, ``theta_src`` the anchor (the source model's
    weights) and ``F`` the diagonal Fisher information of the source task. Anchor and
    Fisher are BUFFERS of the parameters' shapes (under ``anchor.<param>`` and
    ``fisher.<param>``), created here: the anchor is a copy of the current weights and the
    Fisher is zero, so the penalty is 0 until :meth:`consolidate` and a checkpoint has the
    same keys before and after consolidation (a run resumes in either phase). ``module``
    itself is not registered (it belongs to its owner), so no tensor is stored twice.

    Used as a per-optimiser regulariser of :class:`~coworld_trl.agents.DreamerV2Agent`
    (``regularizers={"world_model": EWCPenalty(world_model)}``), which calls it with no
    input; the input is accepted and ignored so that it also runs as a TensorDict loss.

    Args:
        module: the network whose parameters are anchored.

    Keyword Args:
        lmbda: the EWC weight (the paper gives none; default :data:`DEFAULT_EWC_LMBDA` = 1e4,
            Continual World's EWC coefficient; the Fisher here is the batch-level empirical
            one of :func:`diagonal_fisher`, so tune it).

    Returns:
        TensorDict with ``loss_ewc`` and detached ``ewc_distance`` (``||theta - theta_src||_2``).

    Examples:
        >>> ewc = EWCPenalty(world_model, lmbda=1e4)
        >>> ewc.consolidate(diagonal_fisher(world_model, loss_fn, source_batches))  # after pretraining
        >>> (task_loss + ewc()["loss_ewc"]).backward()
    """

    @dataclass
    class _AcceptedKeys:
        """EWC reads no TensorDict entry."""

    default_keys = _AcceptedKeys
    tensor_keys: _AcceptedKeys
    consolidated: torch.Tensor

    def __init__(self, module: nn.Module, *, lmbda: float = DEFAULT_EWC_LMBDA):
        super().__init__()
        if lmbda < 0:
            raise ValueError(f"lmbda={lmbda} is negative; EWC's weight must be >= 0.")
        self.lmbda = lmbda
        self.__dict__["module"] = module  # not a submodule: its owner registers (and checkpoints) it
        params = list(module.named_parameters())
        if not params:
            raise ValueError(f"{type(module).__name__} has no parameters to anchor.")
        self.anchor = _buffer_tree((name, p.detach().clone()) for name, p in params)
        self.fisher = _buffer_tree((name, torch.zeros_like(p, dtype=torch.float32).detach()) for name, p in params)
        self.register_buffer("consolidated", torch.zeros((), dtype=torch.bool, device=params[0][1].device))

    def _forward_value_estimator_keys(self, **kwargs) -> None:
        pass

    @property
    def in_keys(self) -> list:
        return []

    @property
    def out_keys(self) -> list[str]:
        return ["loss_ewc", "ewc_distance"]

    @torch.no_grad()
    def consolidate(self, fisher: Mapping[str, torch.Tensor]) -> None:
        """Anchor at the current parameters and weigh them by ``fisher`` (``{name: F}`` for every
        parameter, e.g. from :func:`diagonal_fisher`)."""
        params = dict(self.module.named_parameters())
        missing, unknown = sorted(set(params) - set(fisher)), sorted(set(fisher) - set(params))
        if missing or unknown:
            raise ValueError(f"EWCPenalty.consolidate: the Fisher must have one entry per parameter of "
                             f"{type(self.module).__name__}; missing {missing[:4]}, unknown {unknown[:4]}.")
        for name, param in params.items():
            if tuple(fisher[name].shape) != tuple(param.shape):
                raise ValueError(f"EWCPenalty.consolidate: Fisher {name!r} has shape {tuple(fisher[name].shape)}, "
                                 f"the parameter {tuple(param.shape)}.")
            self.anchor.get_buffer(name).copy_(param)
            self.fisher.get_buffer(name).copy_(fisher[name])
        self.consolidated.fill_(True)

    def forward(self, tensordict: TensorDictBase | None = None) -> TensorDict:
        penalty = sq_distance = 0.0
        for name, param in self.module.named_parameters():
            delta = param - self.anchor.get_buffer(name)
            penalty = penalty + (self.fisher.get_buffer(name) * delta.pow(2)).sum()
            sq_distance = sq_distance + delta.detach().pow(2).sum()
        return TensorDict(loss_ewc=0.5 * self.lmbda * penalty, ewc_distance=sq_distance.sqrt())
