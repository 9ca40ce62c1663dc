"""The app's generation API: `/gradio_api/call/generate` (or `gradio_client.Client(url).predict(..., api_name=
"/generate")`), any adapter mix per request. Concurrent calls are sampled together in batches that mix adapters
(ui.batch_engine), each image what `sdlora generate` gives for the same settings.

    client.predict("tiny", "a red circle", [["adapters/red.safetensors", 0.8]], "", 1, 20, 5.0, 64, 64,
                   api_name="/generate")
    -> {"image": "data:image/png;base64,...", "seed": 1, "steps": 20, "guidance": 5.0, "adapters": [...]}

Adapter and model paths are relative to the project folder (or under a --root), as everywhere in the app.
"""

from __future__ import annotations

import base64
import io

from sdlora.adapters.serving import Request, check_request_adapters
from sdlora.errors import SdloraError
from sdlora.models import builtin_models
from ui.context import AppContext

CONCURRENCY = 16  # calls admitted at once: they wait in the batch engine's queue and are sampled together
TIMEOUT_S = 600


def png_data_uri(image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def register(ctx: AppContext) -> None:
    """Add the `generate` endpoint to the Blocks being built."""
    import gradio as gr

    def generate(model: str, prompt: str, adapters: list, negative: str = "", seed: int = 0, steps: int = 20,
                 guidance: float = 5.0, width: int = 64, height: int = 64) -> dict:
        """One image from `model` with `adapters` ([[file, weight], ...], any number, any mix)."""
        try:
            base = model if model in builtin_models() else str(ctx.roots.resolve(model))
            pairs = [(ctx.roots.resolve(str(path), kind="file"), weight) for path, weight in adapters or []]
            request = Request(prompt, check_request_adapters(pairs, "adapters"), negative or "", int(seed),
                              int(steps), float(guidance), None, int(width), int(height))
            image = ctx.batch_engine.generate(base, request, timeout=TIMEOUT_S)
        except (SdloraError, ValueError, TypeError) as exc:
            raise gr.Error(str(exc)) from None
        return {"image": png_data_uri(image), "seed": request.seed, "steps": request.steps,
                "guidance": request.guidance, "adapters": [[p, w] for p, w in request.adapters]}

    gr.api(generate, api_name="generate", concurrency_limit=CONCURRENCY)
