"""Writes tests/data/tf_keras2/: a MiniVGG checkpoint saved by tf.keras 2, and what tf.keras computed with it.

tf.keras 2 is not a dependency of cnn_flax (it needs the full `tensorflow` package, which clashes with
`tensorflow-cpu`), so its file is made once by hand and committed; the tests read it with h5py alone.
Run from the repository root in an environment with `tf_keras` (2.x) and scikit-learn:

    pip install tf_keras          # in a scratch environment, not the project's
    PYTHONPATH=$PWD python tests/data/make_tf_keras_checkpoint.py

The model is built by tests/keras_models.py's `minivgg` with tf_keras's Keras 2 API, as the book's
MiniVGGNet.build writes it (Sequential, CONV => RELU => BN, dropout at rate 0 so that a training step is
deterministic), on the quickstart's digits at 4x4 (the split cnn_flax's digits source makes, /255), which
keeps the file under 1 MB. It is trained ten epochs with model.fit and the book's optimizer (SGD, momentum
0.9, Nesterov) and saved as the book's EpochCheckpoint saves it: `model.save('epoch_10.hdf5')`, optimizer
included. Beside it, `expected.npz` holds:

  images, logits, probabilities   16 test digits, the output before the softmax, model.predict's output
  test_argmax                     model.predict's class for every digit of the test split
  test_accuracy, test_loss        model.evaluate on the test split
  next_images, next_labels,       one more train_on_batch at the lowered rate the book resumes with,
  resume_rate                     and the weights after it, one array per dataset of the file's
  after:<dataset path>            model_weights group (the path inside the .hdf5 file)
"""

import os
import sys
import tempfile

import h5py
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "tf_keras2")
SIZE, EPOCHS, BATCH, RATE, RESUME_RATE = 4, 10, 32, 0.05, 0.005


def digits_splits():
    """The quickstart's digits split at SIZE x SIZE, scaled to [0, 1] as data.normalize='scale' does."""
    from cnn_flax.data.digits import load_digits_splits
    from configs.quickstart import get_config

    data = get_config().data
    _, splits = load_digits_splits(SIZE, data.digits_test_fraction, data.split_seed)
    return {name: (images.astype(np.float32) / 255.0, labels) for name, (images, labels) in splits.items()}


def main() -> None:
    sys.path.insert(0, os.path.dirname(HERE))  # tests/, for keras_models
    import keras_models
    import tf_keras

    tf_keras.utils.set_random_seed(0)
    splits = digits_splits()
    model = keras_models.minivgg(tf_keras, (SIZE, SIZE, 3), 10, dropout=False)
    model.compile(optimizer=tf_keras.optimizers.SGD(RATE, momentum=0.9, nesterov=True),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(*splits["train"], batch_size=BATCH, epochs=EPOCHS, verbose=0)
    os.makedirs(OUT, exist_ok=True)
    checkpoint = os.path.join(OUT, "epoch_10.hdf5")
    model.save(checkpoint + ".partial.hdf5")
    os.replace(checkpoint + ".partial.hdf5", checkpoint)

    test_images, test_labels = splits["test"]
    images = test_images[:16]
    logits_model = tf_keras.Model(model.inputs, model.layers[-2].output)  # before Activation('softmax')
    loss, accuracy = model.evaluate(test_images, test_labels, batch_size=BATCH, verbose=0)
    expected = dict(images=images, logits=logits_model.predict(images, verbose=0),
                    probabilities=model.predict(images, verbose=0),
                    test_argmax=np.argmax(model.predict(test_images, verbose=0), axis=-1).astype(np.int32),
                    test_accuracy=np.float64(accuracy), test_loss=np.float64(loss),
                    iterations=np.int64(model.optimizer.iterations.numpy()))
    next_images, next_labels = (array[:8] for array in splits["train"])
    model.optimizer.learning_rate.assign(RESUME_RATE)
    model.train_on_batch(next_images, next_labels)
    expected.update(next_images=next_images, next_labels=next_labels, resume_rate=np.float64(RESUME_RATE))
    with tempfile.TemporaryDirectory() as scratch:
        after = os.path.join(scratch, "after.hdf5")
        model.save(after, include_optimizer=False)
        with h5py.File(after, "r") as handle:
            handle["model_weights"].visititems(
                lambda name, node: expected.__setitem__(f"after:model_weights/{name}", node[()])
                if isinstance(node, h5py.Dataset) else None)
    np.savez(os.path.join(OUT, "expected.partial.npz"), **expected)
    os.replace(os.path.join(OUT, "expected.partial.npz"), os.path.join(OUT, "expected.npz"))
    print(f"wrote {checkpoint} ({os.path.getsize(checkpoint)} bytes, tf_keras {tf_keras.__version__}); "
          f"test accuracy {accuracy:.4f}")


if __name__ == "__main__":
    main()
