"""modelhost: self-hosted model hosting that speaks the SageMaker hosting API."""

__version__ = "0.1.0"
