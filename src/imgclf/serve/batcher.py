"""Dynamic batching: images from requests that arrive together go through the model in one forward pass.

The event loop only queues images and awaits futures; the model runs in one worker thread, so a slow
forward pass never blocks other requests' reading and decoding, and the model (with Grad-CAM's hooks)
is never entered by two threads at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import torch

T = TypeVar("T")


class ModelThread:
    """The one thread that runs the model: every forward pass and explanation goes through it."""

    def __init__(self) -> None:
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="imgclf-model")

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)


class MicroBatcher:
    """Collects single images (C x H x W uint8) for up to ``max_wait_s`` after the first arrives, or until
    ``max_batch`` are waiting, then predicts them together. With ``max_batch=1`` every image runs alone
    (the unbatched baseline the benchmark compares with)."""

    def __init__(
        self,
        predict: Callable[[torch.Tensor], torch.Tensor],
        model_thread: ModelThread,
        max_batch: int = 64,
        max_wait_s: float = 0.002,
    ) -> None:
        self.predict, self.model_thread = predict, model_thread
        self.max_batch, self.max_wait_s = max_batch, max_wait_s
        self.queue: asyncio.Queue[tuple[torch.Tensor, asyncio.Future[torch.Tensor]]] = asyncio.Queue()
        self.task: asyncio.Task[None] | None = None
        self.batches = 0  # forward passes run, for /health and the benchmark
        self.images = 0

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._serve())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)

    async def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """Probabilities for an N x C x H x W batch, its images batched with other requests' images."""
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in range(len(images))]
        for image, future in zip(images, futures):
            self.queue.put_nowait((image, future))
        return torch.stack(await asyncio.gather(*futures))

    async def _collect(self) -> list[tuple[torch.Tensor, asyncio.Future[torch.Tensor]]]:
        items = [await self.queue.get()]
        deadline = asyncio.get_running_loop().time() + self.max_wait_s
        while len(items) < self.max_batch:
            if not self.queue.empty():
                items.append(self.queue.get_nowait())
                continue
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                break
            try:
                items.append(await asyncio.wait_for(self.queue.get(), remaining))
            except asyncio.TimeoutError:
                break
        return items

    async def _serve(self) -> None:
        while True:
            items = await self._collect()
            live = [(image, future) for image, future in items if not future.done()]  # a cancelled request's images
            if not live:
                continue
            try:
                probs = await self.model_thread.run(self.predict, torch.stack([image for image, _ in live]))
            except Exception as exc:  # noqa: BLE001  the requests waiting on this batch get the error, the server lives on
                for _, future in live:
                    if not future.done():
                        future.set_exception(exc)
                continue
            self.batches += 1
            self.images += len(live)
            for (_, future), row in zip(live, probs):
                if not future.done():
                    future.set_result(row)
