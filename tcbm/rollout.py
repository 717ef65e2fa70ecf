"""The autoregressive step, ÂA^t = decoder(CG^t, ÂA^{t-1..t-k}, z), shared by every path that rolls out:
unrolled (pushforward) training, rollout validation and ``tcbm backmap``.  Keeping one function for it
means the three cannot diverge.

Coordinates are in nm, in any frame of reference: each step centres its inputs on the CG^t centroid
(the frame the network was trained in) and returns the prediction in the input's frame.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import nullcontext

import torch

from tcbm.model import BackmapCVAE

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def check_autocast(autocast: str | None) -> None:
    """Reject an autocast setting other than None, 'bf16' or 'fp16'."""
    if autocast is not None and autocast not in AUTOCAST_DTYPES:
        raise ValueError(f"autocast must be null, 'bf16' or 'fp16', got {autocast!r}")


def autocast_context(device: torch.device, autocast: str | None, cache: bool = True):
    """``torch.autocast`` for ``autocast`` in (None, 'bf16', 'fp16'); the network keeps its output layer,
    the previous-frame prior, the softmax and the coordinate read-out in float32 either way.  ``cache=False``
    recasts weights on every call (needed inside a CUDA graph capture)."""
    check_autocast(autocast)
    if autocast is None:
        return nullcontext()
    return torch.autocast(device.type, dtype=AUTOCAST_DTYPES[autocast], cache_enabled=cache)


def step(network: BackmapCVAE, cg: torch.Tensor, previous: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """One autoregressive step: all-atom frame (B, N, 3) from CG^t (B, n, 3), the previous all-atom frames
    ``previous`` (B, k, N, 3) ordered newest first, and latent draws ``z`` (B, latent) (see
    :meth:`BackmapCVAE.generate`)."""
    centre = cg.mean(dim=1, keepdim=True)
    previous_centred = previous - centre[:, None]
    cg_centred = cg - centre
    cond = network.condition(cg_centred, previous_centred)
    return network.generate(cond, z.to(cond.dtype), cg_centred, previous_centred)[1].float() + centre


class CapturedStep:
    """:func:`step` recorded once as a CUDA graph for fixed input shapes and replayed for every frame.

    A rollout of one trajectory is launch-bound on a GPU (hundreds of small kernels per frame); a replay
    is one launch.  The inputs are copied into static buffers, the output is cloned out of the graph's.
    """

    def __init__(self, network: BackmapCVAE, cg: torch.Tensor, previous: torch.Tensor, z: torch.Tensor,
                 autocast: str | None = None) -> None:
        self.inputs = (cg.clone(), previous.clone(), z.clone())
        side = torch.cuda.Stream(cg.device)
        side.wait_stream(torch.cuda.current_stream(cg.device))
        with torch.cuda.stream(side):  # warm-up outside the capture: cuDNN algorithm choice, workspaces
            for _ in range(2):
                with autocast_context(cg.device, autocast, cache=False):
                    step(network, *self.inputs)
        torch.cuda.current_stream(cg.device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph), autocast_context(cg.device, autocast, cache=False):
            self.output = step(network, *self.inputs)

    def __call__(self, cg: torch.Tensor, previous: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        for buffer, value in zip(self.inputs, (cg, previous, z)):
            buffer.copy_(value)
        self.graph.replay()
        return self.output.clone()


def advance(previous: torch.Tensor, frame: torch.Tensor) -> torch.Tensor:
    """The previous-frame stack for the next step: ``frame`` (B, N, 3) becomes the newest of (B, k, N, 3)."""
    return torch.cat([frame[:, None], previous[:, :-1]], dim=1)


def roll(network: BackmapCVAE, cg: torch.Tensor, previous: torch.Tensor,
         latents: Callable[[int, int], torch.Tensor], chunk_frames: int | None = None,
         autocast: str | None = None,
         postprocess: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
         graphs: dict | None = None) -> Iterator[torch.Tensor]:
    """Roll CG trajectories ``cg`` (B, T, n, 3) out from the seed frames ``previous`` (B, k, N, 3), each
    step fed the model's own previous output; yields chunks (B, t, N, 3) of ``chunk_frames`` frames
    (all T at once if None).  ``latents(start, stop)`` returns z (B, stop − start, latent) for those frames;
    ``postprocess(frame, cg_t, previous)``, if given, changes every frame before it is output and fed back
    (refinement, rotor hops; ``previous`` is the stack the frame was decoded from).
    With a dict ``graphs`` and ``cg`` on a CUDA device, the step is replayed as a :class:`CapturedStep`,
    kept in ``graphs`` by input shape for later calls (call under ``torch.inference_mode``); otherwise
    it runs eagerly."""
    n_frames = cg.shape[1]
    chunk = chunk_frames or n_frames
    amp = autocast_context(cg.device, autocast)
    key = (tuple(cg.shape[:1] + cg.shape[2:]), tuple(previous.shape), autocast)
    for start in range(0, n_frames, chunk):
        stop = min(start + chunk, n_frames)
        z = latents(start, stop)
        frames = []
        for t in range(start, stop):
            if graphs is not None and cg.is_cuda:
                if key not in graphs:
                    graphs[key] = CapturedStep(network, cg[:, t], previous, z[:, t - start], autocast)
                frame = graphs[key](cg[:, t], previous, z[:, t - start])
            else:
                with amp:
                    frame = step(network, cg[:, t], previous, z[:, t - start])
            if postprocess is not None:
                frame = postprocess(frame, cg[:, t], previous)
            frames.append(frame)
            previous = advance(previous, frame)
        yield torch.stack(frames, dim=1)
