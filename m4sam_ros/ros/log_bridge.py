"""Python ``logging`` of the package's libraries into the node's ROS logger.

The engines, the cache and training log with ``logging`` (they know nothing of ROS); in the
node those lines must land where every other line of the node does (console, ROS log files,
/rosout), with the node's name and level, not on a bare stderr.
"""
from __future__ import annotations

import logging

from rclpy.impl.rcutils_logger import RcutilsLogger

__all__ = ["RosLogHandler", "bridge_python_logging"]


class RosLogHandler(logging.Handler):
    """Forwards records to ``logger.get_child(<last part of the record's logger name>)``."""

    def __init__(self, logger: RcutilsLogger):
        super().__init__()
        self._logger = logger

    def emit(self, record: logging.LogRecord) -> None:
        try:
            target = self._logger.get_child(record.name.rsplit(".", 1)[-1])
            message = self.format(record)
            if record.levelno >= logging.ERROR:
                target.error(message)
            elif record.levelno >= logging.WARNING:
                target.warning(message)
            elif record.levelno >= logging.INFO:
                target.info(message)
            else:
                target.debug(message)
        except Exception:  # logging must never take the node down
            self.handleError(record)


def bridge_python_logging(logger: RcutilsLogger, names: tuple[str, ...] = ("m4sam_ros", "m4sam")) -> RosLogHandler:
    """Route the package's Python loggers (INFO and up) to ``logger``; returns the handler."""
    handler = RosLogHandler(logger)
    handler.setFormatter(logging.Formatter("%(message)s"))
    for name in names:
        python_logger = logging.getLogger(name)
        python_logger.addHandler(handler)
        python_logger.setLevel(logging.INFO)
        python_logger.propagate = False
    return handler
