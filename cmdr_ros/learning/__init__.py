"""The learning loop (issue #25): labelled evidence -> a training class folder (``from_review``), and a new model
judged against the one in service on the same labelled parts before it replaces it (``promotion``)."""
