"""The review station (cmdr_ros/review/) through Starlette's TestClient, on SQLite and on a real PostgreSQL server:
accounts everywhere, roles, CSRF, bad input refused without a change, labels with who and when, the filters, the
evidence pictures (from inside the root only) and the dashboard's figures on a known set of decisions."""
import time

import pytest
from fastapi.testclient import TestClient
from review_harness import (KNOWN_LABELS, PASSWORD, RUN, T0, count_of, csrf_of, decision, known_rows, login,
                            make_store)

from cmdr_ros.evidence import read_evidence
from cmdr_ros.review import labels, queries
from cmdr_ros.review.app import create_app
from cmdr_ros.review.auth import LoginThrottle


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.full_only)])
def target(request, tmp_path):
    return str(tmp_path / "audit.db") if request.param == "sqlite" else request.getfixturevalue("postgres_url")


@pytest.fixture
def station(target, tmp_path):
    """(db, app, evidence root) on the known decisions; the even parts have evidence pictures."""
    root = tmp_path / "evidence"
    db = make_store(target, known_rows(), root)
    yield db, create_app(db, str(root)), root
    db.close()


def client_as(app, name: str | None) -> TestClient:
    client = TestClient(app)
    if name is not None:
        assert login(client, name).status_code == 200
    return client


def stored_labels(db) -> list[tuple]:
    return db.rows('SELECT node, run_id, seq, label, "user", labelled_at, note FROM labels ORDER BY id')


PAGES = ["/", "/decisions", f"/part/{RUN}/0", f"/part/{RUN}/0/image.png", "/dashboard", "/plot/drift.png?node=x",
         "/users"]


def test_nobody_gets_in_without_an_account(station):
    db, app, _ = station
    client = TestClient(app)
    for path in PAGES:
        r = client.get(path, follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"].startswith("/login?next="), path
    r = client.post(f"/part/{RUN}/0/label", data={"label": "good", "csrf": "x"}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"].startswith("/login")
    assert login(client, "rita", "wrong password!").status_code == 401
    assert login(client, "nobody", PASSWORD).status_code == 401
    assert client.get("/decisions", follow_redirects=False).status_code == 303
    assert stored_labels(db) == []


def test_failed_logins_lock_the_account_name_out_for_a_while(station):
    _, app, _ = station
    now = [1000.0]
    app = create_app(app.state.db, throttle=LoginThrottle(max_failures=3, window_s=60, lock_s=120,
                                                          clock=lambda: now[0]))
    client = TestClient(app)
    assert [login(client, "rita", "guess %d" % i).status_code for i in range(3)] == [401] * 3
    r = login(client, "rita")  # the right password, but locked
    assert r.status_code == 429 and "try again in 120 s" in r.text
    assert login(client, "vera").status_code == 200  # another account is not locked
    now[0] += 121
    assert login(TestClient(app), "rita").status_code == 200
    for i in range(3):  # failures spread over more than the window never lock
        assert login(TestClient(app), "adam", "guess").status_code == 401
        now[0] += 61
    assert login(TestClient(app), "adam").status_code == 200


def test_login_then_logout(station):
    _, app, _ = station
    client = client_as(app, "vera")
    r = client.get("/decisions")
    assert r.status_code == 200 and 'id="who">vera (viewer)' in r.text
    assert r.headers["content-security-policy"].startswith("default-src 'self'")
    assert client.post("/logout", data={"csrf": csrf_of(r.text)}).url.path == "/login"
    assert client.get("/decisions", follow_redirects=False).status_code == 303


def test_a_tampered_session_cookie_is_no_session(station):
    _, app, _ = station
    client = client_as(app, "adam")
    cookie = client.cookies["cmdr_review"]
    assert TestClient(app, cookies={"cmdr_review": cookie}).get("/users").status_code == 200  # the cookie is the key
    forged = cookie[:-4] + ("AAAA" if not cookie.endswith("AAAA") else "BBBB")
    assert TestClient(app, cookies={"cmdr_review": forged}).get("/users", follow_redirects=False).status_code == 303


def test_roles(station):
    db, app, _ = station
    viewer = client_as(app, "vera")
    page = viewer.get(f"/part/{RUN}/1")
    assert page.status_code == 200 and 'id="label-good"' not in page.text
    r = viewer.post(f"/part/{RUN}/1/label", data={"label": "good", "csrf": csrf_of(page.text)})
    assert r.status_code == 403 and "reviewer needed" in r.text
    assert viewer.get("/users").status_code == 403
    reviewer = client_as(app, "rita")
    assert reviewer.get("/users").status_code == 403
    assert 'id="label-good"' in reviewer.get(f"/part/{RUN}/1").text
    r = client_as(app, "adam").get("/users")
    assert r.status_code == 200 and all(f"<td>{n}</td><td>{role}</td>" in r.text
                                        for n, role in (("vera", "viewer"), ("rita", "reviewer"), ("adam", "admin")))
    assert stored_labels(db) == []


def test_a_label_is_stored_with_who_and_when(station):
    db, app, _ = station
    client = client_as(app, "rita")
    before = time.time()
    page = client.get(f"/part/{RUN}/1")
    r = client.post(f"/part/{RUN}/1/label",
                    data={"label": "good", "note": "scratch is dust", "csrf": csrf_of(page.text)})
    after = time.time()
    assert r.status_code == 200 and 'id="saved"' in r.text and "scratch is dust" in r.text
    (node, run_id, seq, label, user, at, note), = stored_labels(db)
    assert (node, run_id, seq, label, user, note) == ("/cell_a", RUN, 1, "good", "rita", "scratch is dust")
    assert before <= at <= after
    client.post(f"/part/{RUN}/1/label", data={"label": "defective", "csrf": csrf_of(page.text)})
    assert [h["label"] for h in labels.history(db, RUN, 1)] == ["defective", "good"]  # all kept, latest first
    assert count_of(client.get("/decisions?label=defective").text) == 1
    assert count_of(client.get("/decisions?label=good").text) == 0


@pytest.mark.parametrize("form", [{}, {"csrf": ""}, {"csrf": "forged"}, "other session"],
                         ids=["none", "empty", "forged", "other"])
def test_forged_forms_change_nothing(station, form):  # a short name: the database of each case is named after it
    db, app, _ = station
    client = client_as(app, "rita")
    if form == "other session":
        form = {"csrf": csrf_of(client_as(app, "adam").get("/decisions").text)}
    r = client.post(f"/part/{RUN}/1/label", data={"label": "good", **form})
    assert r.status_code == 403 and "nothing was changed" in r.text
    fresh = TestClient(app)
    r = fresh.post("/login", data={"name": "rita", "password": PASSWORD, "next": "/", **form})
    assert r.status_code == 403 and fresh.get("/decisions", follow_redirects=False).status_code == 303
    assert stored_labels(db) == []


def test_bad_input_is_a_clear_error_and_changes_nothing(station):
    db, app, _ = station
    client = client_as(app, "rita")
    token = csrf_of(client.get("/decisions").text)
    r = client.get(f"/part/{RUN}/77")
    assert r.status_code == 404 and f"no decision run {RUN} seq 77" in r.text
    r = client.post(f"/part/{RUN}/77/label", data={"label": "good", "csrf": token})
    assert r.status_code == 404
    assert client.get(f"/part/{RUN}/abc").status_code == 400
    for seq in ("-1", "99999999999999999999999"):  # beyond what the store's integer holds: no driver error
        assert client.get(f"/part/{RUN}/{seq}").status_code == 400
        assert client.post(f"/part/{RUN}/{seq}/label", data={"label": "good", "csrf": token}).status_code == 400
    r = client.post(f"/part/{RUN}/1/label", data={"label": "broken", "csrf": token})
    assert r.status_code == 400 and "one of defective, good, unsure" in r.text
    r = client.post(f"/part/{RUN}/1/label", data={"label": "good", "note": "x" * 600, "csrf": token})
    assert r.status_code == 400 and "at most 500" in r.text
    for query, message in (("min_score=abc", "not a number"), ("since=yesterday", "expected ISO 8601"),
                           ("decision=reject' OR '1'='1", "one of reject, pass, skip"), ("page=0", "whole number"),
                           ("since=2027-01-16&until=2027-01-15", "since must be before until")):
        r = client.get(f"/decisions?{query}")
        assert r.status_code == 400 and message in r.text, query
    assert stored_labels(db) == []


def test_sql_in_a_filter_is_only_a_value(station):
    db, app, _ = station
    client = client_as(app, "vera")
    for key in ("node", "model"):
        for value in ("x' OR '1'='1", "'; DROP TABLE labels; --", "/cell_a' --"):
            r = client.get("/decisions", params={key: value})
            assert r.status_code == 200 and count_of(r.text) == 0, (key, value)
    assert count_of(client.get("/decisions").text) == 15
    assert stored_labels(db) == []  # the table is still there


def test_a_huge_body_is_refused_before_it_is_read(station):
    db, app, _ = station
    client = client_as(app, "rita")
    token = csrf_of(client.get("/decisions").text)
    r = client.post(f"/part/{RUN}/1/label", data={"label": "good", "csrf": token, "note": "x" * 2_000_000})
    assert r.status_code == 413 and "nothing was changed" in r.text
    chunks = (b"label=good&csrf=" + token.encode() + b"&note=" + b"x" * 100_000 for _ in range(1))
    r = client.post(f"/part/{RUN}/1/label", content=chunks,  # streamed: no Content-Length
                    headers={"content-type": "application/x-www-form-urlencoded"})
    assert r.status_code == 413
    files = {"upload": ("big.bin", b"\0" * 500_000, "application/octet-stream")}
    assert client.post(f"/part/{RUN}/1/label", data={"label": "good", "csrf": token}, files=files).status_code == 413
    assert stored_labels(db) == []


def test_filters(station):
    _, app, _ = station
    client = client_as(app, "vera")
    counts = {"": 15, "node=/cell_b": 5, "decision=reject": 4, "node=/cell_a&decision=pass": 5,
              "min_score=1.5": 4, "max_score=0.25": 5, "max_score=0.45": 6, "model=m2": 2,
              "since=2027-01-15T08:05:00&until=2027-01-15T08:09:00": 4, f"since={T0 + 6000}": 5}
    for query, n in counts.items():
        assert count_of(client.get(f"/decisions?{query}").text) == n, query
    _label(app, [(1, "good")])
    assert count_of(client.get("/decisions?label=unlabelled").text) == 14
    assert count_of(client.get("/decisions?label=good").text) == 1


def test_pages_of_the_list(target, tmp_path):
    db = make_store(target, [decision(s) for s in range(queries.PAGE_SIZE + 3)])
    client = client_as(create_app(db), "vera")
    first = client.get("/decisions")
    assert count_of(first.text) == queries.PAGE_SIZE + 3 and first.text.count('class="open"') == queries.PAGE_SIZE
    second = client.get("/decisions?page=2")
    assert second.text.count('class="open"') == 3 and 'id="older"' not in second.text
    assert f"/part/{RUN}/0\"" in second.text  # the oldest last
    db.close()


def test_the_part_page_shows_the_evidence_and_how_it_was_judged(station):
    _, app, root = station
    client = client_as(app, "vera")
    page = client.get(f"/part/{RUN}/2").text
    assert 'id="pic-image"' in page and 'id="pic-heatmap"' in page
    assert "score <b>2</b>, threshold 1: above: reject" in page
    assert "<th title=\"model id" not in page and ">m1<" in page
    ev = read_evidence(root, queries.part(app.state.db, RUN, 2)["evidence"])
    for name, path in (("image.png", ev.image), ("heatmap.png", ev.heatmap)):
        r = client.get(f"/part/{RUN}/2/{name}")
        assert r.status_code == 200 and r.headers["content-type"] == "image/png" and r.content == path.read_bytes()
    assert 'id="no-pictures"' in client.get(f"/part/{RUN}/1").text  # odd parts kept none
    assert client.get(f"/part/{RUN}/1/image.png").status_code == 404
    assert "Not judged: invalid_input" in client.get(f"/part/{RUN}/9").text


def test_pictures_come_only_from_inside_the_evidence_root(target, tmp_path):
    root, outside = tmp_path / "evidence", tmp_path / "secret"
    outside.mkdir()
    (outside / "image.png").write_bytes(b"\x89PNG not yours")
    rows = [decision(0, evidence="../secret"), decision(1, evidence=str(outside)), decision(2),
            decision(3, evidence="link")]
    db = make_store(target, rows, root)
    (root / "link").symlink_to(outside)  # a folder inside the root that leads out of it
    client = client_as(create_app(db, str(root)), "vera")
    for seq in (0, 1, 3):
        assert 'id="no-pictures"' in client.get(f"/part/{RUN}/{seq}").text
        assert client.get(f"/part/{RUN}/{seq}/image.png").status_code == 404
    for name in ("meta.json", "anomaly_map.npy", "..%2F..%2F..%2Fsecret%2Fimage.png", "%2e%2e"):
        assert client.get(f"/part/{RUN}/2/{name}").status_code == 404, name
    assert client.get(f"/part/{RUN}/2/image.png").status_code == 200
    # without --evidence: the root each row recorded, where it exists on this machine
    assert client_as(create_app(db), "vera").get(f"/part/{RUN}/2/image.png").status_code == 200
    db.close()


def _label(app, verdicts):
    db = app.state.db
    for seq, label in verdicts:
        labels.add_label(db, queries.part(db, RUN, seq), label, "rita")


def test_the_dashboard_figures_on_known_decisions(station):
    db, app, _ = station
    _label(app, KNOWN_LABELS)
    a, b = queries.dashboard(db, queries.Filters())
    assert (a["node"], a["parts"], a["judged"], a["rejects"], a["reject_rate"]) == ("/cell_a", 10, 9, 4, 0.4)
    assert (a["reviewed_rejects"], a["false_rejects"], a["false_reject_rate"]) == (3, 1, pytest.approx(1 / 3))
    assert (a["reviewed_passes"], a["escapes"], a["unsure"]) == (1, 1, 1)
    assert a["latency_ms"]["p50"] == pytest.approx(5.5) and a["latency_ms"]["max"] == 10.0
    assert (b["node"], b["parts"], b["rejects"], b["false_reject_rate"], b["latency_ms"]["p95"]) == \
        ("/cell_b", 5, 0, None, 50.0)
    window = queries.Filters.parse({"since": str(T0 + 60), "until": str(T0 + 60 * 3)})
    a, = queries.dashboard(db, window)  # seq 1 and 2: both rejects, both (latest) labelled defective
    assert (a["parts"], a["rejects"], a["reviewed_rejects"], a["false_reject_rate"]) == (2, 2, 2, 0.0)
    client = client_as(app, "vera")
    page = client.get("/dashboard").text
    assert '<td class="reject-rate">40.00 %</td>' in page
    assert '<td class="false-reject-rate">33.33 % (1 of 3)</td>' in page
    assert page.count('class="plot"') == 2
    png = client.get("/plot/drift.png", params={"node": "/cell_a"})
    assert png.status_code == 200 and png.content.startswith(b"\x89PNG")


@pytest.mark.full_only  # a PostgreSQL server of its own, stopped and started
def test_the_station_reconnects_after_the_database_restarts(tmp_path):
    from pg_server import PostgresServer, why_unavailable

    if why_unavailable():
        pytest.skip(why_unavailable())
    server = PostgresServer(tmp_path / "pg").start()
    try:
        db = make_store(server.url(), known_rows())
        client = client_as(create_app(db), "rita")
        server.stop_now()
        r = client.get("/decisions")
        assert r.status_code == 503 and "127.0.0.1" in r.text  # says the database cannot be reached
        server.start_again()
        assert count_of(client.get("/decisions").text) == 15  # the next request reconnects (sessions outlive it)
        page = client.get(f"/part/{RUN}/1")
        assert client.post(f"/part/{RUN}/1/label", data={"label": "good", "csrf": csrf_of(page.text)}).status_code \
            == 200
        db.close()
    finally:
        server.stop()
