"""Training under `tf.distribute`: the global batch size, which process is the chief worker, and a logging filter
that lets only the chief log (every worker of a multi-worker run executes the same training code)."""

import runtime_setup  # noqa: F401  (TensorFlow settings that must precede its import)

# isort: split
import logging

import tensorflow as tf


def global_batch_size(batch_size):
    """`batch_size` per replica times the replicas of the current `tf.distribute` strategy (the original rule)."""
    return batch_size * tf.distribute.get_strategy().num_replicas_in_sync


def is_chief_worker():
    """False only on the non-chief workers of a multi-worker strategy (they do not evaluate, save into a private
    temporary folder and do not log)."""
    resolver = getattr(tf.distribute.get_strategy(), "cluster_resolver", None)
    task_type = getattr(resolver, "task_type", None)
    if task_type is None or task_type == "chief":
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return task_type == "worker" and resolver.task_id == 0 and not has_chief


def is_multi_worker():
    """True under a `tf.distribute.MultiWorkerMirroredStrategy` whose cluster has more than one task."""
    strategy = tf.distribute.get_strategy()
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return False
    return sum(len(tasks) for tasks in strategy.cluster_resolver.cluster_spec().as_dict().values()) > 1


class ChiefOnly(logging.Filter):
    """A logging filter that drops every record on the non-chief workers of a multi-worker run."""

    def filter(self, record):
        """Whether to emit `record`: True except on a non-chief worker."""
        return is_chief_worker()


def chief_logger(name):
    """`logging.getLogger(name)` with the `ChiefOnly` filter (added once)."""
    logger = logging.getLogger(name)
    if not any(isinstance(item, ChiefOnly) for item in logger.filters):
        logger.addFilter(ChiefOnly())
    return logger
