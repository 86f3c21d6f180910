"""torch.distributed awareness: rank, world size, the one batched reduction per check and the agreement on its layout."""

from __future__ import annotations

import itertools
import json
import logging
import math
from datetime import timedelta
from typing import Any, Callable, Hashable

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from torchhealth.transfer import flat_float, to_device

logger = logging.getLogger("torchhealth")


def rank_and_world() -> tuple[int, int]:
    """``(rank, world_size)`` of the default process group, ``(0, 1)`` without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _flatten(values: list[torch.Tensor | np.ndarray], header: float | None, zeros: int | None = None) -> torch.Tensor:
    """``values`` as one float32 vector on the collective's device, ``header`` appended unless None;
    ``zeros`` elements of zeros instead of ``values`` when given."""
    device = _collective_device()
    if zeros is not None:
        parts = [torch.zeros(zeros, device=device)]
    else:
        parts = [to_device(flat_float(_as_tensor(v)), device) for v in values]
    if header is not None:
        parts.append(torch.full((1,), header, device=device))
    return torch.cat(parts) if len(parts) > 1 else parts[0]


def _split(flat: torch.Tensor, state: dict[Hashable, tuple[torch.Tensor | np.ndarray, str]],
           world: int) -> dict[Hashable, torch.Tensor]:
    """The reduced ``flat`` cut back into ``state``'s names and shapes (``"mean"`` entries divided by ``world``)."""
    out, start = {}, 0
    for name, (values, op) in state.items():
        size = math.prod(values.shape)
        part = flat[start:start + size].reshape(values.shape)
        out[name] = part / world if op == "mean" else part
        start += size
    return out


MAX_AGREEMENT_ROUNDS = 4
"""Exchanges one check may need before its layout holds (each settles what the one before changed)."""


class LayoutAgreement:
    """Keeps the layout of the reduced state the same on every rank, so that no collective mismatches.

    Collectors create state as data arrives, on the rank that sees it (an activation site that only
    some ranks run: an expert, a branch), and a part that fails on one rank is switched off there
    only. So every check reduces ``[data | header]`` in ONE all-reduce: the data laid out as every
    rank last agreed (a rank whose own layout differs from it sends zeros of that length, so the
    lengths always match), the header the number of ranks whose layout, discovered model facts or
    switched-off parts differ from the agreed ones. It is 0 on the usual check, and the reduced data
    is the check's. Otherwise the ranks exchange what they have (one ``all_gather_object``), switch
    off on every rank what failed on any, adopt the union of the layouts (``Collector.adopt_layout``)
    and of the facts, and reduce again in the new layout; a layout that had to be merged is confirmed
    by one more exchange. Every decision is made from reduced or gathered values, which are the same
    on every rank, so all ranks always run the same collectives.
    """

    def __init__(self, guard: Any, facts: Any, parts: Callable[[str], list[str]], retire: Callable[[], None]) -> None:
        """
        Args:
            guard: The monitor's ``safety.Guard`` (its switched-off parts are agreed too).
            facts: The monitor's ``ModelFacts`` (forward order and activations, merged across ranks).
            parts: The guarded parts whose failure switches a collector off, by collector name.
            retire: Called after parts were switched off, to remove what they leave behind.
        """
        self.guard, self.facts, self.parts, self.retire = guard, facts, parts, retire
        self.rank, self.world = rank_and_world()
        self.agreed: dict[str, Hashable] = {}  # collector -> (entries, layout()) as every rank has them
        self.off: set[str] = set()  # parts switched off on every rank
        self._facts_size = (len(facts.forward_order), len(facts.activations))
        self.exchanges = 0  # how many times the ranks had to exchange layouts

    def is_off(self, name: str) -> bool:
        """Whether collector ``name`` is switched off on every rank."""
        return any(part in self.off for part in self.parts(name))

    def reduce(self, wanted: list[str], collectors: dict[str, Any],
               state: dict[str, dict[str, tuple[torch.Tensor | np.ndarray, str]]]) -> dict[tuple[str, str], torch.Tensor] | None:
        """Reduces one check's state across ranks in the agreed layout.

        Args:
            wanted: The collectors this check reads by the schedule, in order (the same on every rank).
            collectors: This rank's collectors (one the guard retired here is missing).
            state: Each collector's ``state()`` (``{}`` where it failed). Empty on a rank whose
                checks failed: it only tells the others.

        Returns:
            ``{(collector, key): reduced tensor}``; None once checks are switched off on every rank.
        """
        for _ in range(MAX_AGREEMENT_ROUNDS + 1):
            live = [name for name in wanted if not self.is_off(name)]
            names = [name for name in live if name in self.agreed]
            size = sum(math.prod(shape) for name in names for _, shape, _ in self.agreed[name][0])
            try:
                mine = {name: _describe(collectors.get(name), state.get(name)) for name in live}
                changed = (len(names) != len(live) or any(mine[name] != self.agreed[name] for name in names)
                           or self.guard.disabled != self.off
                           or (len(self.facts.forward_order), len(self.facts.activations)) != self._facts_size)
                laid = {(name, key): entry for name in names for key, entry in (state[name] if not changed else {}).items()}
                flat = _flatten([values for values, _ in laid.values()], float(changed), None if not changed else size)
            except Exception:  # never leave the other ranks alone in the collective: join it, and say checks failed
                self.guard.call("check", _raise)
                mine, laid = {name: None for name in live}, {}
                flat = _flatten([], 1.0, size)
            dist.all_reduce(flat, op=dist.ReduceOp.SUM)
            if flat[-1].item() == 0:  # the one host read before the copy: whether every rank agreed
                return _split(flat, laid, self.world)
            if "check" in self.off:
                return None
            self._exchange(live, collectors, state, mine)
            if "check" in self.off:
                return None
        return {}  # the layout kept changing (a part failing again at each try): no statistics this check

    def _exchange(self, live: list[str], collectors: dict[str, Any], state: dict[str, Any], mine: dict[str, Any]) -> None:
        """Gathers every rank's layouts, facts and failures; adopts their union on this rank."""
        self.exchanges += 1
        failed = {part: self.guard.errors.get(part, "switched off") for part in self.guard.disabled - self.off}
        everyone: list[Any] = [None] * self.world
        dist.all_gather_object(everyone, {"layouts": mine, "failed": failed, "order": list(self.facts.forward_order),
                                          "activations": dict(self.facts.activations)})
        failures: dict[str, list[tuple[int, str]]] = {}
        for rank, theirs in enumerate(everyone):
            for part, error in theirs["failed"].items():
                failures.setdefault(part, []).append((rank, error))
        off = self.off | set(failures)
        for name in live:
            if any(part in off for part in self.parts(name)):
                continue
            layouts = [theirs["layouts"].get(name) for theirs in everyone]
            if all(layout == layouts[0] for layout in layouts):
                self.agreed[name] = layouts[0]
                continue
            self.agreed.pop(name, None)  # confirmed by the next exchange, from what every rank then has
            collector = collectors.get(name)  # every rank has it: a rank that retired it has switched it off
            merged = None if collector is None else self.guard.call(
                f"collector {name}", collector.adopt_layout, [layout[1] if layout else () for layout in layouts])
            if merged:
                state[name] = self.guard.call(f"collector {name}", collector.state, default={})
            elif merged is False:  # cannot merge: decided alike on every rank, so switched off on every rank
                shapes = "; ".join(f"rank {r}: {layout[0] if layout else None}" for r, layout in enumerate(layouts))
                failures.setdefault(f"collector {name}", []).append(
                    (-1, f"its state is laid out differently on different ranks ({shapes})"))
            # None: adopting failed on this rank; the next round's header tells the others
        self._switch_off(failures)
        self.facts.agree([theirs["order"] for theirs in everyone], [theirs["activations"] for theirs in everyone])
        self._facts_size = (len(self.facts.forward_order), len(self.facts.activations))

    def _switch_off(self, failures: dict[str, list[tuple[int, str]]]) -> None:
        """Switches every failed part off on this rank too; rank 0 says so once per part."""
        new = set(failures) - self.off
        if not new:
            return
        self.off |= new
        self.guard.disabled |= new
        if self.rank == 0:
            for part in sorted(new):
                where = "; ".join(f"rank {r}: {error}" if r >= 0 else error for r, error in failures[part])
                logger.error("torchhealth: %s failed (%s) and is switched off on every rank; %s", part, where,
                             "checks stop, training goes on" if part == "check" else
                             "training and the other parts of the monitor go on")
        self.retire()


def _raise() -> None:
    """Re-raises the exception being handled (so that the guard logs and records it as a part's failure)."""
    raise


def _describe(collector: Any, state: dict[str, tuple[torch.Tensor | np.ndarray, str]] | None) -> Hashable:
    """What a collector's state is laid out as: ``((key, shape, reduction), ...)`` and its ``layout()``."""
    if collector is None or state is None:
        return None
    return tuple((key, tuple(values.shape), op) for key, (values, op) in state.items()), collector.layout()


HANDSHAKE_TIMEOUT = 300.0
"""Seconds a new monitor waits for the other ranks' monitors before it says which ranks made none."""
_monitors_made = itertools.count()


def handshake(description: dict[str, Any], timeout: float | None = None) -> None:
    """Checks at construction that every rank makes a monitor, and makes it alike.

    Every rank publishes ``description`` (the options that set the schedule and the layout of the
    reduced state, and a fingerprint of the model and optimizer) in the process group's store and
    reads the others'; the store is not a collective, so a rank that makes no monitor does not
    leave the others waiting forever in one: after ``timeout`` seconds they raise instead.

    Raises:
        RuntimeError: When some rank has made no monitor within ``timeout`` seconds.
        ValueError: When the ranks' descriptions differ (names what differs, on which ranks).
    """
    rank, world = rank_and_world()
    if world == 1:
        return
    timeout = HANDSHAKE_TIMEOUT if timeout is None else timeout
    mine = json.dumps(description, sort_keys=True, default=str)
    store = getattr(dist.distributed_c10d, "_get_default_store", None)  # private: a torch without it gathers
    if store is None:  # pragma: no cover - every torch this project supports has it
        gathered: list[Any] = [None] * world
        dist.all_gather_object(gathered, mine)
    else:
        gathered = _exchange_through_store(store(), mine, rank, world, timeout)
    everyone = [json.loads(theirs) for theirs in gathered]
    differences = []
    for field in sorted(set().union(*everyone)):
        values = [theirs.get(field) for theirs in everyone]
        if any(value != values[0] for value in values):
            shown = ", ".join(f"rank {r}: {_short(value)}" for r, value in enumerate(values))
            differences.append(f"{field} ({shown})")
    if differences:
        raise ValueError(
            "torchhealth.Monitor must be created alike on every rank, but these differ between ranks: "
            + "; ".join(differences) + ". Pass the same options, the same model (wrapped the same way) "
            "and an optimizer on every rank or on none: every check reduces the statistics of all "
            "ranks together, on the same schedule.")


def _exchange_through_store(store: Any, mine: str, rank: int, world: int, timeout: float) -> list[str]:
    """Every rank's ``mine``, through the process group's store; RuntimeError naming the ranks that gave none."""
    prefix = f"torchhealth/monitor{next(_monitors_made)}/"
    store.set(prefix + str(rank), mine)
    keys = [prefix + str(r) for r in range(world)]
    try:
        store.wait(keys, timedelta(seconds=timeout))
    except RuntimeError as exc:  # DistStoreError: timed out
        missing = [r for r, key in enumerate(keys) if not store.check([key])]
        raise RuntimeError(
            f"torchhealth.Monitor was created on rank {rank}, but rank(s) {missing} created no matching monitor "
            f"within {timeout:.0f}s. Under torch.distributed every rank must create its monitor (the same "
            f"number of them, in the same order) and call step() at the same steps: each check is a "
            f"collective. Create it on every rank, or on none.") from exc
    return [store.get(key).decode() for key in keys]


def _short(value: Any, limit: int = 120) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= limit else text[:limit] + "..."


def _as_tensor(values: torch.Tensor | np.ndarray) -> torch.Tensor:
    return torch.from_numpy(values) if isinstance(values, np.ndarray) else values


def replica_counts(model: nn.Module, params: list[tuple[str, str, torch.Tensor]]) -> list[float]:
    """How many ranks hold each parameter's rank-local tensor.

    Summing ``value / copies`` over all ranks gives the whole tensor's value once: replicated
    parameters (plain, DDP) count the world size; FSDP2 DTensors count ``world / shards``
    (1 for a full shard, the replica count under HSDP); FSDP1 parameters of a sharded unit count
    ``world / shard group size``.

    Args:
        model: The model as the user passed it (FSDP1 wrappers still on).
        params: ``(name, layer, parameter)`` entries as from ``layers.parameter_layers``.
    """
    _, world = rank_and_world()
    fsdp1 = _fsdp1_shard_group_sizes(model) if world > 1 else {}
    counts = []
    for _, _, p in params:
        if hasattr(p, "placements") and hasattr(p, "device_mesh"):
            shards = math.prod(p.device_mesh.size(i) for i, pl in enumerate(p.placements) if pl.is_shard())
            counts.append(world / shards)
        else:
            counts.append(world / fsdp1.get(id(p), 1))
    return counts


def _fsdp1_shard_group_sizes(model: nn.Module) -> dict[int, int]:
    """``{id(parameter): shard group size}`` for parameters of sharded FullyShardedDataParallel units.

    Reads FSDP1's private handle (``_handle``); an FSDP version without it counts as unsharded.
    """
    try:
        from torch.distributed.fsdp import FullyShardedDataParallel
    except ImportError:  # pragma: no cover - torch built without distributed
        return {}
    sizes = {}
    for module in model.modules():
        handle = getattr(module, "_handle", None) if isinstance(module, FullyShardedDataParallel) else None
        if handle is None or not getattr(handle, "uses_sharded_strategy", False):
            continue
        flat = handle.flat_param
        for p in [flat, *(getattr(flat, "_params", None) or [])]:
            sizes[id(p)] = handle.process_group.size()
    return sizes


def _collective_device() -> torch.device:
    backend = dist.get_backend()
    if backend == "nccl" and torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")
