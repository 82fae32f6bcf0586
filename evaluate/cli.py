"""``compress-eval``: kNN, linear probe and cluster alignment of any representation.

A thin layer over library functions; torch/faiss are imported inside the commands so that
``--help`` is instant.
"""

from __future__ import annotations

import click


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Evaluate a student, a teacher or a cache with the protocols papers report
    (kNN, linear probe, cluster alignment); every result records its protocol."""


if __name__ == "__main__":
    main()
