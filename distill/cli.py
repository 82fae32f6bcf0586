"""``compress-distill``: train a student with the CompRess objective from a teacher cache.

A thin layer over library functions; torch and friends are imported inside the commands so
that ``--help`` is instant.
"""

from __future__ import annotations

import click


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Distil a small student from cached teacher embeddings (stage 2 of CompRess).

    The student learns to reproduce the teacher's similarity distribution (softmax at
    temperature 0.04) over a memory bank of anchor images; no labels are used.
    """


if __name__ == "__main__":
    main()
