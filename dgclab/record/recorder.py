"""Record which channels every DGC head kept, per sample, while a model runs.

``Recorder`` is a context manager over forward hooks (SPEC: issue #3). Inside ``with`` it reads
the own decision of each dynamic layer of the layer protocol (``dgclab.layers.GroupingConv``
with ``dynamic = True``: DGC, and any dynamic kind registered later), ``last_selection`` (it
never recomputes saliencies), and the ``connectivity()`` of each static one (a group conv) once,
at its first recorded forward; it
bit-packs it along the channel axis and stores it; outside ``with`` the model carries no hook.
A ``Recorder`` is a ``Recording``, so the analysis functions take a live recorder and a loaded
file alike, during and after the run::

    with dgclab.Recorder(model) as rec:
        for x, y, i in loader:
            rec.tag(labels=y, ids=i)  # optional: what the next forward's samples are
            model(x)
    rec.selections("layer1.0.conv1")  # (N, heads, C_in) bool, in the order samples were seen
    rec.save("run.npz")

How a forward is recorded: a pre-hook on the root model opens a batch and takes the pending tags,
a hook on every DGC layer adds that layer's records to it, and a hook on the root model commits
the batch once the whole forward has run. A forward that raises commits nothing and drops its
batch and its tags (a hook with ``always_call=True`` runs when the forward raises), so every
layer always holds the same samples and tags never move on to a later forward. A DGC layer that
runs outside a forward of the recorded model (the model called piece by piece, activation
checkpointing that recomputes a segment during backward) raises ``RuntimeError``: record the
piece you call (``Recorder(model.layer1)``) instead. So does a layer that runs twice in one
forward (a shared layer, ``nn.DataParallel`` over several GPUs).

Storage: one array per layer and kind with room for more rows, grown by doubling (so a run of
batches of 1 costs no per-batch Python objects) and trimmed to size when ``with`` exits. With
``max_samples=M`` the arrays stop at M rows and a reservoir (Vitter's Algorithm R) keeps a
uniform random sample of M of all the samples seen, the same samples for every layer.

Forwards that are not samples of the data, e.g. the probe forward of an analysis
(``count_macs``, ``filter_sparsity``) run while a recording of the same model is live, go inside
``with dgclab.record.paused():``; no recorder sees them, and pending tags wait for the next
recorded forward.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from functools import partial

import numpy as np
import torch
import torch.nn as nn

from ..checks import check_bool, check_int, check_type
from ..layers import GroupingConv, grouping_layers
from .recording import Recording, int_vector

__all__ = ["Recorder", "paused"]

# Column kinds per layer: bit-packed selections, float16 saliencies, float32 activation maxima.
_SEL, _SAL, _ACT = "selections", "saliencies", "activation_max"

# True inside ``paused()``. A context variable: each thread (and asyncio task) has its own, so
# an analysis in one thread does not pause a recording that another thread is feeding.
_PAUSED: ContextVar[bool] = ContextVar("dgclab_record_paused", default=False)


@contextmanager
def paused() -> Iterator[None]:
    """No ``Recorder`` records the forwards run inside this block (in this thread).

    For forwards that are not samples of the data being recorded: the probe forward of an
    analysis (``count_macs``, ``filter_sparsity`` and the rest of ``dgclab.analysis`` enter it
    themselves), an attribution, a sanity check. Inside the block every recorder's hooks do
    nothing: no rows, no tags consumed (they wait for the next recorded forward), no error for
    a part of the model called on its own. Blocks nest.

    Example:
        >>> model = resnet_cifar(8, width=8, conv="dgc", in_channels=1)
        >>> with Recorder(model) as rec:
        ...     with paused():
        ...         _ = model(torch.zeros(1, 1, 28, 28))  # not recorded
        ...     rec.tag(labels=torch.tensor([3, 7]))
        ...     _ = model(torch.randn(2, 1, 28, 28))  # recorded, with its labels
        >>> rec.selections("layer1.0.conv1").shape[0], rec.labels.tolist()
        (2, [3, 7])
    """
    token = _PAUSED.set(True)
    try:
        yield
    finally:
        _PAUSED.reset(token)


class Recorder(Recording):
    """Context manager that records every DGC layer's channel selection for every sample.

    Every layer of the layer protocol is recorded: a dynamic one (DGC) per sample, a static one
    (a group conv) once, its ``connectivity()`` at its first recorded forward (``selections``
    reads it for every sample; ``is_dynamic`` tells them apart).

    Args:
        model: the model whose forwards are recorded (a single ``DGCConv2d`` works too). Records
            are keyed by the layers' names in ``model.named_modules()`` (a ``DataParallel`` or
            DDP wrapper adds the ``module.`` prefix).
        saliency: also keep each layer's saliencies ``last_saliency`` as float16
            (N, heads, C_in): 2 bytes per channel and head instead of 1 bit.
        activations: also keep the per-channel max of each DGC layer's output over H, W,
            float32 (N, C_out), for dead-filter analysis.
        max_samples: keep at most this many samples, a uniform random sample of all the samples
            seen (reservoir); ``ids`` say which. Default: keep every sample.
        seed: seed of the reservoir's ``numpy.random.Generator``.

    Besides the ``Recording`` queries (``layer_names``, ``selections`` ...), which work during
    and after ``with``, a recorder has ``tag`` (labels and ids of the next forward's samples),
    ``samples_seen`` (every sample that passed, kept or not) and ``nbytes``.

    Untagged samples get label -1 and as id their position in the stream (0, 1, 2, ... over all
    forwards recorded). ``layer_info`` is taken at a layer's first recorded forward; if a
    later forward runs with another k or input size, a warning says so once per layer.

    Example:
        >>> model = resnet_cifar(8, conv="dgc", in_channels=1)
        >>> with Recorder(model) as rec:
        ...     rec.tag(labels=torch.tensor([3, 7]))
        ...     _ = model(torch.randn(2, 1, 28, 28))
        >>> rec.selections("layer1.0.conv1").shape
        torch.Size([2, 4, 16])
    """

    def __init__(
        self,
        model: nn.Module,
        saliency: bool = False,
        activations: bool = False,
        max_samples: int | None = None,
        seed: int = 0,
    ) -> None:
        # Recording.__init__ is not called: the storage attributes it reads (_packed, _labels,
        # _ids, _saliencies, _activation_max) are properties over the growing arrays below.
        check_type("model", model, nn.Module)
        if not grouping_layers(model):
            raise ValueError(
                f"{type(model).__name__} has no grouping layer (DGCConv2d, GroupConv2d, ...) to "
                f"record"
            )
        if max_samples is not None:
            max_samples = check_int("max_samples", max_samples, min=1)
        self.model = model
        self.attrs: dict = {}  # saved with the file (see Recording)
        self.saliency = check_bool("saliency", saliency)
        self.activations = check_bool("activations", activations)
        self.max_samples = max_samples
        self.seed = seed
        self.samples_seen = 0  # every sample that passed through, kept or not
        self._rng = np.random.default_rng(seed)
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._layers: dict[str, GroupingConv] = {}  # hooked layers, named_modules order
        self._names: list[str] = []  # recorded layers, fixed by the first recorded forward
        self._info: dict[str, dict] = {}
        self._static: dict[str, np.ndarray] = {}  # static layer -> packed (heads, bytes)
        self._changed: set[str] = set()  # layers already warned about a changed k / input size
        # (capacity, ...) arrays; rows [0, _rows) hold data. Keys: "labels", "ids", (kind,
        # layer name) and, for a reservoir, "seen" (each kept sample's position in the stream).
        self._columns: dict = {}
        self._rows = 0
        self._order_cache: np.ndarray | None = None  # argsort of "seen" once a reservoir shuffled
        self._ordered = True  # rows are in stream order
        # Tags for the next forward, and those of the forward being recorded.
        self._tags: tuple[np.ndarray | None, np.ndarray | None] | None = None
        self._batch: dict[str, dict] | None = None  # the forward being recorded
        self._batch_tags: tuple[np.ndarray | None, np.ndarray | None] | None = None

    # ---- context ----------------------------------------------------------------------------

    def __enter__(self) -> Recorder:
        if self._handles:
            raise RuntimeError("this Recorder is already recording; a with block cannot nest it")
        self._layers = dict(grouping_layers(self.model))
        try:
            for name, layer in self._layers.items():
                self._handles.append(layer.register_forward_hook(partial(self._record_layer, name)))
            # Registered after the layer hooks, so that on a model that is itself a DGC layer
            # the layer's records exist before the batch is committed.
            self._handles.append(self.model.register_forward_pre_hook(self._begin_batch))
            self._handles.append(self.model.register_forward_hook(self._end_batch))
            # Last, and run even when the forward raises: drops a batch left open.
            self._handles.append(
                self.model.register_forward_hook(self._drop_batch, always_call=True)
            )
        except BaseException:
            self._remove_hooks()
            raise
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        try:
            self._batch = self._batch_tags = None
            self._resize(self._rows)  # give back the room kept for more rows
        finally:
            self._remove_hooks()
        return False

    def _remove_hooks(self) -> None:
        handles, self._handles = self._handles, []
        for handle in handles:
            handle.remove()

    @property
    def recording(self) -> bool:
        """True inside the ``with`` block."""
        return bool(self._handles)

    # ---- tags -------------------------------------------------------------------------------

    def tag(self, labels=None, ids=None) -> None:
        """Labels and/or sample ids of the samples of the next forward (that forward only).

        Args:
            labels: (B,) integer class labels.
            ids: (B,) integer sample ids, e.g. dataset indices.

        Both must have one entry per sample of the next forward, else that forward raises
        ``ValueError``. Calling ``tag`` again before the forward replaces the pending tags. The
        next forward takes the tags when it starts: if it raises, they are gone with it.
        Forwards inside ``paused()`` do not take them.

        Raises:
            TypeError: labels or ids that are not integers.
            ValueError: not 1-D, beyond int64, or labels and ids of different lengths.
        """
        labels = None if labels is None else int_vector(labels, "labels")
        ids = None if ids is None else int_vector(ids, "ids")
        if labels is not None and ids is not None and len(labels) != len(ids):
            raise ValueError(
                f"labels and ids must have the same length, got {len(labels)} labels and "
                f"{len(ids)} ids"
            )
        self._tags = (labels, ids)

    # ---- hooks ------------------------------------------------------------------------------

    def _begin_batch(self, module: nn.Module, args) -> None:
        if _PAUSED.get():
            return
        # The pending tags belong to this forward attempt, whether it succeeds or not.
        self._batch = {}
        self._batch_tags, self._tags = self._tags, None

    def _record_layer(self, name: str, module: GroupingConv, args, output: torch.Tensor) -> None:
        if _PAUSED.get():
            return
        batch = self._batch
        if batch is None:
            raise RuntimeError(
                f"DGC layer {name!r} ran outside a forward of the recorded "
                f"{type(self.model).__name__}; a Recorder records whole forwards of its model: "
                f"call the model, or record the part you call (Recorder(model.<part>))"
            )
        if name in batch:
            raise RuntimeError(
                f"DGC layer {name!r} ran twice in one forward; a Recorder keeps one selection per "
                f"sample and layer (a layer called twice, or nn.DataParallel over several GPUs, "
                f"cannot be recorded)"
            )
        seen = {"records": {}, "info": module.layer_info(args[0].shape[-2:]), "n": len(args[0])}
        records = seen["records"]
        if module.dynamic:
            # The layer's own decision, detached: (B, heads, C_in) bool -> (B, heads, C_in/8).
            records[_SEL] = np.packbits(module.last_selection.detach().cpu().numpy(), axis=-1)
            saliency = getattr(module, "last_saliency", None)  # DGC's g
            if self.saliency and saliency is not None:
                records[_SAL] = saliency.detach().to(torch.float16).cpu().numpy()
        elif name not in self._static:  # a static layer: its connectivity, once
            seen["connectivity"] = np.packbits(module.connectivity().cpu().numpy(), axis=-1)
        if self.activations:
            amax = output.detach().amax(dim=(-2, -1))  # (B, C_out)
            records[_ACT] = amax.to(torch.float32).cpu().numpy()
        batch[name] = seen

    def _end_batch(self, module: nn.Module, args, output) -> None:
        if _PAUSED.get():
            return
        batch, self._batch = self._batch, None
        tags, self._batch_tags = self._batch_tags, None
        if batch is None:  # defensive: a forward hook without its pre-hook
            return
        self._commit(batch, tags)

    def _drop_batch(self, module: nn.Module, args, output) -> None:
        # After _end_batch on success (nothing left to drop); alone when the forward raised:
        # the failed forward's records and tags go, and a DGC layer called on its own later
        # finds no open batch to write into.
        if not _PAUSED.get():
            self._batch = self._batch_tags = None

    # ---- storage ----------------------------------------------------------------------------

    def _commit(self, batch: dict[str, dict], tags) -> None:
        """Check one forward's records and store them (in the reservoir's slots if bounded)."""
        ran = [n for n in self._layers if n in batch]  # named_modules order
        if not ran:
            raise RuntimeError("no DGC layer ran during this forward of the recorded model")
        if self._names and ran != self._names:
            missing = [n for n in self._names if n not in batch]
            new = [n for n in ran if n not in self._names]
            raise RuntimeError(
                f"this forward ran other DGC layers than the first recorded one (missing "
                f"{missing}, new {new}); every layer must see every recorded sample"
            )
        sizes = {n: batch[n]["n"] for n in ran}
        b = next(iter(sizes.values()))
        if any(s != b for s in sizes.values()):
            raise RuntimeError(f"DGC layers saw different batch sizes in one forward: {sizes}")
        labels, ids = tags if tags is not None else (None, None)
        for what, values in (("labels", labels), ("ids", ids)):
            if values is not None and len(values) != b:
                raise ValueError(
                    f"tag({what}=...) has {len(values)} entries but the forward it tags had "
                    f"{b} samples"
                )

        if not self._names:
            self._names = ran
        for name in ran:
            self._note_layer(name, batch[name])

        seen = self.samples_seen + np.arange(b, dtype=np.int64)  # positions in the stream
        columns = {
            "labels": np.full(b, -1, dtype=np.int64) if labels is None else labels,
            "ids": seen if ids is None else ids,
        }
        if self.max_samples is not None:
            columns["seen"] = seen
        for name in ran:
            for kind, values in batch[name]["records"].items():
                columns[(kind, name)] = values

        if self.max_samples is None:
            self._resize(self._rows + b, grow=True)
            for key, values in columns.items():
                self._columns[key][self._rows : self._rows + b] = values
            self._rows += b
        else:
            slots, rows = self._reservoir_slots(b)
            if len(slots):
                self._resize(max(self._rows, int(slots.max()) + 1), grow=True)
                for key, values in columns.items():
                    self._columns[key][slots] = values[rows]
                self._rows = max(self._rows, int(slots.max()) + 1)
                if self._ordered and self.samples_seen + b > self.max_samples:
                    self._ordered = False  # a slot was reused (or may have been)
        self.samples_seen += b
        self._order_cache = None

    def _reservoir_slots(self, b: int) -> tuple[np.ndarray, np.ndarray]:
        """Algorithm R over one batch: which reservoir slot each kept batch row goes to.

        Sample number i of the stream (0-based) fills slot i while i < M; after that it replaces
        slot r, r uniform in [0, i], if r < M: every sample seen is kept with probability M / n.

        Returns:
            slots, rows: int64 arrays, batch row ``rows[j]`` goes to slot ``slots[j]``.
        """
        m = self.max_samples
        stream = self.samples_seen + np.arange(b, dtype=np.int64)
        slots = stream.copy()
        full = stream >= m
        if full.any():
            draws = self._rng.integers(0, stream[full] + 1)  # uniform in [0, i] per sample
            slots[full] = np.where(draws < m, draws, -1)
        rows = np.flatnonzero(slots >= 0)
        slots = slots[rows]
        # Algorithm R is sequential: of the rows that land on the same slot, the last one wins.
        slots, last = np.unique(slots[::-1], return_index=True)
        return slots, rows[::-1][last]

    def _resize(self, rows: int, grow: bool = False) -> None:
        """Make every column hold ``rows`` rows; ``grow`` doubles instead, capped at M."""
        if not self._columns:
            return
        capacity = len(self._columns["labels"])
        if grow:
            if rows <= capacity:
                return
            rows = max(rows, 2 * capacity)
            if self.max_samples is not None:
                rows = min(rows, self.max_samples)
        if rows == capacity:
            return
        for key, col in self._columns.items():
            new = np.empty((rows, *col.shape[1:]), dtype=col.dtype)
            n = min(rows, self._rows)
            new[:n] = col[:n]
            self._columns[key] = new

    def _note_layer(self, name: str, seen: dict) -> None:
        """Store the layer's info at its first forward; warn once if a later one differs."""
        if name not in self._info:
            self._info[name] = seen["info"]
            if "connectivity" in seen:
                self._static[name] = seen["connectivity"]
            for key, values in seen["records"].items():
                # Allocated at the first forward, when the shapes are known; grown by _resize.
                self._columns[(key, name)] = np.empty((0, *values.shape[1:]), values.dtype)
            for key in ("labels", "ids") + (("seen",) if self.max_samples is not None else ()):
                self._columns.setdefault(key, np.empty(0, dtype=np.int64))
            return
        info = self._info[name]
        if name not in self._changed and info != seen["info"]:
            self._changed.add(name)
            changed = {k: (info[k], v) for k, v in seen["info"].items() if info.get(k) != v}
            now = ", ".join(f"{k}={new}" for k, (_, new) in changed.items())
            before = ", ".join(f"{k}={old}" for k, (old, _) in changed.items())
            warnings.warn(
                f"DGC layer {name!r} ran with {now} after {before} earlier in this recording; "
                f"layer_info keeps the first values",
                stacklevel=4,
            )

    def _order(self) -> np.ndarray | None:
        """Row order that sorts the kept samples by when they were seen (None: already)."""
        if self._ordered:
            return None
        if self._order_cache is None:
            self._order_cache = np.argsort(self._columns["seen"][: self._rows], kind="stable")
        return self._order_cache

    def _column(self, key) -> np.ndarray:
        """The kept rows of one column, in stream order.

        Without a reservoir a view: later forwards only append rows. A reservoir overwrites
        rows in place, so it hands out copies.
        """
        if key not in self._columns:  # nothing recorded yet
            return np.empty(0, dtype=np.int64)
        col = self._columns[key][: self._rows]
        if self.max_samples is None:
            return col
        order = self._order()
        return col.copy() if order is None else col[order]

    # ---- the Recording storage, read from the columns --------------------------------------

    @property
    def _packed(self) -> Mapping[str, np.ndarray]:
        return _LayerColumns(self, _SEL, self._names)

    @property
    def _saliencies(self) -> Mapping[str, np.ndarray]:
        return _LayerColumns(self, _SAL, self._names_with(_SAL)) if self.saliency else {}

    @property
    def _activation_max(self) -> Mapping[str, np.ndarray]:
        return _LayerColumns(self, _ACT, self._names) if self.activations else {}

    @property
    def _labels(self) -> np.ndarray:
        return self._column("labels")

    @property
    def _ids(self) -> np.ndarray:
        return self._column("ids")

    def _names_with(self, kind: str) -> list[str]:
        """The recorded layers that have a column of ``kind`` (saliencies: DGC layers)."""
        return [n for n in self._names if (kind, n) in self._columns]

    @property
    def nbytes(self) -> int:
        """Bytes of the arrays this recorder holds (inside ``with``, with room for more rows)."""
        columns = sum(col.nbytes for col in self._columns.values())
        return columns + sum(a.nbytes for a in self._static.values())

    def __repr__(self) -> str:
        state = "recording" if self.recording else "stopped"
        kept = f"{len(self)} samples"
        if self.max_samples is not None:
            kept += f" of {self.samples_seen} seen (max_samples={self.max_samples})"
        return f"Recorder({kept}, {len(self._names)} layers, {state})"


class _LayerColumns(Mapping):
    """Layer name -> one kind of a recorder's records, read on access (no copy up front).

    A static layer's selections are its packed connectivity, (heads, bytes), stored once.
    """

    def __init__(self, recorder: Recorder, kind: str, names: list[str]) -> None:
        self._recorder, self._kind, self._names = recorder, kind, names

    def __getitem__(self, name: str) -> np.ndarray:
        if name not in self._names:
            raise KeyError(name)
        if self._kind == _SEL and name in self._recorder._static:
            return self._recorder._static[name]
        return self._recorder._column((self._kind, name))

    def __contains__(self, name) -> bool:
        return name in self._names

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._names))

    def __len__(self) -> int:
        return len(self._names)
