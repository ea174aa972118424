"""Framework adapters (runtimes) that the worker runs a model with, and the codecs they share.

Heavy frameworks are imported only by the runtime module that needs them; ``registry`` imports runtimes
lazily.
"""
