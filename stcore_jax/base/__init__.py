"""What every model family shares: the loss base class, the evaluator base, and the pipeline model's
directory load/save."""
