"""One optimizer step (forward, dynamic loss, backward, Adam), run eagerly, compiled, or replayed as a CUDA graph.

All three compute the same step; they differ in how much host work it costs. At the protocol's batch of 4
patches of 128 x 128 a GPU spends most of an eager step waiting for kernel launches, so:

- ``eager``: plain PyTorch, the reference;
- ``compile``: ``torch.compile`` of forward + loss (``mode="reduce-overhead"`` on CUDA, which adds CUDA graphs
  to the compiled forward and backward); backward and Adam stay eager;
- ``cuda_graph``: the whole step, Adam included (``capturable=True``), captured once in one CUDA graph and
  replayed, as in PyTorch's "CUDA Graphs: whole-network capture" recipe: warm-up steps on a side stream, static
  input buffers the batch is copied into, ``zero_grad(set_to_none=True)`` before capture so the gradients live in
  the graph's memory pool. A batch of another shape (the last, partial batch of an epoch) runs eagerly.

``auto`` picks ``cuda_graph`` on CUDA and ``eager`` elsewhere. Optional bfloat16 autocast wraps the forward pass
only; the loss, its branch choice and Adam stay in float32. No mode reads anything back to the host.
"""

from __future__ import annotations

from typing import Callable, Iterable

import torch
from torch import nn

from segft.config import STEP_MODES
from segft.losses import DynamicLoss

#: Eager steps before capture: lets cuDNN pick algorithms and Adam create its state (PyTorch's recipe uses 3).
CUDA_GRAPH_WARMUP_STEPS = 3

StepFn = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def resolve_step_mode(mode: str, device: torch.device | str) -> str:
    """The step mode ``mode`` means on ``device`` (``auto``: ``cuda_graph`` on CUDA, else ``eager``).

    Raises:
        ValueError: For an unknown mode, or ``cuda_graph`` on a device that is not CUDA.
    """
    if mode not in STEP_MODES:
        raise ValueError(f"unknown step mode {mode!r}; choose from {list(STEP_MODES)}")
    on_cuda = torch.device(device).type == "cuda"
    if mode == "auto":
        return "cuda_graph" if on_cuda else "eager"
    if mode == "cuda_graph" and not on_cuda:
        raise ValueError("step mode 'cuda_graph' needs a CUDA device; use 'eager' or 'compile'")
    return mode


def make_optimizer(parameters: Iterable[nn.Parameter], lr: float, device: torch.device | str, mode: str
                   ) -> torch.optim.Adam:
    """Adam for ``mode``: fused on CUDA (one kernel for all parameters), and capturable for ``cuda_graph``."""
    on_cuda = torch.device(device).type == "cuda"
    return torch.optim.Adam(list(parameters), lr=lr, fused=True if on_cuda else None,
                            capturable=mode == "cuda_graph")


def make_train_step(model: nn.Module, loss_fn: DynamicLoss, optimizer: torch.optim.Optimizer, mode: str,
                    batch_size: int, autocast: bool = False) -> StepFn:
    """A function ``(images, masks) -> (loss, branch)`` taking one optimizer step in the given (resolved) mode.

    ``batch_size`` is the shape ``cuda_graph`` captures. The returned tensors stay on the device; with
    ``cuda_graph`` they are overwritten by the next step.
    """
    device = next(model.parameters()).device

    def forward_loss(images: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # cache_enabled=False: autocast's weight cache cannot live across CUDA-graph replays
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast, cache_enabled=False):
            logits = model(images)
        return loss_fn(logits.float(), masks)

    if mode == "compile":
        compiled = torch.compile(forward_loss, mode="reduce-overhead" if device.type == "cuda" else None)
        return _eager_step(compiled, optimizer, mark_cudagraph_step=device.type == "cuda")
    eager = _eager_step(forward_loss, optimizer)
    if mode == "cuda_graph":
        return CudaGraphStep(eager, forward_loss, optimizer, batch_size)
    if mode != "eager":
        raise ValueError(f"unresolved step mode {mode!r}; pass it through resolve_step_mode first")
    return eager


def _eager_step(forward_loss: StepFn, optimizer: torch.optim.Optimizer, mark_cudagraph_step: bool = False) -> StepFn:
    def step(images: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if mark_cudagraph_step:
            torch.compiler.cudagraph_mark_step_begin()
        loss, branch = forward_loss(images, masks)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.detach(), branch

    return step


class CudaGraphStep:
    """The whole training step captured in one CUDA graph after ``CUDA_GRAPH_WARMUP_STEPS`` eager steps.

    Every call is a real training step, warm-up steps included, so the trajectory is the eager one. Only
    batches of ``batch_size`` patches are captured and replayed; others run eagerly.
    """

    def __init__(self, eager_step: StepFn, forward_loss: StepFn, optimizer: torch.optim.Optimizer,
                 batch_size: int) -> None:
        self.eager_step = eager_step
        self.batch_size = batch_size
        self.forward_loss = forward_loss
        self.optimizer = optimizer
        self.steps = 0
        self.graph: torch.cuda.CUDAGraph | None = None
        self.side_stream = torch.cuda.Stream()

    def __call__(self, images: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.steps += 1
        if self.graph is None and self.steps <= CUDA_GRAPH_WARMUP_STEPS:
            self.side_stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(self.side_stream):
                result = self.eager_step(images, masks)
            torch.cuda.current_stream().wait_stream(self.side_stream)
            return result
        if len(images) != self.batch_size:
            return self.eager_step(images, masks)
        if self.graph is None:
            self._capture(images, masks)
        self.static_images.copy_(images)
        self.static_masks.copy_(masks)
        self.graph.replay()
        return self.static_loss, self.static_branch

    def _capture(self, images: torch.Tensor, masks: torch.Tensor) -> None:
        self.static_images, self.static_masks = images.clone(), masks.clone()
        self.optimizer.zero_grad(set_to_none=True)
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                loss, branch = self.forward_loss(self.static_images, self.static_masks)
                loss.backward()
                self.optimizer.step()
        except RuntimeError as error:
            raise RuntimeError(f"capturing the training step in a CUDA graph failed ({error}); "
                               "train with --step eager or --step compile instead") from error
        self.graph, self.static_loss, self.static_branch = graph, loss.detach(), branch
