"""The audit store: every decision of the node on record (SQLite on the cell, PostgreSQL for the plant).

``schema`` defines the one table, ``backends`` speaks to SQLite (stdlib ``sqlite3``) and PostgreSQL (``psycopg``,
or ``psycopg2``), ``store`` is the node's writer (commit before publish, never blocking the line), ``spool`` the local
SQLite file a row is committed to when the store cannot take it in time (drained into the store later, exactly
once), ``report`` reads a store back (``cmdr audit export`` / ``stats``). No ROS import here.
"""
