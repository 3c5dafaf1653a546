"""The run layer: what a launcher mode does with a config, a workdir and a model."""
