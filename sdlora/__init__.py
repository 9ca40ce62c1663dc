"""sdlora: a Stable Diffusion LoRA trainer with a GUI."""

__version__ = "0.1.0"
