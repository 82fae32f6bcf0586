"""Stage 1: run a frozen self-supervised teacher once over a dataset and cache its
L2-normalised embeddings in stores (see ``storage``)."""
