"""Train the MNIST classifier the sample-quality metrics use, and write its weights file.

  python -m experiments.train_extractor --data-dir ../shared/data/mnist

Deterministic for a given seed on a given backend. Writes dcgan_jax/assets/mnist_extractor.msgpack
(parameters + version + training record) and prints its sha256, which must then be recorded as
WEIGHTS_SHA256 in dcgan_jax/extractor.py (together with a WEIGHTS_VERSION bump) for the metrics
to accept the new file.
Exit status: 0 done, 1 runtime error (data, a failed write), 2 bad arguments, 130 interrupted
(SIGINT), 143 terminated (SIGTERM).
"""
from experiments import interrupts  # first: a signal during the imports below ends the script too

if __name__ == "__main__":
    interrupts.install()

import argparse
import hashlib
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import serialization

from dcgan_jax import extractor
from dcgan_jax.data import DataError, load_mnist
from dcgan_jax.outputs import WriteError, atomic_write
from experiments.common import check_count, check_out

DEFAULT_OUT = os.path.join(os.path.dirname(extractor.__file__), "assets", extractor.WEIGHTS_FILE)


def shift_batch(images, rng, max_shift: int):
    """Random translations by up to max_shift pixels (zero fill): the only augmentation."""
    n = len(images)
    padded = np.pad(images, ((0, 0), (max_shift, max_shift), (max_shift, max_shift), (0, 0)))
    dy, dx = rng.integers(0, 2 * max_shift + 1, (2, n))
    return np.stack([padded[i, dy[i]:dy[i] + 28, dx[i]:dx[i] + 28] for i in range(n)])


def make_train_step(model, tx):
    @jax.jit
    def step(params, opt_state, images, labels, key):
        def loss_fn(p):
            logits, _ = model.apply({"params": p}, images, train=True, rngs={"dropout": key})
            return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss
    return step


def accuracy(params, images, labels) -> float:
    probs, _ = extractor.extract(images.astype(np.float32) / 255, params=params)
    return float(np.mean(probs.argmax(1) == labels))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m experiments.train_extractor", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", help="folder with the four MNIST IDX files (default: TFDS)")
    p.add_argument("--out", default=DEFAULT_OUT, help="weights file (default: the packaged asset)")
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--max-shift", type=int, default=2, help="augmentation: max translation in pixels")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    error = (check_count("--epochs", args.epochs, 1, 1000) or check_count("--batch-size", args.batch_size, 1, 60000)
             or check_count("--max-shift", args.max_shift, 0, 27) or check_out(args.out, folder=False)
             or (None if 0 < args.lr < float("inf") else f"--lr {args.lr}: must be a positive number"))
    if error:
        p.error(error)
    try:
        train, test = load_mnist("train", args.data_dir), load_mnist("test", args.data_dir)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1

    rng = np.random.default_rng(args.seed)
    init_key, dropout_key = jax.random.split(jax.random.key(args.seed))
    model = extractor.MnistCNN()
    params = model.init(init_key, jnp.zeros((1, 28, 28, 1)))["params"]
    steps_per_epoch = len(train.images) // args.batch_size
    schedule = optax.cosine_onecycle_schedule(args.epochs * steps_per_epoch, args.lr)
    tx = optax.adam(schedule)
    opt_state = tx.init(params)
    step = make_train_step(model, tx)

    for epoch in range(1, args.epochs + 1):
        start = time.perf_counter()
        order = rng.permutation(len(train.images))
        losses = []
        for i in range(steps_per_epoch):
            idx = order[i * args.batch_size:(i + 1) * args.batch_size]
            images = shift_batch(train.images[idx], rng, args.max_shift).astype(np.float32) / 255
            params, opt_state, loss = step(params, opt_state, images, train.labels[idx].astype(np.int32),
                                           jax.random.fold_in(dropout_key, (epoch - 1) * steps_per_epoch + i))
            losses.append(loss)
        test_acc = accuracy(params, test.images, test.labels)
        print(f"epoch {epoch}/{args.epochs}  loss {float(np.mean(jax.device_get(losses))):.4f}  "
              f"test accuracy {test_acc:.4%}  {time.perf_counter() - start:.0f}s", flush=True)

    record = {"version": extractor.WEIGHTS_VERSION, "params": jax.tree.map(np.asarray, params),
              "test_accuracy": test_acc, "seed": args.seed, "epochs": args.epochs,
              "backend": jax.default_backend(), "jax_version": jax.__version__,
              "data_source": test.source}
    data = serialization.msgpack_serialize(serialization.to_state_dict(record))
    try:
        atomic_write(args.out, data)
    except WriteError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {args.out} ({len(data) / 1e6:.2f} MB), test accuracy {test_acc:.4%}")
    print(f"sha256 {hashlib.sha256(data).hexdigest()}  (record it as WEIGHTS_SHA256 in "
          f"dcgan_jax/extractor.py)")
    return 0


if __name__ == "__main__":
    interrupts.exit_with(main)
