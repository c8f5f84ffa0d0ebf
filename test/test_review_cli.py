"""``cmdr review``: accounts on the command line, the refusals that come before a server starts, and the grants
applied on a real PostgreSQL server: the station's database role reads and adds labels, and can do nothing else."""
import os

import pytest
from cli_harness import one_line_error
from fastapi.testclient import TestClient
from review_harness import PASSWORD, RUN, csrf_of, known_rows, login, make_store

from cmdr_ros.audit.backends import open_backend
from cmdr_ros.cli.main import main
from cmdr_ros.review.auth import check_login, list_users
from cmdr_ros.review.app import create_app
from cmdr_ros.review.db import ReviewDB


def test_users_add_list_remove(capsys, tmp_path):
    db_path = str(tmp_path / "audit.db")
    open_backend(db_path).close()
    secret = tmp_path / "pw"
    secret.write_text(PASSWORD + "\n")
    assert main(["review", "users", "add", "ann", "--role", "reviewer", "--db", db_path,
                 "--password-file", str(secret)]) == 0
    assert "exists" in one_line_error(capsys, ["review", "users", "add", "ann", "--role", "admin", "--db",
                                                    db_path, "--password-file", str(secret)])
    secret.write_text("another long one\n")
    assert main(["review", "users", "add", "ann", "--role", "admin", "--db", db_path, "--password-file", str(secret),
                 "--replace"]) == 0
    capsys.readouterr()
    assert main(["review", "users", "list", "--db", db_path]) == 0
    assert capsys.readouterr().out.split()[:2] == ["ann", "admin"]
    db = ReviewDB(db_path)
    try:
        stored = db.rows("SELECT hash FROM users")[0][0]
        assert stored.startswith("$argon2id$") and PASSWORD not in stored
        assert check_login(db, "ann", "another long one").role == "admin" and check_login(db, "ann", PASSWORD) is None
    finally:
        db.close()
    assert main(["review", "users", "remove", "ann", "--db", db_path]) == 0
    assert "no account 'ann'" in one_line_error(capsys, ["review", "users", "remove", "ann", "--db", db_path])
    secret.write_text("short\n")
    assert "8 to 1024 characters" in one_line_error(capsys, ["review", "users", "add", "bob", "--role", "viewer",
                                                             "--db", db_path, "--password-file", str(secret)])
    assert "account name" in one_line_error(capsys, ["review", "users", "add", "bob'--", "--role", "viewer",
                                                     "--db", db_path, "--password-file", str(secret)])


def test_serve_refuses_before_it_starts(capsys, tmp_path):
    db_path = str(tmp_path / "audit.db")
    assert "no audit database" in one_line_error(capsys, ["review", "serve", "--db", db_path])
    open_backend(db_path).close()
    assert "no accounts yet" in one_line_error(capsys, ["review", "serve", "--db", db_path])
    assert "no such directory" in one_line_error(capsys, ["review", "serve", "--db", db_path, "--evidence",
                                                          str(tmp_path / "nowhere")])
    assert "postgresql://" in one_line_error(capsys, ["review", "grants", "--db", db_path])


def test_grants_give_the_station_labels_and_nothing_else(capsys, postgres_url, tmp_path):
    import psycopg

    owner = make_store(postgres_url, known_rows(), tmp_path / "evidence")
    owner.close()
    role = f"cmdr_review_{os.getpid()}"
    assert main(["review", "grants", "--db", postgres_url, "--role", role]) == 0
    sql = capsys.readouterr().out
    assert f'GRANT INSERT ON labels TO "{role}";' in sql and "UPDATE" not in sql and "DELETE" not in sql
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f'DROP ROLE IF EXISTS "{role}"')
        conn.execute(f'CREATE ROLE "{role}" LOGIN')
        conn.execute(sql)
    station_url = postgres_url.replace("postgresql://postgres@", f"postgresql://{role}@")

    db = ReviewDB(station_url)
    try:
        client = TestClient(create_app(db, str(tmp_path / "evidence")))
        assert login(client, "rita").status_code == 200
        for path in ("/decisions", f"/part/{RUN}/2", f"/part/{RUN}/2/image.png", "/dashboard",
                     "/plot/drift.png?node=/cell_a"):
            assert client.get(path).status_code == 200, path
        page = client.get(f"/part/{RUN}/1")
        labelled = client.post(f"/part/{RUN}/1/label", data={"label": "good", "csrf": csrf_of(page.text)})
        assert labelled.status_code == 200
        assert db.rows('SELECT "user", label FROM labels') == [("rita", "good")]
    finally:
        db.close()

    refused = ["INSERT INTO decisions (run_id, seq) VALUES ('x', 1)", "UPDATE decisions SET decision = 'pass'",
               "DELETE FROM decisions", "UPDATE labels SET label = 'defective'", "DELETE FROM labels",
               "INSERT INTO users (name, role, hash, created_at) VALUES ('eve', 'admin', 'x', 0)",
               "UPDATE users SET role = 'admin'", "UPDATE review_meta SET value = 'x'", "CREATE TABLE t (x int)",
               "DROP TABLE labels"]
    with psycopg.connect(station_url, autocommit=True) as conn:
        for statement in refused:
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(statement)
    assert "permission denied" in one_line_error(capsys, ["review", "users", "remove", "vera", "--db", station_url])
    with psycopg.connect(postgres_url) as conn:
        assert conn.execute("SELECT count(*) FROM decisions").fetchone()[0] == 15
        assert conn.execute("SELECT count(*) FROM labels").fetchone()[0] == 1
    owner = ReviewDB(postgres_url)
    try:
        assert len(list_users(owner)) == 3
    finally:
        owner.close()
