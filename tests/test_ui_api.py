"""The app's API: 8 concurrent /generate calls with different adapter mixes are sampled together, and each image is
what `sdlora generate` gives for the same settings."""

from __future__ import annotations

import base64
import io
import socket
import threading

import numpy as np
import pytest
from PIL import Image

from browser.fixtures import random_adapter
from sdlora.cli import main
from ui.app import build_app, launch_kwargs
from ui.batch_engine import BatchEngine
from ui.context import AppContext
from ui.paths import Roots

MIXES = [[], [["adapters/a.safetensors", 1.0]], [["adapters/b.safetensors", 0.5]], [["adapters/c.safetensors", 1.5]],
         [["adapters/a.safetensors", 0.5], ["adapters/b.safetensors", 0.5]], [["adapters/d.safetensors", -1.0]],
         [["adapters/b.safetensors", 1.0], ["adapters/c.safetensors", 1.0]], [["adapters/a.safetensors", 2.0]]]
PROMPTS = ["a red circle", "a blue square", "a green circle", "a red square"]
pytestmark = pytest.mark.slow  # starts the whole app and a client: ~30 s on an idle 2-core machine


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    from sdlora.lora.io import save_adapter
    from sdlora.models import load_components

    project = tmp_path_factory.mktemp("api")
    unet = load_components("tiny").unet
    for seed, name in enumerate("abcd", start=1):
        save_adapter(random_adapter(unet, seed, scale=0.1), project / "adapters" / f"{name}.safetensors")
    # a window long enough for 8 calls started together to reach the queue before the first round is taken
    ctx = AppContext(roots=Roots.of(project), batch_engine=BatchEngine(window_s=1.0))
    app = build_app(ctx)
    port = free_port()
    app.queue(default_concurrency_limit=4).launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True,
                                                  quiet=True, **launch_kwargs(ctx))
    yield ctx, project, f"http://127.0.0.1:{port}/"
    app.close()


def decode(uri: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))).convert("RGB"), np.int16)


def test_concurrent_calls_with_different_adapters_are_batched_and_match_generate(served, capsys, monkeypatch):
    from gradio_client import Client

    ctx, project, url = served
    client = Client(url, verbose=False)
    results: dict[int, dict] = {}

    def call(i: int) -> None:
        results[i] = client.predict("tiny", PROMPTS[i % 4], MIXES[i], "", i, 4, 5.0, 64, 64, api_name="/generate")

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(MIXES))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert sorted(results) == list(range(len(MIXES)))
    engine = ctx.batch_engine
    assert sum(engine.rounds) == len(MIXES) and len(engine.rounds) <= 2, engine.rounds  # sampled together
    generator = next(iter(engine._generators.values()))
    assert generator.calls <= 2 and generator.multi.loads == 4  # each adapter file read once
    monkeypatch.chdir(project)
    images = [decode(results[i]["image"]) for i in range(len(MIXES))]
    for i, mix in enumerate(MIXES):
        out = project / f"gen{i}.png"
        args = ["generate", "--model", "tiny", "--prompt", PROMPTS[i % 4], "--seed", str(i), "--steps", "4",
                "--guidance", "5", "--size", "64x64", "--out", str(out)]
        for path, weight in mix:
            args += ["--lora", f"{path}:{weight}"]
        assert main(args) == 0, capsys.readouterr().err
        expected = np.asarray(Image.open(out).convert("RGB"), np.int16)
        assert np.abs(images[i] - expected).max() <= 2, (i, mix)  # float rounding of batched matmuls
    assert np.abs(images[1] - images[7]).mean() > 1  # the weight shows (same adapter at 1 and 2)


def test_a_bad_request_fails_alone_with_a_readable_error(served):
    from gradio_client import Client

    _, _, url = served
    client = Client(url, verbose=False)
    with pytest.raises(Exception, match=r"outside \[-2, 2\]"):
        client.predict("tiny", "a cat", [["adapters/a.safetensors", 3.0]], "", 0, 2, 5.0, 64, 64,
                       api_name="/generate")
    with pytest.raises(Exception, match="missing.safetensors"):
        client.predict("tiny", "a cat", [["adapters/missing.safetensors", 1.0]], "", 0, 2, 5.0, 64, 64,
                       api_name="/generate")
