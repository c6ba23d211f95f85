"""``monolith-serving export-demo``: a small, deterministic model in Monolith's export layout.

What it writes under ``--out``::

    ps_<i>/<version>/assets/MonolithHashTable_<table>_<i>-<j>-of-<m>   rows with fid mod num_ps == i
    entry/<version>/serving_spec.json                                  features -> tables, pooling, MLP
    entry/<version>/dense/layer<k>_{w,b}.npy                           MLP weights
    dense_0/<version>/dense_spec.json, dense/layer<k>_{w,b}.npy        with --dense_alone: the MLP moves here
                                                                       (the entry's spec says "remote")

Table rows are keyed by v2 fids ``slot << 48 | k`` for k in [0, rows) of every slot that uses the
table, so clients can make matching requests without reading the dumps. With ``--instance_fid_v1 keep`` they
are keyed by v1 fids ``slot << 54 | k`` instead (a Monolith model without fid-v2 features, whose Instance
parser keeps v1 fids), every second table's features sit on slots from 512 up (so their fids have bit 63 set:
negative int64) and the spec says ``"instance_fid_v1": "keep"``. With ``--heads ctr,cvr`` the last layer has one
sigmoid column per head and the spec's ``outputs`` name them (a multi-task model). Everything derives from
``--seed``: the same flags give byte-identical files.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from monolith_serving.core.cli_flags import add_flag
from monolith_serving.core.dense_spec import DenseModelSpec, write_dense_model_spec
from monolith_serving.core.errors import InvalidArgumentError
from monolith_serving.core.fid_bits import FID_V1_SLOT_SHIFT, FID_V1_SLOTS, FID_V2_SLOT_SHIFT
from monolith_serving.core.hash_table_dump import write_dump
from monolith_serving.core.serving_spec import (
    DENSE_SUB_MODEL,
    DenseBackend,
    DenseInputSpec,
    DenseSpec,
    FeatureSpec,
    InstanceFidV1,
    LayerSpec,
    OutputSpec,
    Pooling,
    ServingSpec,
    TableSpec,
    write_serving_spec,
)
from monolith_serving.core.sharding import shard_of

logger = logging.getLogger(__name__)

DEFAULT_VERSION = 1
DEFAULT_TABLES = (("user", 8), ("item", 12))
# With v1 keys, every second table's slots move up by this much: v1 slots from 512 set bit 63 of the fid.
V1_HIGH_SLOTS = FID_V1_SLOTS // 2
FEATURES_PER_TABLE = 3


@dataclass(frozen=True)
class DemoOptions:
    out: Path
    num_ps: int = 2
    rows: int = 1000
    tables: tuple[tuple[str, int], ...] = DEFAULT_TABLES
    version: int = DEFAULT_VERSION
    seed: int = 7
    files_per_partition: int = 2
    hidden: tuple[int, ...] = (16, 8)
    dense_alone: bool = False  # the MLP goes to dense_0/<version>/ and the entry calls a dense server
    instance_fid_v1: InstanceFidV1 = InstanceFidV1.TO_V2  # KEEP: tables keyed by v1 fids
    heads: tuple[str, ...] = ()  # one output per head, one column each; empty: the single output "scores"


def _last_width(options: DemoOptions) -> int:
    return len(options.heads) if options.heads else 1


def _demo_layers(options: DemoOptions) -> tuple[LayerSpec, ...]:
    widths = [*options.hidden, _last_width(options)]
    return tuple(
        LayerSpec(f"dense/layer{k}_w.npy", f"dense/layer{k}_b.npy", "sigmoid" if k == len(widths) - 1 else "relu")
        for k in range(len(widths))
    )


def _first_slot(options: DemoOptions, table_index: int) -> int:
    slot = 1 + FEATURES_PER_TABLE * table_index
    if options.instance_fid_v1 is InstanceFidV1.KEEP and table_index % 2 == 1:
        slot += V1_HIGH_SLOTS
    return slot


def demo_spec(options: DemoOptions) -> ServingSpec:
    """The demo's features: one sum-, one mean- and one firstn-pooled feature per table, plus 2 floats."""
    tables = tuple(TableSpec(name, dim) for name, dim in options.tables)
    features = []
    for table_index, table in enumerate(tables):
        slot = _first_slot(options, table_index)
        features.append(FeatureSpec(f"{table.name}_id", slot, table.name, Pooling.SUM))
        features.append(FeatureSpec(f"{table.name}_hist", slot + 1, table.name, Pooling.MEAN))
        features.append(FeatureSpec(f"{table.name}_recent", slot + 2, table.name, Pooling.FIRSTN, first_n=2))
    dense_inputs = (DenseInputSpec("ctx", 2),)
    dense = (
        DenseSpec(DenseBackend.REMOTE, sub_model=DENSE_SUB_MODEL)
        if options.dense_alone
        else DenseSpec(DenseBackend.NUMPY, layers=_demo_layers(options))
    )
    return ServingSpec(
        model_name="demo",
        num_ps=options.num_ps,
        tables=tables,
        features=tuple(features),
        dense_inputs=dense_inputs,
        dense=dense,
        instance_fid_v1=options.instance_fid_v1,
        outputs=tuple(OutputSpec(head, 1) for head in options.heads),
    )


def table_fids(spec: ServingSpec, table: str, rows: int) -> npt.NDArray[np.int64]:
    """Every fid the demo stores for ``table``: ``slot << 48 | k`` for each slot mapped to it (``slot << 54 | k``,
    as int64, when the spec keeps v1 fids)."""
    slots = sorted({f.slot for f in spec.features if f.table == table})
    shift = np.uint64(FID_V1_SLOT_SHIFT if spec.instance_fid_v1 is InstanceFidV1.KEEP else FID_V2_SLOT_SHIFT)
    ks = np.arange(rows, dtype=np.uint64)
    return np.concatenate([(np.uint64(s) << shift) | ks for s in slots]).view(np.int64)


def _table_values(seed: int, table_index: int, n: int, dim: int) -> npt.NDArray[np.float32]:
    rng = np.random.default_rng([seed, table_index])
    return (rng.standard_normal((n, dim)) * 0.5).astype(np.float32)


def write_demo(options: DemoOptions) -> ServingSpec:
    """Writes the demo export and returns its serving spec."""
    if options.num_ps < 1:
        raise InvalidArgumentError("--num_ps must be at least 1")
    if options.rows < 1:
        raise InvalidArgumentError("--rows must be at least 1")
    spec = demo_spec(options)
    top_slot = max(f.slot for f in spec.features)
    if options.instance_fid_v1 is InstanceFidV1.KEEP and top_slot >= FID_V1_SLOTS:
        raise InvalidArgumentError(
            f"--tables: {len(spec.tables)} tables need slot {top_slot}, past the last v1 slot {FID_V1_SLOTS - 1} "
            "(--instance_fid_v1 keep)"
        )
    version = str(options.version)
    m = options.files_per_partition
    for table_index, table in enumerate(spec.tables):
        fids = table_fids(spec, table.name, options.rows)
        values = _table_values(options.seed, table_index, len(fids), table.dim)
        partition = shard_of(fids, options.num_ps)
        for i in range(options.num_ps):
            assets = options.out / f"ps_{i}" / version / "assets"
            assets.mkdir(parents=True, exist_ok=True)
            mine = np.flatnonzero(partition == i)
            for j in range(m):
                part = mine[j::m]
                name = f"MonolithHashTable_{table.name}_{i}-{j:05d}-of-{m:05d}"
                write_dump(assets / name, fids[part], values[part])
    entry_dir = options.out / "entry" / version
    entry_dir.mkdir(parents=True, exist_ok=True)
    # The same weights either way, so a dense_alone export scores exactly like the plain one.
    layers = _demo_layers(options)
    mlp_dir = options.out / DENSE_SUB_MODEL / version if options.dense_alone else entry_dir
    (mlp_dir / "dense").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([options.seed, 1_000_003])
    width = spec.input_width
    for layer, out_width in zip(layers, [*options.hidden, _last_width(options)], strict=True):
        weight = (rng.standard_normal((width, out_width)) / np.sqrt(width)).astype(np.float32)
        bias = (rng.standard_normal(out_width) * 0.1).astype(np.float32)
        np.save(mlp_dir / layer.weight, weight, allow_pickle=False)
        np.save(mlp_dir / layer.bias, bias, allow_pickle=False)
        width = out_width
    if options.dense_alone:
        dense = DenseModelSpec(spec.input_width, DenseSpec(DenseBackend.NUMPY, layers=layers), spec.output_name)
        write_dense_model_spec(mlp_dir, dense)
    write_serving_spec(entry_dir, spec)
    return spec


def _parse_tables(text: str) -> tuple[tuple[str, int], ...]:
    tables = []
    for item in text.split(","):
        name, _, dim = item.partition(":")
        if not name or not dim.isdigit() or int(dim) <= 0:
            raise argparse.ArgumentTypeError(f"--tables item {item!r} is not NAME:DIM")
        tables.append((name, int(dim)))
    return tuple(tables)


def _parse_heads(text: str) -> tuple[str, ...]:
    heads = tuple(text.split(","))
    if any(not head for head in heads) or len(set(heads)) != len(heads):
        raise argparse.ArgumentTypeError(f"--heads {text!r} is not a comma-separated list of distinct names")
    return heads


def configure(parser: argparse.ArgumentParser) -> None:
    add_flag(parser, "--out", type=Path, required=True, help="export base folder to write")
    add_flag(parser, "--num_ps", type=int, default=2, help="number of PS shards (default %(default)s)")
    add_flag(parser, "--rows", type=int, default=1000, help="rows per slot and table (default %(default)s)")
    add_flag(parser, "--dim", type=int, default=None, help="use this dim for every table")
    add_flag(
        parser,
        "--tables",
        type=_parse_tables,
        default=DEFAULT_TABLES,
        help="comma-separated NAME:DIM list (default user:8,item:12)",
    )
    add_flag(parser, "--version", type=int, default=DEFAULT_VERSION, help="version folder (default %(default)s)")
    add_flag(parser, "--seed", type=int, default=7, help="random seed (default %(default)s)")
    add_flag(
        parser,
        "--dense_alone",
        action="store_true",
        help="also write dense_0/<version>/ (the MLP, for a separate dense server); the entry's spec says remote",
    )
    add_flag(
        parser,
        "--instance_fid_v1",
        choices=[c.value for c in InstanceFidV1],
        default=InstanceFidV1.TO_V2.value,
        help="keep: key the tables by v1 fids (slot << 54 | k) and say so in the spec, every second table's "
        "features on slots from 512 (default %(default)s: v2 fids)",
    )
    add_flag(
        parser,
        "--heads",
        type=_parse_heads,
        default=(),
        help="comma-separated output names, e.g. ctr,cvr: a multi-task model whose last layer has one sigmoid "
        "column per head, each its own output (default: one output, scores)",
    )


def run(args: argparse.Namespace) -> int:
    tables: Sequence[tuple[str, int]] = args.tables
    if args.dim is not None:
        tables = tuple((name, args.dim) for name, _ in tables)
    options = DemoOptions(
        out=args.out,
        num_ps=args.num_ps,
        rows=args.rows,
        tables=tuple(tables),
        version=args.version,
        seed=args.seed,
        dense_alone=args.dense_alone,
        instance_fid_v1=InstanceFidV1(args.instance_fid_v1),
        heads=args.heads,
    )
    try:
        spec = write_demo(options)
    except InvalidArgumentError as error:  # flags that cannot make a demo: a usage error, as argparse's
        logger.error("%s", error.message)
        return 2
    print(
        f"wrote demo model {spec.model_name!r} version {options.version} with {options.num_ps} PS shards "
        f"to {options.out}"
    )
    return 0
