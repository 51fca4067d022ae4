"""Two gloo ranks splitting a meta-batch end with the same parameters as one process running all of it."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from torch import Tensor, nn
from torch.func import functional_call

from metatts.meta import InnerLR, adapt, make_loss_fn
from metatts.meta import distributed as mdist

META_STEPS = 3
FAST = ("slot",)


class ToySpeakerNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 1))
        self.slot = nn.Parameter(torch.zeros(3))  # the speaker: an input offset, adapted per task

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x + self.slot)


def task(step: int, index: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """A task's support and query sets, fixed by (meta-step, task index) alone -- the same on every rank."""
    g = torch.Generator().manual_seed(1000 * step + index)
    shift = torch.randn(3, generator=g, dtype=torch.float64)
    x = torch.randn(10, 3, generator=g, dtype=torch.float64)
    y = torch.sin(x + shift).sum(dim=1, keepdim=True)
    return x[:5], y[:5], x[5:], y[5:]


def meta_train(n_tasks: int, rank: int, world: int, *, equal_shares: bool, init_seed: int = 0) -> dict[str, Tensor]:
    """``META_STEPS`` second-order Meta-SGD updates with Adam; ranks take ``shard`` of each meta-batch."""
    torch.manual_seed(init_seed)
    model = ToySpeakerNet().double()
    inner_lr = InnerLR({n: p for n, p in model.named_parameters() if n in FAST}, init=0.1, mode="per_tensor").double()
    mdist.broadcast_parameters(model)  # ranks may have built different initial weights: rank 0's win
    mdist.broadcast_parameters(inner_lr)
    opt = torch.optim.Adam(list(model.parameters()) + list(inner_lr.parameters()), lr=0.01)
    for step in range(META_STEPS):
        mine = mdist.shard(range(n_tasks), rank, world)
        # Equal shares: local mean, then average over ranks. Unequal: divide by the global count, then sum.
        scale = 1.0 / len(mine) if equal_shares else 1.0 / n_tasks
        loss = torch.zeros((), dtype=torch.float64)
        for index in mine:
            xs, ys, xq, yq = task(step, index)
            fast = {n: p for n, p in model.named_parameters() if n in FAST}
            support = make_loss_fn(model, None, (xs,), lambda out, y=ys: (out - y).pow(2).mean())
            result = adapt(support, fast, 2, inner_lr.as_dict())
            loss = loss + scale * (functional_call(model, result.fast, (xq,)) - yq).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        mdist.all_reduce_gradients(list(model.parameters()) + list(inner_lr.parameters()), average=equal_shares)
        opt.step()
    return {**{f"model.{n}": p.detach().clone() for n, p in model.named_parameters()},
            **{f"lr.{n}": p.detach().clone() for n, p in inner_lr.named_parameters()}}


def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)  # two ranks share two cores with everything else
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    context = mdist.init_from_env(backend="gloo")
    assert (context.rank, context.world_size, context.distributed) == (rank, world, True)
    assert mdist.is_main() == (rank == 0)
    try:
        # Rank 1 starts from other weights: the broadcast inside meta_train must erase the difference.
        even = meta_train(4, rank, world, equal_shares=True, init_seed=rank)
        uneven = meta_train(3, rank, world, equal_shares=False, init_seed=rank)
        # Gradient present on rank 0 only -> zeros on rank 1 before the average; absent everywhere -> stays None.
        partial, absent = torch.zeros(2, requires_grad=True), torch.zeros(2, requires_grad=True)
        if rank == 0:
            partial.grad = torch.tensor([2.0, 4.0])
        mdist.all_reduce_gradients([partial, absent])
        mean_loss = mdist.all_reduce_mean(float(rank + 1))
        torch.save({"even": even, "uneven": uneven, "partial": partial.grad, "absent_is_none": absent.grad is None,
                    "mean_loss": mean_loss}, Path(out_dir) / f"rank{rank}.pt")
    finally:
        mdist.shutdown()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _assert_same(a: dict[str, Tensor], b: dict[str, Tensor], tol: float = 1e-6) -> None:
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=tol, atol=tol, msg=name)


@pytest.mark.slow  # ~6 s idle, ~25 s on a loaded 2-core box: each rank imports torch and its first Adam step dynamo
def test_two_ranks_equal_one_process(tmp_path):
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    single_even = meta_train(4, 0, 1, equal_shares=True)
    single_uneven = meta_train(3, 0, 1, equal_shares=False)
    torch.manual_seed(0)
    initial = {f"model.{n}": p.detach().double() for n, p in ToySpeakerNet().named_parameters()}
    assert all(not torch.allclose(single_even[k], v) for k, v in initial.items())  # 3 meta-steps moved every tensor
    for r in ranks:
        _assert_same(r["even"], single_even)
        _assert_same(r["uneven"], single_uneven)
        torch.testing.assert_close(r["partial"], torch.tensor([1.0, 2.0]))
        assert r["absent_is_none"]
        assert r["mean_loss"] == pytest.approx(1.5)


def test_single_process_fallback(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    context = mdist.init_from_env()
    assert (context.rank, context.world_size, context.distributed) == (0, 1, False)
    assert (mdist.rank(), mdist.world(), mdist.is_main()) == (0, 1, True)
    p = torch.ones(2, requires_grad=True)
    p.grad = torch.tensor([3.0, 5.0])
    mdist.all_reduce_gradients([p], average=True)  # a no-op: nothing to reduce with
    torch.testing.assert_close(p.grad, torch.tensor([3.0, 5.0]))
    assert mdist.shard(list("abcde"), 1, 2) == ["b", "d"]
    assert mdist.all_reduce_mean(torch.tensor(2.5)) == 2.5
