"""The embedded offline demo: the whole CompRess pipeline on Fashion-MNIST in minutes on a CPU."""
