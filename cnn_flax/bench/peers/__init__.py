"""The deck's three models in Keras and in PyTorch, timed the way our benchmark times ours.

    python -m cnn_flax.bench.peers.run --framework torch --model minigooglenet --seconds 10

deck      the architectures as plain tables (the same as cnn_flax.models', which a test checks)
keras     the models in Keras 3 (TensorFlow backend unless KERAS_BACKEND says otherwise)
torch     the models in PyTorch (channels-last)
run       the command line: eval and train phases, warm-up then timed windows, one `peer` line

A peer process imports its framework and nothing of cnn_flax that imports JAX, so its memory is its own.
"""
