"""What the stager and the loader share, and nothing else (docs/architecture.md).

The contract: the configuration and its validation (``config``), the dataset
schemas with the system columns (``datasets``), the staging file format
(``staging``) and the errors both raise (``exceptions``). The process
plumbing: the ops endpoint and status snapshots (``ops``), metric helpers
(``metrics``), logging (``logs``), the backoff (``backoff``) and the command
line scaffold (``command``). This package imports neither ``stager`` nor
``loader``.
"""
