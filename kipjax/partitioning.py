"""Device mesh, logical-axis rules and shardings.

Parallelism in kipjax is only a mesh shape plus a table of logical-axis rules. Models name every parameter
dimension and every constrained activation dimension with a *logical* axis (below); the rules map logical
axes to the physical mesh axes `data`, `fsdp` and `tensor`. Changing the parallelism of a run is a gin
binding, never a code change.

Parameter axes:   vocab, embed, mlp, heads, kv (per-head feature), type_vocab, position
Activation axes:  activation_batch, activation_length, activation_embed, activation_mlp, activation_heads,
                  activation_kv, activation_vocab
Activations get their own names so that `embed` (sharded over `fsdp` for parameters) does not collide with
the batch dimension, which also uses `fsdp`.
"""
from __future__ import annotations

import contextlib
import math
from typing import Any, Iterator, Mapping, Sequence

import gin
import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")

LogicalRules = Sequence[tuple[str, str | tuple[str, ...] | None]]

DEFAULT_RULES: tuple[tuple[str, Any], ...] = (
    # parameters
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv", None),
    ("type_vocab", None),
    ("position", None),
    ("codes", None),
    ("relpos_buckets", None),  # T5's relative-position bias table rows
    ("layers", None),  # the stacked-layer axis of scanned layers
    ("lora_rank", None),  # the low-rank dimension of LoRA adapters (small: replicated)
    # activations
    ("activation_batch", ("data", "fsdp")),
    ("activation_length", None),
    ("activation_embed", None),
    ("activation_mlp", "tensor"),
    ("activation_heads", "tensor"),
    ("activation_kv", None),
    ("activation_vocab", "tensor"),
)


@gin.configurable
def logical_axis_rules(rules: LogicalRules | None = None) -> tuple[tuple[str, Any], ...]:
    """The logical-to-mesh rules in force; override in gin with `logical_axis_rules.rules = [...]`."""
    return tuple(tuple(r) for r in (rules if rules is not None else DEFAULT_RULES))


@gin.configurable
def mesh_shape(data: int = -1, fsdp: int = 1, tensor: int = 1) -> dict[str, int]:
    """Mesh axis sizes; exactly one may be -1, meaning 'all remaining devices'.

    The default spreads `data` over every available device, so one config runs unchanged on 1 or 8 devices.
    """
    return {"data": data, "fsdp": fsdp, "tensor": tensor}


def resolve_mesh_shape(shape: Mapping[str, int], num_devices: int) -> tuple[int, ...]:
    """Turns a shape with at most one -1 into concrete sizes whose product is `num_devices`."""
    sizes = [int(shape.get(a, 1)) for a in MESH_AXES]
    unknown = [i for i, s in enumerate(sizes) if s == -1]
    if len(unknown) > 1:
        raise ValueError(f"mesh_shape: at most one axis may be -1, got {dict(zip(MESH_AXES, sizes))}")
    known = math.prod(s for s in sizes if s != -1)
    if known <= 0 or num_devices % known:
        raise ValueError(
            f"mesh_shape {dict(zip(MESH_AXES, sizes))} does not divide the {num_devices} available devices")
    if unknown:
        sizes[unknown[0]] = num_devices // known
    if math.prod(sizes) != num_devices:
        raise ValueError(
            f"mesh_shape {dict(zip(MESH_AXES, sizes))} uses {math.prod(sizes)} devices, "
            f"but {num_devices} are available")
    return tuple(sizes)


def make_mesh(shape: Mapping[str, int] | None = None, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """Builds the (data, fsdp, tensor) mesh over `devices` (default: all devices of all hosts)."""
    devices = list(devices) if devices is not None else jax.devices()
    sizes = resolve_mesh_shape(shape if shape is not None else mesh_shape(), len(devices))
    return Mesh(np.asarray(devices).reshape(sizes), MESH_AXES)


def current_mesh() -> Mesh:
    """The mesh made current by `activate` (the Trainer does so around hooks and evaluation), else one over all
    devices (e.g. `python -m kipjax.evaluate`, which calls `Method.evaluate` outside a Trainer)."""
    mesh = jax.sharding.get_mesh()
    return make_mesh() if mesh.empty else mesh


def logical_to_sharding(logical_specs: Any, mesh: Mesh, rules: LogicalRules, shapes: Any = None) -> Any:
    """Maps a pytree of logical PartitionSpecs (axis names) to NamedShardings on `mesh`.

    With `shapes` (a matching pytree of arrays or ShapeDtypeStructs), a dimension whose size is not divisible
    by its mesh axes is replicated instead: a tiny config (2 heads) then still runs on a wide `tensor` axis; and
    the shardings take the structure of `shapes` (see `_divisible_sharding`), so that they zip with the state
    they place, e.g. into an orbax restore target (`checkpoints.abstract_with_shardings`).
    """
    shardings = nn.logical_to_mesh_sharding(logical_specs, mesh, rules)
    if shapes is None:
        return shardings
    return jax.tree.map(_divisible_sharding, shardings, shapes)


def _divisible_sharding(sharding: NamedSharding, shape: Any) -> Any:
    """`sharding` with each dimension `shape` cannot split replicated. An empty subtree (a frozen boxed param's
    optimizer state: a box around optax's MaskedNode, whose spec is the box's) is returned as it is: the state
    holds no array there, so neither may its shardings."""
    if not hasattr(shape, "shape"):
        return shape
    spec = []
    for dim, axes in zip(shape.shape, tuple(sharding.spec) + (None,) * (len(shape.shape) - len(sharding.spec))):
        names = (axes,) if isinstance(axes, str) else tuple(axes or ())
        ways = math.prod(sharding.mesh.shape[a] for a in names)
        spec.append(axes if dim % ways == 0 else None)
    return NamedSharding(sharding.mesh, PartitionSpec(*spec))


def params_logical_specs(boxed_params: Any) -> Any:
    """Logical PartitionSpecs of a parameter tree created with `nn.with_logical_partitioning`.

    Unboxed leaves (no annotation) get an empty spec, i.e. they are replicated.
    """
    return nn.get_partition_spec(boxed_params)


def fill_boxed(boxed: Any, values: Any) -> Any:
    """`values` (a plain tree of the same structure, e.g. converted pretrained weights) put into the logical-axis
    boxes of `boxed` (what `model.init` returned), each cast to its box's dtype, so the annotations survive."""
    def fill(box: Any, value: Any) -> Any:
        if isinstance(box, nn.Partitioned):
            return box.replace_boxed(jnp.asarray(value, box.value.dtype))
        return jnp.asarray(value, box.dtype)
    return jax.tree.map(fill, boxed, values, is_leaf=lambda x: isinstance(x, nn.Partitioned))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) dimension split over the data-parallel axes, the rest replicated."""
    return NamedSharding(mesh, PartitionSpec(("data", "fsdp")))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def put_replicated(tree: Any, mesh: Mesh) -> Any:
    """Every array of `tree` replicated over `mesh`, also across hosts. Host values (numpy, or jax arrays on
    this host's devices) are placed from each host's own copy, which must be the same on every host; arrays
    already spread over several hosts are resharded on device (no host can read them whole)."""
    sharding = replicated(mesh)

    def put(x: Any) -> jax.Array:
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return jax.jit(lambda y: y, out_shardings=sharding)(x)
        return jax.device_put(np.asarray(x), sharding)

    return jax.tree.map(put, tree)


def data_parallel_size(mesh: Mesh) -> int:
    return mesh.shape["data"] * mesh.shape["fsdp"]


@contextlib.contextmanager
def activate(mesh: Mesh, rules: LogicalRules) -> Iterator[None]:
    """Makes `mesh` and the logical rules current, so `nn.with_logical_constraint` inside models applies."""
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        yield
