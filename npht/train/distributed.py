"""Data-parallel helpers of the trainers (``torchrun --nproc_per_node N -m npht train
identity ...``; see :mod:`npht.train.identity` for how a step on N ranks equals a step on
the combined batch): the process group from torchrun's environment, and the reductions
DDP does not do for us (the codes' sparse gradient, the parameters kept out of DDP, the
error-bound sampler's convergence flag)."""

from __future__ import annotations

import os

import torch

__all__ = ["rank_and_world", "setup_distributed", "reduce_sparse_grad", "reduce_dense_grads", "any_rank"]


def rank_and_world() -> tuple:
    """``(rank, world size)`` of the default process group, ``(0, 1)`` without one."""
    d = torch.distributed
    if d.is_available() and d.is_initialized():
        return d.get_rank(), d.get_world_size()
    return 0, 1


def setup_distributed(device: str = "cpu") -> tuple:
    """Under ``torchrun`` (``WORLD_SIZE`` > 1 in the environment): start the default
    process group if nobody did (backend nccl for a cuda ``device``, gloo otherwise) and,
    for cuda, make ``cuda:LOCAL_RANK`` the current device. Returns ``(device, started)``:
    the device this rank trains on and whether the group was started here (then
    :func:`torch.distributed.destroy_process_group` is the caller's). A plain run returns
    ``(device, False)`` and touches nothing."""
    d = torch.distributed
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or not d.is_available():
        return device, False
    dev = torch.device(device)
    if dev.type == "cuda":
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    if d.is_initialized():
        return device, False
    d.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return device, True


def reduce_sparse_grad(p: torch.nn.Parameter, world: int) -> None:
    """Make ``p.grad`` (sparse COO: the codes' embedding) the mean over the ranks, the
    gradient of the combined batch's loss (each rank's loss is the mean over its items, the
    combined loss the mean over all): all rows of all ranks, summed where they meet, / world.

    Written by hand because DDP does not reduce sparse gradients under nccl (and gloo's
    sparse all-reduce is no help on GPUs), so the embedding is excluded from DDP. The
    ranks' (indices, values) are padded to the largest count and all-gathered."""
    d = torch.distributed
    g = p.grad
    if g is None:
        g = torch.sparse_coo_tensor(torch.zeros(1, 0, dtype=torch.long, device=p.device),
                                    p.new_zeros((0,) + p.shape[1:]), p.shape, check_invariants=False)
    g = g.coalesce()
    idx, val = g._indices(), g._values()
    n = torch.tensor([idx.shape[1]], device=p.device)
    counts = [torch.zeros_like(n) for _ in range(world)]
    d.all_gather(counts, n)
    counts = [int(c) for c in counts]
    m = max(counts)
    pad_i = idx.new_zeros(idx.shape[0], m)
    pad_i[:, :idx.shape[1]] = idx
    pad_v = val.new_zeros((m,) + val.shape[1:])
    pad_v[:val.shape[0]] = val
    all_i = [torch.empty_like(pad_i) for _ in range(world)]
    all_v = [torch.empty_like(pad_v) for _ in range(world)]
    d.all_gather(all_i, pad_i)
    d.all_gather(all_v, pad_v)
    idx = torch.cat([i[:, :c] for i, c in zip(all_i, counts)], 1)
    val = torch.cat([v[:c] for v, c in zip(all_v, counts)], 0) / world
    p.grad = torch.sparse_coo_tensor(idx, val, p.shape, check_invariants=False).coalesce()


def reduce_dense_grads(params, world: int) -> None:
    """Make each ``p.grad`` of ``params`` the mean over the ranks, as DDP does for the
    parameters it reduces (zeros for a rank without one). Every rank calls it at the same
    step: for the density, kept out of DDP (see :class:`IdentityTrainer`), in the stages
    whose loss has the rendered maps."""
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        torch.distributed.all_reduce(p.grad)
        p.grad.div_(world)


def any_rank(flag: torch.Tensor) -> torch.Tensor:
    """``flag`` (a 0-dim int tensor) maxed over the ranks, in place: the error-bound
    sampler's ``reduce_unconverged``, so that every rank runs as many rounds as one process
    sampling the combined batch would (it stops when all rays of all ranks meet eps). The
    sampler makes ``flag`` on the rays' device, the trainer's: CPU under gloo, the rank's
    GPU under nccl. The ranks render at the same steps (``render_maps`` runs in the DDP
    forward of each) at the same resolution, so they call it equally often; nothing renders
    on one rank alone (``save_images`` draws the maps the step rendered)."""
    torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
    return flag
