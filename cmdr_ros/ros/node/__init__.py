"""The inspection node: the lifecycle node, its decision engine and queues, its parameters, wiring, status,
audit and model swap, and the judge of one set of messages (used offline by ``bags`` and ``bench`` as the node uses it)."""
