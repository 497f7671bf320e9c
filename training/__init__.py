"""Journey simulator, data loaders, feature replay, model training, evaluation and registry."""
