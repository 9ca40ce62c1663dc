"""The sdlora app (`sdlora-ui`): a Gradio shell over the library with Dataset, Train and Preview tabs."""
