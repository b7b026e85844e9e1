"""``python -m compose_retrieval``: the ``compose-retrieval`` command line.

Also what torchrun starts in every process: ``torchrun --nproc-per-node N -m compose_retrieval train ...``
(compose_retrieval.distributed).
"""

from __future__ import annotations

__all__: list[str] = []

if __name__ == "__main__":
    from .cli import main

    main()
