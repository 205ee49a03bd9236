"""The performance suite behind `cdc bench`: every figure is a ratio against a baseline measured in the same run."""
