"""`raycf serve` over real HTTP against a real Ray Serve application on the tests' Ray cluster: every user's
served list is `raycf score`'s topk/ (a neural model, EASE, and a users-scheme model whose held-out users come with
their fold-in); bad requests answer one JSON line and leave the replica serving; serving
another run rolls the replicas over with no failed request; bad input to the command is one line, exit status 2,
before anything is deployed."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import free_ports, run_raycf

import raycf
from raycf.data.spec import DataSpec
from raycf.models.config import TrainConfig
from raycf.score.job import ScoreOptions, run_scoring
from raycf.train.trainer import run_training

QUICKSTART = {"n_users": 600, "n_items": 200}
K = 5


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Quickstart-size runs: Mult-VAE and EASE on records, Mult-DAE on the `users` scheme (held-out users ranked
    from their fold-in items)."""
    base = tmp_path_factory.mktemp("serve")
    plans = {
        "multvae": (DataSpec(synthetic=QUICKSTART), TrainConfig.for_model("multvae", hidden=16, max_epochs=3)),
        "ease": (DataSpec(synthetic=QUICKSTART), TrainConfig.for_model("ease", l2=10.0)),
        "users": (DataSpec(synthetic=QUICKSTART, scheme="users", heldout_users=60),
                  TrainConfig.for_model("multdae", hidden=16, max_epochs=3)),
    }
    for name, (data, config) in plans.items():
        run_training(data, config, fractions=(0.6, 0.2, 0.2), mask="train", out=base / name)
    return {name: base / name for name in plans}


@pytest.fixture(scope="module")
def port(ray_cluster) -> Iterator[int]:
    """A free port on 127.0.0.1 that the first deployment starts Serve on; Serve shut down at the end."""
    from ray import serve

    yield free_ports(1)[0]
    serve.shutdown()


def post(url: str, body: object, client: httpx.Client | None = None) -> httpx.Response:
    return (client or httpx).post(url, content=body if isinstance(body, bytes) else json.dumps(body), timeout=60)


@pytest.mark.parametrize("name", ["multvae", "ease", "users"])
def test_served_lists_are_exactly_raycf_scores(runs, port, tmp_path, name) -> None:
    run = runs[name]
    scored = run_scoring(str(run), ScoreOptions(out=str(tmp_path / "scores"), k=K, actors=1))
    expected = pd.read_parquet(Path(scored.out) / "topk").sort_values(["user_id", "rank"])
    serving = raycf.serve(str(run), port=port, cpus_per_replica=0.25, max_batch_size=16)
    assert serving.url == f"http://127.0.0.1:{port}"
    facts = httpx.get(f"{serving.url}/model", timeout=30).json()
    assert facts["model"] == scored.summary["model"] and facts["split_sha256"] == scored.summary["split_sha256"]
    users = expected["user_id"].unique().tolist()
    answers = post(f"{serving.url}/recommend/batch",
                   {"queries": [{"user_id": user, "k": K} for user in users]}).json()["results"]
    served = pd.DataFrame([(answer["user_id"], rank, item, score, answer["fallback"])
                           for answer in answers
                           for rank, (item, score) in enumerate(zip(answer["items"], answer["scores"]), 1)],
                          columns=["user_id", "rank", "item_id", "score", "fallback"])
    assert served["user_id"].tolist() == expected["user_id"].tolist()
    assert served["item_id"].tolist() == expected["item_id"].tolist()
    assert served["fallback"].tolist() == expected["fallback"].tolist()
    assert np.allclose(served["score"], expected["score"], rtol=1e-5, atol=1e-6)
    # single requests from 8 clients at once, batched by the replicas, give the same lists
    lists = expected.groupby("user_id", sort=False)["item_id"].apply(list)
    chosen = users[:: max(1, len(users) // 48)]
    with httpx.Client() as client:
        def ask(user: object) -> list:
            return post(f"{serving.url}/recommend", {"user_id": user, "k": K}, client).json()["items"]

        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(8) as pool:
            assert list(pool.map(ask, chosen)) == [lists[user] for user in chosen]


def test_bad_requests_get_one_json_line_and_the_replica_keeps_serving(runs, port) -> None:
    serving = raycf.serve(str(runs["ease"]), port=port, cpus_per_replica=0.25)
    url = serving.url
    cases = [
        (post(f"{url}/recommend", b"{not json"), 400, r"^body: malformed JSON \("),
        (post(f"{url}/recommend", {"user_id": -5}), 404, r"^body\.user_id: unknown user -5; ask for a user of"),
        (post(f"{url}/recommend", {"user_id": serving.example_user, "k": 0}), 422,
         r"^body\.k: expected an integer from 1 to 1000, got 0$"),
        (post(f"{url}/recommend", {"items": 17}), 422, r"^body\.items: expected a list of raw item ids, got int$"),
        (post(f"{url}/recommend", {"items": [1, None]}), 422, r"^body\.items holds None, not an item id"),
        (post(f"{url}/recommend", {"items": [], "user_id": 1}), 422, r"^body: give either user_id .* or items"),
        (post(f"{url}/recommend", [1, 2]), 422, r"^body: expected a JSON object with user_id or items, got list$"),
        (post(f"{url}/recommend/batch", {"queries": [{"items": []}, {"items": [], "k": "5"}]}), 422,
         r"^queries\[1\]\.k: expected an integer"),
        (post(f"{url}/recommend/batch", {"users": []}), 422, r"^body: expected \{\"queries\": \[QUERY, \.\.\.\]\}"),
        (httpx.get(f"{url}/recommend", timeout=30), 405, r"^/recommend takes POST, not GET$"),
        (httpx.get(f"{url}/nowhere", timeout=30), 404, r"^no route /nowhere; use POST /recommend"),
    ]
    for response, status, message in cases:
        body = response.json()
        assert response.status_code == status and list(body) == ["error"], (response.status_code, body)
        assert "\n" not in body["error"] and pd.Series([body["error"]]).str.contains(message).all(), body["error"]
    assert httpx.get(f"{url}/healthz", timeout=30).json() == {"status": "ok"}
    cold = post(f"{url}/recommend", {"items": [10**12], "k": 3}).json()
    assert cold["fallback"] is True and cold["unknown_items"] == 1 and len(cold["items"]) == 3
    assert cold["model"] == "ease" and cold["trial"] is None and len(cold["split_sha256"]) == 64


def test_serving_another_run_rolls_over_without_a_failed_request(runs, port) -> None:
    serving = raycf.serve(str(runs["ease"]), port=port, cpus_per_replica=0.25)
    user = serving.example_user
    seen: list[str] = []
    failures: list[str] = []
    done = threading.Event()

    def keep_asking() -> None:
        with httpx.Client() as client:
            while not done.is_set():
                try:
                    response = post(f"{serving.url}/recommend", {"user_id": user, "k": K}, client)
                    if response.status_code != 200:
                        failures.append(f"{response.status_code} {response.text}")
                    else:
                        seen.append(response.json()["model"])
                except httpx.HTTPError as error:
                    failures.append(repr(error))

    asker = threading.Thread(target=keep_asking)
    asker.start()
    try:
        raycf.serve(str(runs["multvae"]), port=port, cpus_per_replica=0.25)
        deadline = time.monotonic() + 60
        while (not seen or seen[-1] != "multvae") and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        done.set()
        asker.join()
    assert not failures, failures[:3]
    assert seen[0] == "ease" and seen[-1] == "multvae"
    switched = seen.index("multvae")
    assert set(seen[switched:]) == {"multvae"}  # once rolled over, the old model never answers again


def test_bad_input_to_the_command_is_one_line_before_anything_is_deployed(runs, port, tmp_path, capsys) -> None:
    other = tmp_path / "mismatch"
    subprocess.run(["cp", "-r", str(runs["multvae"]), str(other)], check=True)
    subprocess.run(["rm", "-r", str(other / "split")], check=True)
    subprocess.run(["cp", "-r", str(runs["users"] / "split"), str(other / "split")], check=True)
    cases = [
        (["serve", str(tmp_path / "nothing")], r"nothing: "),
        (["serve", str(other)], r"checkpoint"),
        (["serve", str(runs["ease"]), "--address", f"127.0.0.1:{free_ports(1)[0]}"], r"^cannot reach a Ray cluster"),
        (["serve", str(runs["ease"]), "--port", "70000"], r"^--port must be from 1 to 65535, got 70000$"),
        (["serve", str(runs["ease"]), "--replicas", "0"], r"^--replicas must be an integer >= 1, got 0$"),
    ]
    for args, message in cases:
        capsys.readouterr()
        assert run_raycf(*args) == 2
        # (Ray's own background threads may log to stderr too: raycf's lines are those it starts with raycf:)
        lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("raycf")]
        assert len(lines) == 1 and pd.Series([lines[0].removeprefix("raycf: error: ")]).str.contains(message).all(), \
            lines
    config = tmp_path / "serve.yaml"
    assert run_raycf("serve", str(runs["ease"]), "--port", "8123", "--replicas", "2", "--config", str(config)) == 0
    written = yaml.safe_load(config.read_text())
    assert written["http_options"] == {"host": "127.0.0.1", "port": 8123}
    (app,) = written["applications"]
    assert app["import_path"] == "raycf.serving.app:build" and app["args"]["run"] == str(runs["ease"])
    assert app["args"]["replicas"] == 2


def test_a_busy_port_and_a_missing_ray_serve_are_refused_before_ray_starts(runs) -> None:
    environment = {name: value for name, value in os.environ.items() if name != "RAY_ADDRESS"}
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        code = ("import sys\nif sys.argv[1]:\n    sys.modules[sys.argv[1]] = None\n"
                "from raycf.cli.main import main\nmain(sys.argv[2:])")
        for hidden, args, message in [
            ("", ["--port", str(taken)], f"raycf: error: 127.0.0.1:{taken} is not free"),
            ("uvicorn", [], "raycf: error: raycf serve needs Ray Serve (ray.serve, uvicorn not installed); install "
                            "it with pip install 'raycf[serve]' (or 'ray[serve]==2.60.0')"),
        ]:
            done = subprocess.run([sys.executable, "-c", code, hidden, "serve", str(runs["ease"]), *args],
                                  capture_output=True, text=True, timeout=120, env=environment)
            assert done.returncode == 2 and done.stderr.splitlines() == [done.stderr.strip()], done.stderr
            assert done.stderr.startswith(message)


def test_replicas_export_raycf_metrics_to_prometheus(ray_cluster, runs, port) -> None:
    """raycf's request, latency, fallback and batch-size metrics on the Ray nodes' Prometheus endpoints (the
    replica's node exports them; Ray reports them every few seconds, so they are polled)."""
    serving = raycf.serve(str(runs["ease"]), port=port, cpus_per_replica=0.25)
    assert post(f"{serving.url}/recommend", {"items": [], "k": 3}).json()["fallback"] is True
    endpoints = [f"http://{node['NodeManagerAddress']}:{node['MetricsExportPort']}/metrics"
                 for node in ray_cluster.nodes() if node["Alive"]]
    wanted = ("ray_raycf_serve_requests", "ray_raycf_serve_latency_ms_bucket", "ray_raycf_serve_fallbacks",
              "ray_raycf_serve_batch_size_bucket")
    deadline = time.monotonic() + 60
    while True:
        text = "\n".join(httpx.get(endpoint, timeout=10).text for endpoint in endpoints)
        found = [name for name in wanted if f"\n{name}{{" in text or f"\n{name}_total{{" in text]
        if len(found) == len(wanted) or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert found == list(wanted), found
    assert 'route="/recommend"' in text and 'status="200"' in text


def test_the_command_serves_until_ctrl_c_and_the_dashboard_shows_the_application(runs, tmp_path) -> None:
    """`raycf serve RUN` as a person runs it (its own local Ray, token auth on): the URL, the curl example that
    answers, the Ray dashboard's Serve page (headless Chromium, signed in with `ray get-auth-token`) showing the
    application RUNNING; Ctrl-C then stops it cleanly."""
    from test_dashboard import BIN, browser_and_driver, stop, wait_until

    browser, chromedriver = browser_and_driver()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as when
    from selenium.webdriver.support.ui import WebDriverWait

    env = {key: value for key, value in os.environ.items() if key != "RAY_ADDRESS" and not key.startswith("RAY_AUTH")}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    (port,) = free_ports(1)
    command = subprocess.Popen([sys.executable, "-m", "raycf", "serve", str(runs["ease"]), "--port", str(port),
                                "--cpus-per-replica", "0.5"], env=env, start_new_session=True,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(command.stdout), daemon=True)
    reader.start()

    def output() -> str:
        return "".join(lines)

    driver = None
    try:
        curl = wait_until(lambda: next((line for line in lines if line.startswith("curl ")), None), 180,
                          "the curl example", output)
        assert f"serving {runs['ease']} at http://127.0.0.1:{port}" in output()
        body = curl.split(" -d ", 1)[1].strip().strip("'")
        answer = post(f"http://127.0.0.1:{port}/recommend", body.encode()).json()
        assert answer["model"] == "ease" and len(answer["items"]) == 10, answer
        dashboard = next(line for line in lines if line.startswith("Ray dashboard: ")).split(": ", 1)[1].strip()
        token = subprocess.run([str(BIN / "ray"), "get-auth-token"], env=env, capture_output=True, text=True,
                               timeout=60, check=True).stdout.strip()
        options = webdriver.ChromeOptions()
        options.binary_location = browser
        for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1600,1000"):
            options.add_argument(argument)
        driver = webdriver.Chrome(options=options, service=Service(chromedriver))
        wait = WebDriverWait(driver, 60)
        driver.get(f"{dashboard}/#/serve")
        dialog = wait.until(when.visibility_of_element_located((By.XPATH, "//*[@role='dialog']")))
        dialog.find_element(By.CSS_SELECTOR, "input[type=password]").send_keys(token)
        dialog.find_element(By.XPATH, ".//button[normalize-space()='Submit']").click()
        application = (By.XPATH, "//tr[td[.//text()[normalize-space()='raycf']] and td[.//*[normalize-space()="
                                 "'RUNNING'] or normalize-space()='RUNNING']]")
        try:
            wait.until(when.visibility_of_element_located(application))
        except Exception:
            driver.save_screenshot(str(tmp_path / "serve-page.png"))
            raise AssertionError(f"no RUNNING raycf application on {driver.current_url}: "
                                 f"{driver.find_element(By.TAG_NAME, 'body').text[:2000]}") from None
        command.send_signal(signal.SIGINT)
        assert command.wait(60) == 0, output()[-3000:]
        assert lines[-1].strip() == "raycf serve: stopped", output()[-3000:]
    finally:
        if driver is not None:
            driver.quit()
        stop(command)
        reader.join(10)
