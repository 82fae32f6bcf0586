"""Evaluation of any representation (student, teacher, cache): kNN, linear probe and
cluster alignment, with the protocol recorded in every result."""
