"""The collective operations a training worker needs, and their backends.

:func:`recspark.train.loop.train_worker` runs the same code under every launcher (see
:mod:`recspark.train.launch`); only the :class:`Comm` differs: :class:`LocalComm` (one process),
:class:`HorovodComm` (``horovod.spark.run``) or :class:`TorchDistComm` (``torch.distributed``
under TorchDistributor).
"""

from __future__ import annotations

import os
from typing import Protocol

import torch


class Comm(Protocol):
    """The collective operations a worker needs."""

    rank: int
    size: int
    local_rank: int

    def allreduce(self, values: list[float], op: str) -> list[float]: ...

    def broadcast_model(self, model: torch.nn.Module) -> None: ...

    def wrap_optimizer(
        self, opt: torch.optim.Optimizer, model: torch.nn.Module
    ) -> torch.optim.Optimizer: ...

    def sync_gradients(self, model: torch.nn.Module) -> None: ...


class LocalComm:
    """One process: every collective is the identity."""

    rank = 0
    size = 1
    local_rank = 0

    def allreduce(self, values: list[float], op: str) -> list[float]:
        return list(values)

    def broadcast_model(self, model: torch.nn.Module) -> None:
        return None

    def wrap_optimizer(
        self, opt: torch.optim.Optimizer, model: torch.nn.Module
    ) -> torch.optim.Optimizer:
        return opt

    def sync_gradients(self, model: torch.nn.Module) -> None:
        return None


class HorovodComm:
    """Horovod (Gloo on CPU, NCCL for GPU tensors when built with it)."""

    def __init__(self) -> None:
        import horovod.torch as hvd

        hvd.init()
        self.hvd = hvd
        self.rank = hvd.rank()
        self.size = hvd.size()
        self.local_rank = hvd.local_rank()
        self._n = 0

    def allreduce(self, values: list[float], op: str) -> list[float]:
        hop = {"sum": self.hvd.Sum, "max": self.hvd.Max, "min": self.hvd.Min}[op]
        self._n += 1
        t = torch.tensor(values, dtype=torch.float64)
        out = self.hvd.allreduce(t, op=hop, name=f"recspark.allreduce.{self._n}")
        return [float(v) for v in out]

    def broadcast_model(self, model: torch.nn.Module) -> None:
        self.hvd.broadcast_parameters(model.state_dict(), root_rank=0)

    def wrap_optimizer(
        self, opt: torch.optim.Optimizer, model: torch.nn.Module
    ) -> torch.optim.Optimizer:
        wrapped: torch.optim.Optimizer = self.hvd.DistributedOptimizer(
            opt, named_parameters=model.named_parameters(), op=self.hvd.Average
        )
        return wrapped

    def sync_gradients(self, model: torch.nn.Module) -> None:
        return None  # DistributedOptimizer allreduces in step()


class TorchDistComm:
    """``torch.distributed`` (as set up by torchrun under TorchDistributor)."""

    def __init__(self, backend: str = "gloo") -> None:
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group(backend=backend)
        self.dist = dist
        self.rank = dist.get_rank()
        self.size = dist.get_world_size()
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))

    def allreduce(self, values: list[float], op: str) -> list[float]:
        rop = {
            "sum": self.dist.ReduceOp.SUM,
            "max": self.dist.ReduceOp.MAX,
            "min": self.dist.ReduceOp.MIN,
        }[op]
        t = torch.tensor(values, dtype=torch.float64)
        self.dist.all_reduce(t, op=rop)
        return [float(v) for v in t]

    def broadcast_model(self, model: torch.nn.Module) -> None:
        for t in model.state_dict().values():
            self.dist.broadcast(t, src=0)

    def wrap_optimizer(
        self, opt: torch.optim.Optimizer, model: torch.nn.Module
    ) -> torch.optim.Optimizer:
        return opt

    def sync_gradients(self, model: torch.nn.Module) -> None:
        for p in model.parameters():
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            self.dist.all_reduce(p.grad, op=self.dist.ReduceOp.SUM)
            p.grad.div_(self.size)
