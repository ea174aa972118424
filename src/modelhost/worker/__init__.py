"""The worker: the process inside one instance that hosts one model behind the SageMaker container contract.

Started by the server as ``python -m modelhost.worker``; see ``__main__`` for the command line.
"""
