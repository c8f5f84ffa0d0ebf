"""The review station: a web page on the audit store for the plant network (``cmdr review serve``).

``db`` opens the store (read-only but for the ``labels`` table) and keeps the station's own tables (``users``,
``labels``, ``review_meta``), ``auth`` holds accounts, roles, password hashes and the CSRF token of a session,
``queries`` reads decisions with filters and the dashboard's figures, ``labels`` stores what a reviewer says a part
truly was, ``plots`` draws the dashboard's figures (matplotlib, PNG: nothing is loaded from outside the station),
``files`` finds a part's evidence images under the evidence root, ``app`` is the FastAPI application, ``dataset``
makes a class folder of the labelled parts (``cmdr dataset from-review``). No ROS import.
"""
