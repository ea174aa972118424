"""SageMaker control-plane operations: one function per operation, wire shapes in, wire shapes out."""
