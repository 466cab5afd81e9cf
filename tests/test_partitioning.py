"""State shardings of a partly frozen model: the optimizer state of a frozen boxed param is a box around optax's
empty MaskedNode, and its shardings must have the state's structure both to place it (jit) and to restore it
(orbax, whose target zips the abstract state with the shardings)."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import linen as nn
from jax.sharding import NamedSharding

from kipjax import checkpoints, optim, partitioning


def boxed_params():
    return {"frozen": nn.Partitioned(jnp.ones((8, 4)), names=("embed", "mlp")),
            "trained": nn.Partitioned(jnp.arange(32.0).reshape(4, 8), names=("mlp", "vocab"))}


def frozen_optimizer():
    """Adam on `trained` only, the mask mapped into the boxes as a method's `trainable_mask` does."""
    return optim.freeze_untrainable(optax.adam(1e-2), lambda params: {
        "frozen": jax.tree.map(lambda _: False, params["frozen"]),
        "trained": jax.tree.map(lambda _: True, params["trained"])})


def test_shardings_of_a_masked_optimizer_state_have_its_structure():
    mesh = partitioning.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    boxed = frozen_optimizer().init(boxed_params())
    state = nn.unbox(boxed)
    assert any(isinstance(x, optax.MaskedNode)
               for x in jax.tree.leaves(state, is_leaf=lambda x: isinstance(x, optax.MaskedNode)))
    shardings = partitioning.logical_to_sharding(nn.get_partition_spec(boxed), mesh, partitioning.DEFAULT_RULES,
                                                 shapes=state)
    assert jax.tree.structure(shardings) == jax.tree.structure(state)
    assert all(isinstance(s, NamedSharding) for s in jax.tree.leaves(shardings))


def test_a_masked_optimizer_state_restores_onto_its_shardings(tmp_path):
    mesh = partitioning.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    optimizer = frozen_optimizer()
    boxed = {"params": boxed_params()}
    boxed["opt_state"] = optimizer.init(boxed["params"])
    state = nn.unbox(boxed)  # one step on, as the trainer updates it: Adam's moments are not zero
    _, state["opt_state"] = optimizer.update(jax.tree.map(jnp.ones_like, state["params"]), state["opt_state"],
                                             state["params"])
    specs = nn.get_partition_spec(boxed)
    shardings = partitioning.logical_to_sharding(specs, mesh, partitioning.DEFAULT_RULES, shapes=state)
    placed = jax.device_put(state, shardings)
    ckpt = checkpoints.Checkpointer(str(tmp_path))
    ckpt.save(1, placed, {}, {})
    restored, _, _ = ckpt.restore(1, checkpoints.abstract_with_shardings(state, shardings), {})
    ckpt.close()
    assert jax.tree.structure(restored) == jax.tree.structure(state)
    for got, want, sharding in zip(jax.tree.leaves(restored), jax.tree.leaves(state), jax.tree.leaves(shardings)):
        np.testing.assert_array_equal(got, want)
        assert got.sharding == sharding
