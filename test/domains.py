"""The ROS domain a test module speaks in: drawn at random, so parallel runs never see each other."""
from __future__ import annotations

import os
import random


def new_domain() -> int:
    """A random ROS domain for one test module (1..101 keeps clear of ephemeral ports); ``CMDR_TEST_DOMAINS=LO-HI``
    narrows the draw, so suites run side by side (several checkouts on one machine) never share a domain."""
    lo, hi = 1, 101
    band = os.environ.get("CMDR_TEST_DOMAINS", "")
    if band:
        lo, hi = (int(x) for x in band.split("-"))
    return random.SystemRandom().randint(lo, hi)
