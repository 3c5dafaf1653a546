"""Benchmarks: throughput, memory and distance from the hardware's limit, of ours and of our peers.

cli         the command line, output line and child processes every entry point shares
peers       the deck's models in Keras and PyTorch, timed the way ours are
"""
