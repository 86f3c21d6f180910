"""Activation statistics: ReLU zero fraction, per-unit activity (dead units), sigmoid/tanh saturation.

What the hooks see (``activation_hooks.py``) is filed here into per-site running state on the device
(``activation_sites.py``), and read at checks: the zero fraction or saturated share of each site over
the check interval, and per unit whether it fired over a window of ``window_samples`` samples.
"""

from __future__ import annotations

from itertools import compress
from typing import Any

import numpy as np
import torch
from torch import nn

from torchhealth.collectors.activation_hooks import ActivationHooks
from torchhealth.collectors.activation_sites import Site, SiteBuffers
from torchhealth.collectors.base import Arrays, AttachContext, Collector, State, file_values, first_nonfinite, host_values
from torchhealth.facts import ModelFacts
from torchhealth.layers import unit_axis, unwrap
from torchhealth.safety import Guard
from torchhealth.records import Snapshot
from torchhealth.transfer import to_device

MAX_SITES_PER_MODULE = 16


SILENT_SPAN = 0.5
"""Share of a window a unit must stay silent for to count in ``silent_units``: half, so units that die
early in a window are reported in half the time the firm verdict (a whole window after they died,
when the next window closes) takes."""


class ActivationCollector(Collector):
    """Hooks activation modules (and, optionally, functional activations) of a model.

    Args (each taken from the monitor at ``attach`` when not given; with ``model``, it hooks the
    model at once):
        model: The model to hook.
        facts: Its ``ModelFacts`` (forward order and functional sites are added as they are found).
        interval: Steps per check interval.
        window_samples: Samples a per-unit activity window must see before units are judged dead.
        functional: Also watch ``F.relu``/``torch.sigmoid``/... called inside ``forward``.
        guard: Where hook failures are reported (the monitor's ``safety.Guard``).
        sample_every: Forwards are sampled every this many steps.
    """

    name = "activations"
    parts = ("activation hooks",)

    def __init__(self, model: nn.Module | None = None, facts: ModelFacts | None = None, interval: int | None = None,
                 window_samples: int | None = None, functional: bool | None = None, guard: Guard | None = None,
                 sample_every: int | None = None) -> None:
        self._given = (interval, window_samples, functional, guard, sample_every)
        if model is not None:
            self._bind(model, facts if facts is not None else ModelFacts.from_model(unwrap(model)),
                       interval or 10, window_samples or 1024, True if functional is None else functional, guard,
                       sample_every or 1)

    def attach(self, context: AttachContext) -> bool:
        if not hasattr(self, "model"):
            interval, window_samples, functional, guard, sample_every = self._given
            options = context.options
            self._bind(context.model, context.facts, interval or options.check_every,
                       window_samples or options.window_samples,
                       options.functional_activations if functional is None else functional,
                       guard or context.guard, sample_every or options.sample_every)
        return True

    def _bind(self, model: nn.Module, facts: ModelFacts, interval: int, window_samples: int, functional: bool,
              guard: Guard | None, sample_every: int) -> None:
        self.model = unwrap(model)
        self.facts = facts
        self.interval = interval
        self.window_samples = window_samples
        self.sample_every = sample_every
        self.observed: list[Site] = []  # sites that saw outputs since the last ``file_step``, each once
        self.sites: dict[tuple[str, int], Site] = {}
        self._calls: dict[str, int] = {}  # calls of each module (or functional owner) in this step's forwards
        self._tensors: SiteBuffers | None = None  # the sites' buffers, until a site is added or its outputs move
        self._read: SiteBuffers | None = None  # the sites of the last state(), in the order of its tensors
        self._counted: list[int] = []  # their window samples at that check
        self._layout: tuple = ()  # ``layout()``, made again when a site is added
        # each site's latest closed window's dead share, shown at every log step; replaced, never changed in
        # place, so that every snapshot can hold it without a copy
        self._dead_shares: dict[str, float] = {}
        # ``silent_units``, laid out as the last check's sites (``_silence_layout``): each unit's sampled
        # inputs since it last fired, and each site's window samples at that check
        self._silence, self._silence_base = np.zeros(0), np.zeros(0)
        self._silence_layout: tuple[tuple[str, ...], tuple[int, ...]] = ((), ())
        self.hooks = ActivationHooks(self, self.model, facts, guard or Guard(strict=True), functional)  # last: hooks go on

    @property
    def sampling(self) -> bool:
        """Whether the next forwards are sampled. Set by the monitor before each step's forward."""
        return self.hooks.sampling

    @sampling.setter
    def sampling(self, on: bool) -> None:
        self.hooks.sampling = on

    def prepare(self, sampling: bool) -> None:
        """Sets whether the next forwards are sampled, with the hooks that needs (called every step: cheap)."""
        self.hooks.prepare(sampling)

    # -- the monitor's per-step calls -------------------------------------------------------------
    def on_step(self, loss: Any, offset: int) -> bool:
        if self.observed or self.hooks.sampling:
            self.file_step(offset)
        return False

    def after_step(self, step: int) -> None:
        self.prepare((step + 1) % self.sample_every == 0)

    def idle_steps(self, step: int) -> int:
        # the step before a sampled one prepares its hooks
        return (-step - 1) % self.sample_every if self.settled() else 0

    def quiet_step(self, loss: Any, offset: int) -> bool:
        return self.settled()  # False once torch.compile is loaded: the full step puts the pre-hook in place

    def resume(self, step: int) -> None:
        self.sampling = step % self.sample_every == 0

    def settled(self) -> bool:
        """Whether the next unsampled steps need nothing from this collector: no sampled statistics
        wait to be filed, and the hooks are as unsampled forwards need them."""
        return not self.observed and self.hooks.ready_for_unsampled()

    # -- statistics ----------------------------------------------------------------------------
    def _observe(self, name: str, kind: str, output: Any) -> None:
        if not isinstance(output, torch.Tensor) or not output.is_floating_point():
            return
        call = self._calls.get(name, 0)
        self._calls[name] = call + 1
        key = (name, call) if call < MAX_SITES_PER_MODULE else (name, MAX_SITES_PER_MODULE - 1)
        site = self.sites.get(key)
        x = output.detach()
        if site is None or x.shape != site.shape:  # the unit axis is worked out once per output shape
            if not x.numel() or not x.dim():
                self._calls[name] = call  # an empty or 0-d output is no call: later calls keep their names
                return
            site = self._site_for(key, kind, x)
            if site is None:
                return
        index = x.get_device()
        if index != site.device_index:  # the model was moved: the buffers follow before filing
            site.device, site.device_index = x.device, index
            self._tensors = None
        first = not site.seen  # its first call in this step: ``observed`` lists each site once
        site.observe(x)
        if first:
            self.observed.append(site)

    def _site_for(self, key: tuple[str, int], kind: str, x: torch.Tensor) -> Site | None:
        """The site of ``key`` for an output shaped like ``x`` (made on its first call), or None to skip it."""
        name, site = key[0], self.sites.get(key)
        axis = unit_axis(x.shape, channels_first=x.dim() == 3 and x.shape[1] in self.facts.conv1d_channels)
        units = x.shape[axis] if axis is not None else 1
        if site is None:
            site_name = name if key[1] == 0 else f"{name}#{key[1]}"
            site = self.sites[key] = Site(site_name, kind, units, axis, x.device, self.interval)
            self._tensors = None  # laid out into the buffers before its statistics are filed
            if ":" in name:  # a functional site: the function mode is needed at later sampled forwards too
                self.hooks.functional_seen = True
            self.facts.activations.setdefault(site_name, kind)
            self.facts.note_forward(site_name)
        elif site.placeholder and units == site.units:
            site.axis, site.placeholder = axis, False  # first seen here after another rank saw it
        elif (axis, units) != (site.axis, site.units):
            return None  # another layout (an unbatched call, a capped site of another width): never mix units
        site.shape = x.shape
        site.reduce_dims = tuple(d for d in range(x.dim()) if d != axis) if axis is not None else None
        site.per_call = (x.numel(), x.shape[0] if axis == 1 or axis is None else x.numel() // max(units, 1))
        return site

    def file_step(self, offset: int) -> None:
        """Files what this step's forwards saw under the step's ``offset`` in the check interval.

        Called by the monitor once per step, outside the forward; returns at once on steps whose
        forwards were not sampled. When every site ran once and counts ReLU units (the usual
        model), four launches for all sites; otherwise two foreach adds (and one more launch for
        each site called several times in the step, or whose outputs are on another device than
        the buffers). No host synchronization.
        """
        self.hooks.end_step()
        # The calls of this step are filed: the next step's start again at the first site of each module
        # (also where the model's own forward, which clears them too, is not called: a Lightning
        # training_step that calls its parts).
        self._calls.clear()
        if not self.observed:
            return
        if self._tensors is None:  # a new site, or the model moved: the buffers are laid out first
            self._site_tensors()
        tensors = self._tensors
        sites, self.observed = self.observed, []
        largest, counts = [], []
        simple = True  # one call per site, outputs where the buffers are
        for site in sites:
            seen, site.seen = site.seen, []
            if len(seen) == 1:  # the usual case: one call of the site in this step
                most, count, numel, samples = seen[0]
            else:  # several calls: their largest output (a sum could overflow in fp16), their counts summed
                most = torch.stack([m for m, _, _, _ in seen]).amax()
                count, numel, samples = (sum(column) for column in list(zip(*seen))[1:])
                simple = False
            if site.device_index != site.home:  # a model spread over devices: the buffers are on one of them
                most, count = to_device(most, site.fires.device), to_device(count, site.fires.device)
                simple = False
            largest.append(most)
            counts.append(count)
            site.numel += numel
            site.window_samples += samples
        in_interval = 0 <= offset < self.interval
        if simple and tensors.columns and sites == tensors.order:
            # every site once, in buffer order, all per-unit ReLU counts: four launches instead of a
            # per-site add each (a foreach add is a loop of adds on the CPU)
            if in_interval:
                tensors.columns[offset].add_(torch.stack(largest))
            tensors.positive.add_(torch.cat(counts))
            return
        if in_interval:
            torch._foreach_add_([site.flags.slot(offset) for site in sites], largest)
        torch._foreach_add_([site.target for site in sites], counts)

    def _site_tensors(self) -> SiteBuffers:
        """Every site's running state side by side in two buffers (laid out again when a site is
        added or the model moved): a check reads them and resets them with no per-site operation."""
        if self._tensors is None:
            self._tensors = SiteBuffers.lay_out(list(self.sites.values()), self.interval)
        return self._tensors

    # -- collector contract --------------------------------------------------------------------
    def layout(self) -> tuple:
        """``(key, name, kind, units)`` of every site, in the order of the state's rows."""
        if len(self._layout) != len(self.sites):  # sites are only ever added (or laid out anew, which clears it)
            self._layout = tuple((key, s.name, s.kind, s.units) for key, s in self.sites.items())
        return self._layout

    def adopt_layout(self, layouts: list[tuple]) -> bool:
        """Lays the sites out as the union of every rank's, in the order of ``layouts``.

        A site this rank has not run yet gets empty state (it reduces to the other ranks' counts: a
        unit that fires on one rank is alive, and a site that no rank ran in an interval has no
        outputs, so it is not judged); sites it has keep theirs. Of two ranks' sites with one key and
        different widths the first rank's wins, and the other's counts so far are dropped.
        """
        union: dict[tuple[str, int], tuple[str, str, int]] = {}
        for layout in layouts:
            for key, name, kind, units in layout:
                union.setdefault(tuple(key), (name, kind, units))
        device = self._home()
        sites = {}
        for key, (name, kind, units) in union.items():
            site = self.sites.get(key)
            if site is None or (site.kind, site.units) != (kind, units):
                site = Site(name, kind, units, None, device, self.interval, placeholder=True)
            sites[key] = site
        kept = set(map(id, sites.values()))
        self.observed = [site for site in self.observed if id(site) in kept]
        self.sites, self._tensors, self._layout = sites, None, ()
        # a functional site another rank found: watch for it here too, as that rank does
        if any(":" in key[0] for key in sites):
            self.hooks.functional_seen = True
        return True

    def _home(self) -> torch.device:
        """Where new sites' state goes before the buffers are laid out: with the other sites', or the model."""
        for site in self.sites.values():
            return site.fires.device
        param = next(self.model.parameters(), None)
        return param.device if param is not None else torch.device("cpu")

    def state(self) -> State:
        if not self.sites:
            self._read = None
            return {}
        self._read = tensors = self._site_tensors()
        order = tensors.order
        self._counted = [s.window_samples for s in order]
        return {  # views of the buffers, no launch; the rest are host numbers, used in ``finish``
            "fires": (tensors.window, "sum"),
            "positive": (tensors.positive, "sum"),
            "off": (tensors.off, "sum"),
            "markers": (tensors.markers, "sum"),
            "numel": (host_values(s.numel for s in order), "sum"),
            "samples": (host_values(self._counted), "sum"),
        }

    def reset_interval(self) -> None:
        if not self.sites:
            return
        tensors = self._site_tensors()  # two launches for all sites
        tensors.window.add_(tensors.positive)
        tensors.interval.zero_()
        for site in tensors.order:
            site.numel = 0

    def finish(self, state: Arrays, snapshot: Snapshot, interval_start: int) -> None:
        read = self._read
        if read is None or "fires" not in state:
            return
        order, units, starts, relu, names = read.order, read.units, read.starts, read.relu, read.names
        positive = state["positive"].astype(np.float64)
        numel = state["numel"]
        with np.errstate(divide="ignore", invalid="ignore"):
            off = np.where(relu, numel - np.add.reduceat(positive, starts), state["off"]) / numel
        seen = numel > 0
        if read.all_relu and seen.all():  # the usual model: one family, every site
            file_values(snapshot, "zero_fraction", names, off)
        else:
            for family, filed in (("zero_fraction", relu & seen), ("saturation", ~relu & seen)):
                file_values(snapshot, family, compress(names, filed), off[filed])
        samples = state["samples"]
        closing = samples >= self.window_samples  # the windows that close at this check
        if closing.any():
            closed = list(compress(order, closing))
            for site, counted in zip(closed, compress(self._counted, closing)):
                site.window_samples -= counted  # samples filed since the check start the next window
            dead = closing & relu
            if dead.any():
                fires = state["fires"] + positive  # per unit, over the window
                share = np.add.reduceat((fires == 0).astype(np.float64), starts) / units
                file_values(snapshot, "dead_units", compress(names, dead), share[dead])
                self._dead_shares = {**self._dead_shares, **snapshot.stats["dead_units"]}
                snapshot.window_samples = max(snapshot.window_samples, int(samples[dead].max()))
            # the device state holds exactly this window: later forwards are in ``positive`` until the next check
            if len(closed) == len(order) and self._tensors is read:  # the usual case: every window closes together
                read.window.zero_()
            else:
                torch._foreach_zero_([site.fires for site in closed])
        if self._dead_shares:
            snapshot.held["dead_units"] = self._dead_shares
        markers = state["markers"].reshape(len(order), -1)
        if not np.isfinite(markers.sum()):  # some step saw a non-finite output (a sum of finite maxima rarely overflows)
            for site, offset in zip(order, first_nonfinite(markers).tolist()):
                if offset >= 0:
                    snapshot.nonfinite[f"activation:{site.name}"] = interval_start + offset
        self._file_silence(snapshot, read, positive, samples, closing)

    def _file_silence(self, snapshot: Snapshot, read: SiteBuffers, positive: np.ndarray, samples: np.ndarray,
                      closing: np.ndarray) -> None:
        """Files ``silent_units``: per ReLU site, the share of units that fired for none of the last half window.

        Host numbers the check has anyway (each unit's positive count this interval): every unit keeps
        the sampled inputs since it last fired, so units that died early in a window are seen half a
        window after they died instead of after the next whole window (a provisional verdict; the
        window's ``dead_units`` is the firm one). An interval with a non-finite output restarts the count:
        NaN is not death. All sites at once, in the layout of ``read`` (a few array operations a check).
        """
        self._lay_out_silence(read)
        new = samples - self._silence_base  # sampled inputs per site since the last check
        grown = self._silence + np.repeat(np.maximum(new, 0.0), read.units)
        silence = np.where((positive > 0) | np.isnan(positive), 0.0, grown)  # a unit that fired restarts
        if snapshot.nonfinite:  # NaN outputs count as 0 (sign(NaN) is 0): their site restarts, not silence
            for i, (start, count) in enumerate(zip(read.starts.tolist(), read.units.tolist())):
                if f"activation:{read.names[i]}" in snapshot.nonfinite:
                    silence[start:start + count] = 0.0
        self._silence = silence
        self._silence_base = np.where(closing, 0.0, samples)  # a closed window's count restarts from zero
        filed = read.relu & (new > 0)
        if filed.any():
            span = self.window_samples * SILENT_SPAN
            shares = np.add.reduceat((silence >= span).astype(np.float64), read.starts) / read.units
            file_values(snapshot, "silent_units", compress(read.names, filed), shares[filed])

    def _lay_out_silence(self, read: SiteBuffers) -> None:
        """Moves the silence counts into the layout of ``read`` when its sites changed (by site name;
        a new site, or one whose width changed, starts from zero)."""
        layout = (tuple(read.names), tuple(read.units.tolist()))
        if layout == self._silence_layout:
            return
        old_names, old_units = self._silence_layout
        old_starts = np.concatenate([[0], np.cumsum(old_units, dtype=np.intp)[:-1]]) if old_units else []
        old = {name: (int(start), count, i)
               for i, (name, start, count) in enumerate(zip(old_names, old_starts, old_units))}
        silence, base = np.zeros(int(read.units.sum())), np.zeros(len(read.names))
        for i, (name, start, count) in enumerate(zip(read.names, read.starts.tolist(), read.units.tolist())):
            if name in old and old[name][1] == count:
                was, _, j = old[name]
                silence[start:start + count] = self._silence[was:was + count]
                base[i] = self._silence_base[j]
        self._silence, self._silence_base, self._silence_layout = silence, base, layout

    def close(self) -> None:
        self.hooks.close()

