"""The tutorial's losses: 2-logit softmax cross-entropy (nn.CrossEntropyLoss), label 1 = real."""
import jax
import jax.numpy as jnp
import optax

REAL, FAKE = 1, 0


def cross_entropy(logits, label: int):
    """Mean CrossEntropyLoss of a batch of (N, 2) logits against one label for the whole batch."""
    logits = logits.astype(jnp.promote_types(logits.dtype, jnp.float32))
    labels = jnp.full(logits.shape[:1], label, jnp.int32)
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def prob_real(logits):
    """Mean probability of "real" the discriminator assigns: D(x) or D(G(z)) in GAN papers."""
    logits = logits.astype(jnp.promote_types(logits.dtype, jnp.float32))
    return jax.nn.softmax(logits)[:, REAL].mean()


def discriminator_loss(logits_real, logits_fake):
    return (cross_entropy(logits_real, REAL) + cross_entropy(logits_fake, FAKE)) / 2


def generator_loss(logits_fake):
    return cross_entropy(logits_fake, REAL)
