"""The SparseEncoder family (sentence-transformers' ``SparseEncoder``): SPLADE models over the shared pipeline.

So far the losses (``losses/``); the model, trainer and evaluators come next.
"""
