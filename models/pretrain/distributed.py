"""CP across workers: every rank's relation representations gathered (differentiably) into one contrastive batch.

With ``gather_negatives`` the relation representations of every worker's micro-batch are all-gathered
with a differentiable all-gather before the InfoNCE loss, so each sentence is contrasted with the
``workers x micro_batch`` pairs of that micro-step (the "global micro-batch"); gradient accumulation
then averages ``accum`` such losses. The contrastive batch is therefore ``workers x micro_batch`` pairs,
and equals the paper's batch only when ``accum == 1``. The loss is computed identically on every rank;
the all-gather's backward sums the ranks' gradients and DDP averages them, which together give exactly
the gradient of that one loss. Outside ``torch.distributed`` everything here is the identity.
"""
from __future__ import annotations

import warnings

import torch


def rows_per_worker(rows: int) -> list[int] | None:
    """Every rank's row count (one tiny all-gather), or None outside torch.distributed.

    A CP batch can end short on one rank (the sampler ran out of unused sentences in every
    relation: ``pairs_skipped``), so ranks may hold different numbers of pairs.
    The counts are host integers, exchanged over gloo (a gloo group beside NCCL's, made once), so
    reading them never waits for the GPU's queue.
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return None
    group = None
    if dist.get_backend() != "gloo":
        world = id(dist.group.WORLD)
        if world not in _HOST_GROUP:  # every rank reaches its first CP step together: a collective call
            _HOST_GROUP.clear()
            _HOST_GROUP[world] = dist.new_group(backend="gloo")
        group = _HOST_GROUP[world]
    mine = torch.tensor([rows], dtype=torch.int64)
    counts = [torch.zeros_like(mine) for _ in range(dist.get_world_size())]
    dist.all_gather(counts, mine, group=group)
    return [int(c) for c in counts]


_HOST_GROUP: dict = {}  # default group's id -> the gloo group for host-side counts (NCCL runs)


def gather_across_workers(tensor: torch.Tensor, differentiable: bool = True,
                          sizes: list[int] | None = None) -> torch.Tensor:
    """Concatenate ``tensor`` from every rank along dim 0, in rank order (identity outside torch.distributed).

    ``sizes`` are the ranks' row counts (:func:`rows_per_worker`); when they differ, each rank pads to
    the largest (collectives need equal shapes) and the padding is cut off after the gather.
    ``differentiable`` keeps the autograd graph through the gathered copies (their gradients are
    summed back onto each rank's rows).
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return tensor
    sizes = sizes if sizes is not None else rows_per_worker(tensor.size(0))
    longest = max(sizes)
    padded = tensor.contiguous()
    if tensor.size(0) < longest:
        filler = tensor.new_zeros((longest - tensor.size(0), *tensor.shape[1:]))
        padded = torch.cat([padded, filler], dim=0)
    if differentiable:
        from torch.distributed.nn.functional import all_gather

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # deprecated alias, still the documented API
            parts = all_gather(padded)
    else:
        parts = [torch.empty_like(padded) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, padded)
    return torch.cat([part[:n] for part, n in zip(parts, sizes)], dim=0)


def split_pairs(t: torch.Tensor, n_pairs: int) -> tuple[torch.Tensor, torch.Tensor]:
    return t[:n_pairs], t[n_pairs:]


def contrastive_reps(
    reps: torch.Tensor, relation_ids: torch.Tensor, n_pairs: int, gather: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reorder to the objective's layout (all firsts, then all seconds) over the GLOBAL batch.

    Each rank holds ``[a_0..a_{P-1}, b_0..b_{P-1}]``; after gathering, firsts of all ranks come
    before seconds of all ranks, so pair ``k`` of the global batch is ``(k, k + total pairs)``
    (ranks may hold different numbers of pairs).
    """
    a, b = split_pairs(reps, n_pairs)
    ra, rb = split_pairs(relation_ids, n_pairs)
    if gather:
        sizes = rows_per_worker(n_pairs)  # once per step: a rank's batch may have ended short
        a, b = gather_across_workers(a, sizes=sizes), gather_across_workers(b, sizes=sizes)
        ra, rb = gather_across_workers(ra, False, sizes), gather_across_workers(rb, False, sizes)
    return torch.cat([a, b]), torch.cat([ra, rb])


__all__ = ["rows_per_worker", "gather_across_workers", "split_pairs", "contrastive_reps"]
