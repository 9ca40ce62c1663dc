"""Procedural data: captioned scenes of simple shapes (pretraining and demo data) and a detector that reads
them back from images (for tests of what a model draws)."""

from sdlora.procedural.detect import Detection, detect
from sdlora.procedural.scenes import (Scene, demo_reg_scenes, demo_scenes, render, render_many, scene,
                                      write_demo_reg_set, write_demo_set)

__all__ = ["Detection", "Scene", "demo_reg_scenes", "demo_scenes", "detect", "render", "render_many", "scene",
           "write_demo_reg_set", "write_demo_set"]
