"""The PS's transport-free core: lookup and parameter sync against the hosted versions.

The gRPC servicers only translate protobufs and call this. All methods are synchronous and run on the event
loop; none awaits in the middle, which is what makes each request see exactly one version and each sync
request apply atomically (see table_store).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from monolith_serving.core.errors import (
    FailedPreconditionError,
    InvalidArgumentError,
    MonolithServingError,
    NotFoundError,
)
from monolith_serving.core.predict_signature import DEFAULT_SIGNATURE
from monolith_serving.ps.config import DEFAULT_MAX_PENDING_SYNC_BYTES
from monolith_serving.ps.inputs import (
    ShardCheck,
    TensorMap,
    check_request_size,
    decode_fids,
    decode_ragged_ids,
    element_count,
)
from monolith_serving.ps.metrics import PsMetrics
from monolith_serving.ps.sync import (
    HASHTABLE_ASSIGN,
    TableUpdate,
    check_raw_assign_signature,
    decode_hashtable_assign,
    decode_raw_assign,
    sync_kind,
)
from monolith_serving.ps.table_store import TableSet
from monolith_serving.ps.version_manager import ServableVersion, SubModel, VersionStateManager

logger = logging.getLogger(__name__)

LOOKUP = "lookup"
LOOKUP_ALIASES = frozenset({LOOKUP, "", DEFAULT_SIGNATURE})
ID_SUFFIX = "_id"
VALUE_SUFFIX = "_value"
RAW_LOOKUP = "raw_lookup"
"""Monolith's lookup of a multi-hash table (its default, ``use_native_multi_hash_table``), see ``raw_lookup``."""
RAW_LOOKUP_INPUTS = ("id", "id_split")
RAW_LOOKUP_OUTPUT = "flat_emb"


def lookup_names(input_name: str, tables: TableSet, model: str) -> tuple[str, str]:
    """``(table, output)`` of a ``lookup`` input: ours ``<table>_id`` -> ``<table>_value``, else Monolith's
    ``<table>`` -> ``<table>`` (its PS signature is keyed by the table names, input and output alike). Ours is
    tried first: an input ``a_id`` is table ``a`` when the version has both ``a`` and ``a_id``."""
    if input_name.endswith(ID_SUFFIX):
        table_name = input_name[: -len(ID_SUFFIX)]
        if table_name in tables.tables:
            return table_name, table_name + VALUE_SUFFIX
        if input_name not in tables.tables:
            raise NotFoundError(f"input {input_name!r}: table {table_name!r} not found in model {model!r}")
    elif input_name not in tables.tables:
        raise InvalidArgumentError(
            f"input {input_name!r}: not a table of model {model!r}; lookup inputs are named <table>_id (or <table>)"
        )
    return input_name, input_name


def _require_dim(tables: TableSet, table_name: str, fids: int, input_name: str) -> None:
    """Monolith's entry cuts the reply by the dims of its own config, so a table whose width this shard does not
    know (no rows here yet, docs/ps.md) cannot be answered to it; our entry reads a ``[n, 0]`` answer itself."""
    if fids and not tables.tables[table_name].dim:
        raise FailedPreconditionError(
            f"input {input_name!r}: table {table_name!r} has no rows on this shard yet (its export partition was "
            f"empty), so its dim is unknown and its {fids} fid(s) cannot be answered in rows of that dim"
        )


@dataclass(frozen=True)
class ModelRef:
    """What a request asks for: model name plus an optional pinned version or version label."""

    name: str
    version: int | None = None
    label: str = ""


@dataclass(frozen=True)
class LookupResult:
    version: int
    outputs: dict[str, npt.NDArray[np.float32]]


class PsCore:
    def __init__(
        self,
        *,
        versions: VersionStateManager,
        metrics: PsMetrics,
        num_ps: int,
        max_fids_per_request: int,
        max_pending_sync_bytes: int = DEFAULT_MAX_PENDING_SYNC_BYTES,
    ) -> None:
        self.versions = versions
        self._metrics = metrics
        self._num_ps = num_ps
        self._max_fids = max_fids_per_request
        self._max_pending_bytes = max_pending_sync_bytes
        # Resolved children, owned by the metrics (which forget a removed model's); bound here for the hot path.
        self._lookup_requests = metrics.lookup_requests_of
        self._lookup_fids = metrics.lookup_fids_of
        self._lookup_missing_fids = metrics.lookup_missing_fids_of

    @property
    def num_ps(self) -> int:
        """--num_ps (0: not given; fids are not checked against a shard)."""
        return self._num_ps

    def shard_check(self, model: SubModel) -> ShardCheck:
        return ShardCheck(self._num_ps, model.config.partition)

    def lookup(self, ref: ModelRef, inputs: TensorMap, output_filter: Sequence[str] = ()) -> LookupResult:
        """``<table>_id`` int64[n] -> ``<table>_value`` float32[n, dim]; unknown fids give zero rows.

        Monolith's entry names the input and the output after the table itself (``<table>`` -> ``<table>``,
        see ``lookup_names``); both spellings may be mixed in one request."""
        model, servable = self.versions.resolve(ref.name, ref.version, ref.label)
        tables = servable.require_loaded()
        check_request_size(inputs, self._max_fids, what="fids")
        shard = self.shard_check(model)
        decoded = []
        named: dict[str, str] = {}  # output -> the input asking for it
        for name, proto in inputs.items():
            table_name, out_name = lookup_names(name, tables, ref.name)
            if out_name in named:
                raise InvalidArgumentError(
                    f"input {name!r}: its output {out_name!r} is also the output of input {named[out_name]!r}"
                )
            named[out_name] = name
            fids = decode_fids(proto, name)
            shard.check(fids, name)
            if out_name == table_name:
                _require_dim(tables, table_name, len(fids), name)
            decoded.append((table_name, out_name, fids))
        wanted = set(output_filter)
        if wanted:  # the entry never sends one: no per-request set work then
            unknown = sorted(wanted - set(named))
            if unknown:
                raise InvalidArgumentError(f"output_filter {unknown[0]!r} is not an output of this request")
        outputs = {}
        for table_name, out_name, fids in decoded:
            if wanted and out_name not in wanted:
                continue
            outputs[out_name], missing = tables.tables[table_name].lookup(fids)
            self._count_lookup(ref.name, table_name, len(fids), missing)
        self._lookup_requests[(ref.name,)].inc()
        return LookupResult(servable.version, outputs)

    def raw_lookup(self, ref: ModelRef, inputs: TensorMap, output_filter: Sequence[str] = ()) -> LookupResult:
        """Monolith's multi-hash-table lookup: ``id`` int64[total] + ``id_split`` int64[tables + 1] (each table's
        ids, tables in the model's order) -> ``flat_emb`` float32[sum n_t * dim_t], every table's rows flattened
        one table after the other; unknown fids give zero rows."""
        model, servable = self.versions.resolve(ref.name, ref.version, ref.label)
        tables = servable.require_loaded()
        for required in RAW_LOOKUP_INPUTS:
            if required not in inputs:
                raise InvalidArgumentError(f"input {required!r} is missing ({RAW_LOOKUP} needs id and id_split)")
        extra = sorted(set(inputs) - set(RAW_LOOKUP_INPUTS))
        if extra:
            raise InvalidArgumentError(f"input {extra[0]!r}: {RAW_LOOKUP} takes only id and id_split")
        unknown = sorted(set(output_filter) - {RAW_LOOKUP_OUTPUT})
        if unknown:
            raise InvalidArgumentError(f"output_filter {unknown[0]!r} is not an output of {RAW_LOOKUP}")
        check_request_size({"id": inputs["id"]}, self._max_fids, what="fids")
        order = tables.order
        fids, split = decode_ragged_ids(inputs, len(order), self.shard_check(model))
        counts = np.diff(split).tolist()
        for table_name, count in zip(order, counts, strict=True):
            _require_dim(tables, table_name, count, "id_split")
        ends = np.cumsum([count * tables.tables[t].dim for t, count in zip(order, counts, strict=True)]).tolist()
        flat: npt.NDArray[np.float32] = np.empty(ends[-1] if ends else 0, dtype=np.float32)
        start = 0
        for k, table_name in enumerate(order):
            lo, hi, end = int(split[k]), int(split[k + 1]), ends[k]
            if hi > lo:
                table = tables.tables[table_name]
                missing = table.lookup_into(fids[lo:hi], flat[start:end].reshape(hi - lo, table.dim))
                self._count_lookup(ref.name, table_name, hi - lo, missing)
            start = end
        self._lookup_requests[(ref.name,)].inc()
        return LookupResult(servable.version, {RAW_LOOKUP_OUTPUT: flat})

    def _count_lookup(self, model: str, table: str, fids: int, missing: int) -> None:
        self._lookup_fids[(model, table)].inc(fids)
        if missing:
            self._lookup_missing_fids[(model, table)].inc(missing)

    def sync(self, ref: ModelRef, signature: str, inputs: TensorMap) -> tuple[int, int]:
        """Applies a ``hashtable_assign`` or raw_assign push (``table/raw_assign`` or Monolith's
        ``MonolithMultiHashTable_<k>/raw_assign``, see ``ps.sync``); returns (version served, rows applied).

        The push goes into the newest AVAILABLE version (or the pinned one) and is queued for every version
        loading at that moment, which replays it just before it becomes AVAILABLE. Pushes applied before a load
        started are not carried into the new version: its export replaces them (docs/ps.md). Validated whole
        first: on any error nothing is applied. Metrics count under the signature's kind (``sync_kind``).
        """
        model = self.versions.model(ref.name)
        kind = sync_kind(signature)
        if kind is None:
            raise NotFoundError(f"signature {signature!r} not found")
        id_inputs = [n for n in inputs if n == "id" or n.endswith(ID_SUFFIX)]
        try:
            _, servable = self.versions.resolve(ref.name, ref.version, ref.label)
            tables = servable.require_loaded()
            check_request_size({n: inputs[n] for n in id_inputs}, self._max_fids, what="fids")
            dims = {name: table.dim for name, table in tables.tables.items()}
            shard = self.shard_check(model)
            if kind == HASHTABLE_ASSIGN:
                updates = decode_hashtable_assign(inputs, dims, shard)
            else:
                check_raw_assign_signature(signature, model.config.partition)
                updates = decode_raw_assign(inputs, dims, tables.order, shard)
            for update in updates:
                tables.tables[update.table].check_update(update.fids, update.values)
            loading = model.loading()  # almost always none: then nothing is queued or measured
            size = sum(u.fids.nbytes + u.values.nbytes for u in updates) if loading else 0
        except MonolithServingError:
            self._metrics.sync_updates_rejected_of[(ref.name, kind)].inc(_count_rows(inputs, id_inputs))
            raise
        for update in updates:
            tables.tables[update.table].upsert(update.fids, update.values)
        rows = sum(u.rows for u in updates)
        for servable_loading in loading:
            self._queue_for_replay(ref.name, servable_loading, updates, size, rows)
        self._metrics.sync_updates_applied_of[(ref.name, kind)].inc(rows)
        return servable.version, rows

    def _queue_for_replay(
        self, model: str, servable: ServableVersion, updates: list[TableUpdate], size: int, rows: int
    ) -> None:
        """Queues a push applied to the serving version for a loading one, up to ``max_pending_sync_bytes``: a load
        that never ends (a stalled file system) must not queue a busy trainer's pushes until memory runs out. Past
        it the queue is dropped and nothing more is queued: the new version then serves its export's rows for
        those fids, as Monolith's PS always does (it replays nothing). Refusing the push instead would lose it for
        both versions: Monolith's trainer forgets a key once pushed and never sends a refused push again."""
        if not servable.pending_overflowed and servable.pending_bytes + size <= self._max_pending_bytes:
            servable.pending.append(updates)
            servable.pending_bytes += size
            return
        if not servable.pending_overflowed:
            logger.warning(
                "model %s version %d is loading and its replay queue would pass --max_pending_sync_bytes %d: "
                "dropping it (%d bytes); pushes still reach the serving version, the new one starts from its export",
                model, servable.version, self._max_pending_bytes, servable.pending_bytes,
            )  # fmt: skip
            dropped = sum(u.rows for queued in servable.pending for u in queued)
            self._metrics.sync_rows_not_replayed_of[(model,)].inc(dropped)
            servable.pending, servable.pending_bytes, servable.pending_overflowed = [], 0, True
        self._metrics.sync_rows_not_replayed_of[(model,)].inc(rows)


def replay_updates(tables: TableSet, updates: list[TableUpdate], model: str) -> None:
    """Applies sync updates queued while ``tables`` loaded; updates that no longer fit are skipped, logged."""
    for update in updates:
        table = tables.tables.get(update.table)
        if table is None or not table.fits(update.fids, update.values):
            logger.warning(
                "model %s: dropping %d synced rows of table %r: the new version has no such table of that dim",
                model, update.rows, update.table,
            )  # fmt: skip
            continue
        table.upsert(update.fids, update.values)


def _count_rows(inputs: TensorMap, id_inputs: list[str]) -> int:
    total = 0
    for name in id_inputs:
        try:
            total += element_count(inputs[name], name)
        except MonolithServingError:
            continue
    return total
