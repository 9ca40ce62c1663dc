"""Generation requests from the whole app process, batched: one worker thread owns the pipelines and samples every
request that is waiting, whatever its adapters, in the same pipeline calls (sdlora.adapters.serving).

The Compare view submits a grid's cells; the API (`/gradio_api/.../generate`) submits one request per call, so
concurrent API calls with different adapters are sampled together. Callers get a Future per request and its image
as soon as its batch is done.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import OrderedDict
from concurrent.futures import Future
from dataclasses import dataclass

from sdlora.adapters.serving import DEFAULT_BATCH, BatchGenerator, Request
from sdlora.errors import SdloraError


@dataclass
class _Pending:
    model: str
    vae: str | None
    request: Request
    future: Future


class BatchEngine:
    """Queue of requests -> one worker -> a BatchGenerator per base model (at most `max_models` kept loaded)."""

    def __init__(self, batch_size: int = DEFAULT_BATCH, window_s: float = 0.05, max_models: int = 1,
                 max_round: int = 64):
        self.batch_size, self.window_s, self.max_models, self.max_round = batch_size, window_s, max_models, max_round
        self._queue: queue.Queue[_Pending] = queue.Queue()
        self._generators: OrderedDict[tuple, BatchGenerator] = OrderedDict()
        self._worker: threading.Thread | None = None
        self._start = threading.Lock()
        self.rounds: list[int] = []  # requests sampled per round: tests check that concurrent calls were batched

    def submit(self, model: str, request: Request, vae: str | None = None) -> Future:
        future: Future = Future()
        self._queue.put(_Pending(model, vae, request, future))
        with self._start:
            if self._worker is None or not self._worker.is_alive():
                self._worker = threading.Thread(target=self._run, name="sdlora-batch-engine", daemon=True)
                self._worker.start()
        return future

    def generate(self, model: str, request: Request, vae: str | None = None, timeout: float | None = None):
        """One image, sampled together with whatever else is waiting."""
        return self.submit(model, request, vae).result(timeout)

    def generator(self, model: str, vae: str | None = None) -> BatchGenerator:
        """The loaded generator of (model, vae); only the worker thread calls this."""
        key = (model, vae)
        if key in self._generators:
            self._generators.move_to_end(key)
            return self._generators[key]
        from sdlora.models import load_pipeline

        generator = BatchGenerator(load_pipeline(model, vae=vae), batch_size=self.batch_size)
        self._generators[key] = generator
        while len(self._generators) > self.max_models:
            _, old = self._generators.popitem(last=False)
            old.multi.close()
        return generator

    # ------------------------------------------------------------------------------------------ the worker
    def _run(self) -> None:
        while True:
            try:
                first = self._queue.get(timeout=30)
            except queue.Empty:
                return  # idle: the next submit starts a new worker
            waiting = [first]
            # a short window lets requests that arrive together (concurrent API calls) share the first batch
            time.sleep(self.window_s)
            while len(waiting) < self.max_round:
                try:
                    waiting.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            by_model: OrderedDict[tuple, list[_Pending]] = OrderedDict()
            for item in waiting:
                by_model.setdefault((item.model, item.vae), []).append(item)
            for (model, vae), items in by_model.items():
                self._serve(model, vae, items)

    def _serve(self, model: str, vae: str | None, items: list[_Pending]) -> None:
        try:
            generator = self.generator(model, vae)
        except Exception as exc:  # the model does not load: every request for it learns why
            for item in items:
                item.future.set_exception(exc)
            return
        ready = []
        for item in items:  # a bad adapter fails its own request, not the others of the round
            try:
                for path, weight in item.request.adapters:
                    generator.check(path)
                ready.append(item)
            except SdloraError as exc:
                item.future.set_exception(exc)
        if not ready:
            return
        self.rounds.append(len(ready))

        def done(i: int, image) -> None:
            ready[i].future.set_result(image)

        try:
            generator.generate([item.request for item in ready], on_image=done)
        except Exception as exc:
            for item in ready:
                if not item.future.done():
                    item.future.set_exception(exc)
