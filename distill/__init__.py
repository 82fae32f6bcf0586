"""Stage 2: train a small student to mimic the teacher's similarity distribution over a
memory bank of anchors (the CompRess objective), from cached teacher embeddings."""
