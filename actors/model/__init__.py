"""The exit-risk model as the shards and training use it: the bundled model files, loading
with a feature-schema check, and in-place prediction through XGBoost's C function."""
