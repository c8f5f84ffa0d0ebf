"""The learning loop (issue #25) after ``cmdr dataset from-review`` (``cmdr_ros.review.dataset``): a new model judged
against the one in service on the same labelled parts before it replaces it (``promotion``)."""
