"""Fully sharded data parallel training (FSDP2: `torch.distributed.fsdp.fully_shard`), for models too big for one GPU.

DDP (distributed.py) keeps a whole copy of the weights, the gradients and AdamW's two moments in every
process: for SVD's 1.5B-parameter UNet in fp32 that is 1.5e9 x (4 + 4 + 8) bytes = 24 GB before a single
activation, more than a 24 GB GPU holds. FSDP splits each of those four tensors into `world_size` shards, one
per process, and all-gathers a block's weights just before it runs (forward and backward), reduce-scatters
its gradients after: each process keeps 1/N of the 24 GB plus one block's full weights at a time.
(Zhao et al. 2023, "PyTorch FSDP"; the ZeRO-3 idea of Rajbhandari et al. 2020.)

`python -m torch.distributed.run --nproc_per_node=N -m minisvd train finetune --fsdp ...` turns it on.
What the engine does differently (engine.py):

    shard_model        every unit the stage names (`Stage.fsdp_units`, default: each child module with
                       parameters) is sharded on its own, then the root: one all-gather per unit
    gradient sync      accumulation steps skip the reduce-scatter (`set_requires_gradient_sync`), as DDP's
                       `no_sync`
    checkpoints        the full (unsharded) weights and optimizer state are gathered to the CPU on every
                       process (a collective) and rank 0 writes them in the same files as a 1-process run,
                       AdamW's state keyed by parameter index: a checkpoint of an FSDP run resumes on one
                       process and the other way round
    the final model    rank 0 keeps an unsharded CPU copy made before sharding and loads the gathered
                       weights into it for `Stage.save_final`
    EMA                not kept (it would need a second sharded copy): --fsdp needs --no-ema (finetune's
                       default)
"""

from __future__ import annotations

import torch
from torch import nn


def shard_model(model: nn.Module, units: list[nn.Module]) -> nn.Module:
    """Shard `model` in place over all processes (cpu: gloo, cuda: nccl): each unit, then the root."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    device = next(model.parameters()).device
    mesh = init_device_mesh(device.type, (torch.distributed.get_world_size(),))
    for unit in units:
        fully_shard(unit, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def default_units(model: nn.Module) -> list[nn.Module]:
    """Each direct child that holds parameters; module lists (e.g. a UNet's down_blocks) one entry each."""
    units = []
    for child in model.children():
        if isinstance(child, nn.ModuleList):
            units += [m for m in child if any(True for _ in m.parameters())]
        elif any(True for _ in child.parameters()):
            units.append(child)
    return units


def _options():
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, cpu_offload=True)


def trainable_names(model: nn.Module) -> list[str]:
    """Names of the parameters the optimizer holds, in its order (the engine's `params`)."""
    return [n for n, p in model.named_parameters() if p.requires_grad]


def gather_model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The full state dict on rank 0's CPU ({} on the other ranks; a collective: call it on all ranks)."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    return {k: v.contiguous() for k, v in get_model_state_dict(model, options=_options()).items()}


def gather_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """The full optimizer state dict on rank 0 ({} on the others), keyed by parameter index as a 1-process
    optimizer's (a collective)."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    full = get_optimizer_state_dict(model, optimizer, options=_options())
    if not full:
        return {}
    index = {name: i for i, name in enumerate(trainable_names(model))}
    groups = [{**g, "params": [index[n] for n in g["params"]]} for g in full["param_groups"]]
    return {"state": {index[n]: s for n, s in full["state"].items()}, "param_groups": groups}


def load_full_state(
    model: nn.Module, optimizer: torch.optim.Optimizer, model_sd: dict, optim_sd: dict
) -> None:
    """Put a full (unsharded) checkpoint into the sharded model and optimizer (every process passes it)."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    names = trainable_names(model)
    options = StateDictOptions(full_state_dict=True)
    set_model_state_dict(model, model_sd, options=options)
    by_name = {
        "state": {names[int(i)]: s for i, s in optim_sd["state"].items()},
        "param_groups": [
            {**g, "params": [names[int(i)] for i in g["params"]]} for g in optim_sd["param_groups"]
        ],
    }
    # parameters that never had a gradient (one-token cross-attention's to_q / to_k) have no AdamW state, in a
    # 1-process checkpoint too: not strict about those
    set_optimizer_state_dict(
        model, optimizer, by_name, options=StateDictOptions(full_state_dict=True, strict=False)
    )


def full_norm(norm) -> float:
    """`clip_grad_norm_`'s result as a float: a DTensor under FSDP, a tensor otherwise."""
    return float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)
