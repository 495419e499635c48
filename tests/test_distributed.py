"""distributed.py: the global batch size, the chief worker, and the logger that only the chief uses (the
multi-worker runs themselves are in test_train.py)."""

import logging

import distributed


def test_single_process_is_the_chief_with_the_per_replica_batch():
    assert distributed.is_chief_worker() and not distributed.is_multi_worker()
    assert distributed.global_batch_size(16) == 16


def test_chief_logger_is_silent_on_other_workers(caplog, monkeypatch):
    logger = distributed.chief_logger("tests.chief_only")
    assert distributed.chief_logger("tests.chief_only") is logger and len(logger.filters) == 1
    with caplog.at_level(logging.INFO, logger="tests.chief_only"):
        logger.info("from the chief")
        monkeypatch.setattr(distributed, "is_chief_worker", lambda: False)
        logger.info("from another worker")
    assert [record.getMessage() for record in caplog.records] == ["from the chief"]
