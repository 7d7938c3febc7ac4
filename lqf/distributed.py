"""Data parallelism under ``torchrun``: one process per device, ``torch.distributed`` between them.

``torchrun --nproc_per_node N -m lqf fit ...`` (or multi-node, with torchrun's rendezvous flags)
starts ``N`` copies of ``lqf fit``; :func:`init_from_env` joins them into one process group
(gloo on CPUs, NCCL on CUDA devices, each process on ``cuda:LOCAL_RANK``). Every process loads
the same data and model from the same seed, and:

* passes over images (features, cached inputs of the linearized part, predictions) are split:
  process ``r`` of ``W`` takes the images ``r, r + W, ...`` and :func:`gather_rows` puts the rows
  back in order on every process, so the methods after it see what one process would have;
* fine-tuning splits each global mini-batch the same way (the global batch and its seeded order
  are those of one process) and averages gradients by ``DistributedDataParallel``, with each
  shard's loss weighted by its share of the batch, so every step is the one-process step;
* only process 0 writes the run directory and prints; the others are quiet.

BatchNorm in training mode normalizes each process's shard by its own statistics (torch's
SyncBatchNorm runs on GPUs only), and dropout draws its masks per process: a run with either
follows another trajectory than one process, as it would with another batch split. With
``--bn frozen`` and no dropout it is the one-process trajectory to float rounding.

When a process dies, torchrun stops the others (SIGTERM) and each says so in one line (process 0
prints it); a collective that waits on a process that is gone fails after ``LQF_DIST_TIMEOUT``
seconds (300 by default) instead of hanging.
"""

from __future__ import annotations

import os

import torch

from lqf.errors import LqfError

#: what this process has sent through :func:`all_reduce_sum` and :func:`gather_rows`: calls and bytes
#: (the tensors handed to torch.distributed, not what the backend's algorithm moves on the wire)
TRAFFIC = {"all_reduce_calls": 0, "all_reduce_bytes": 0, "gather_calls": 0, "gather_bytes": 0}


def launched() -> bool:
    """Whether this process was started by ``torchrun`` with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def env_rank() -> int:
    """This process's rank as ``torchrun`` gives it (0 outside ``torchrun``), before any group exists."""
    return int(os.environ.get("RANK", "0"))


def active() -> bool:
    """Whether a process group of more than one process is running."""
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world() -> tuple[int, int]:
    """``(rank, size)`` of this process (``(0, 1)`` without a process group)."""
    if not active():
        return 0, 1
    import torch.distributed as dist

    return dist.get_rank(), dist.get_world_size()


def is_main() -> bool:
    return world()[0] == 0


#: seconds a collective waits for the other processes before it fails (``LQF_DIST_TIMEOUT``)
DEFAULT_TIMEOUT = 300


class PeerLost(Exception):
    """Another process of this ``torchrun`` run ended, so this one cannot go on."""


def timeout_seconds() -> float:
    """``LQF_DIST_TIMEOUT`` (seconds, default :data:`DEFAULT_TIMEOUT`), checked."""
    text = os.environ.get("LQF_DIST_TIMEOUT", str(DEFAULT_TIMEOUT))
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0:
        raise LqfError(f"LQF_DIST_TIMEOUT must be a number of seconds > 0, got {text!r}")
    return value


def _stopped(signum, frame) -> None:
    raise PeerLost("torchrun stopped this process")


def is_peer_failure(err: BaseException) -> bool:
    """Whether ``err`` says another process is gone: torchrun's SIGTERM (:class:`PeerLost`), or a
    collective that failed or timed out in the backend."""
    if isinstance(err, PeerLost):
        return True
    import torch.distributed as dist

    kinds = tuple(k for k in (getattr(dist, "DistError", None),) if k is not None)
    if kinds and isinstance(err, kinds):
        return True
    text = str(err)
    return isinstance(err, RuntimeError) and any(
        key in text for key in ("Connection closed by peer", "Connection reset by peer", "gloo", "NCCL")
    )


def init_from_env(device: str) -> str:
    """Join the ``torchrun`` process group if this process is one of several; returns the device
    this process trains on (``cuda:LOCAL_RANK`` for ``--device cuda``)."""
    if not launched() or active():
        return local_device(device)
    import torch.distributed as dist

    if not dist.is_available():
        raise LqfError("this torch has no torch.distributed: run lqf fit without torchrun")
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    import datetime
    import signal

    limit = timeout_seconds()
    # torchrun ends the other processes with SIGTERM when one fails: say so in one line, not a traceback
    signal.signal(signal.SIGTERM, _stopped)
    dist.init_process_group(backend="nccl" if cuda else "gloo", timeout=datetime.timedelta(seconds=limit))
    import atexit

    atexit.register(close)  # a process that exits with its group open can abort in gloo's threads
    return local_device(device)


def finish() -> None:
    """Wait for every process, then leave the group (the end of a run under ``torchrun``)."""
    if active():
        import torch.distributed as dist

        dist.barrier()
        close()


def close() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def local_device(device: str) -> str:
    if launched() and device == "cuda":
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return device


def shard(n: int) -> torch.Tensor:
    """Positions of this process's share of ``n`` items: ``rank, rank + W, ...``."""
    rank, size = world()
    return torch.arange(rank, n, size)


def gather_rows(local: torch.Tensor, n: int) -> torch.Tensor:
    """The ``(n, ...)`` rows whose shares (:func:`shard`) the processes hold, in order, on every one."""
    rank, size = world()
    if size == 1:
        return local
    import torch.distributed as dist

    per = -(-n // size)
    pad = torch.zeros((per, *local.shape[1:]), dtype=local.dtype)
    pad[: len(local)] = local.cpu()
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
    parts = [torch.empty_like(pad, device=device) for _ in range(size)]
    TRAFFIC["gather_calls"] += 1
    TRAFFIC["gather_bytes"] += pad.numel() * pad.element_size()
    dist.all_gather(parts, pad.to(device))
    out = torch.empty((n, *local.shape[1:]), dtype=local.dtype)
    for r, part in enumerate(parts):
        count = len(range(r, n, size))
        out[r::size] = part[:count].cpu()
    return out


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """``t`` summed over the processes (in place; ``t`` itself without a process group)."""
    if active():
        import torch.distributed as dist

        TRAFFIC["all_reduce_calls"] += 1
        TRAFFIC["all_reduce_bytes"] += t.numel() * t.element_size()
        dist.all_reduce(t)
    return t


def broadcast(obj, src: int = 0):
    """Process ``src``'s ``obj`` on every process (pickled)."""
    if not active():
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def broadcast_tensor(t: torch.Tensor | None, src: int, numel: int) -> torch.Tensor:
    """Process ``src``'s flat float64 tensor of ``numel`` elements on every process (``t`` is
    ``None`` on the others); ``t`` itself without a process group."""
    if not active():
        assert t is not None
        return t
    import torch.distributed as dist

    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
    if dist.get_rank() == src:
        assert t is not None and t.numel() == numel
        out = t.detach().reshape(-1).to(device, torch.float64).contiguous()
    else:
        out = torch.empty(numel, dtype=torch.float64, device=device)
    dist.broadcast(out, src=src)
    return out
