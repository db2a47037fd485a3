"""The dashboard of a running study, as a person opens it: a headless Chromium (Debian's `chromium` and its
`chromedriver`, installed by .ci/run) opens the URL `raycf tune` prints, meets Ray's sign-in page (Ray >= 2.52
protects a local Ray with a token), enters the output of `ray get-auth-token` as raycf's hint says, finds the
study's driver job by its name on the Jobs page, and every running trial on the Actors page by its trial id and
model (the actor's repr). The screenshot is kept in $RAYCF_TEST_ARTIFACTS (else the test's
tmp_path).

Without the browser or its driver the test is skipped, naming what is missing, except where $CI is set:
CI installs them, and a skip there would go unnoticed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
BROWSERS = ("chromium", "chromium-browser", "google-chrome")
SIGN_IN = "Authentication Token Required"
JOB_NAME = "raycf tune dashboard"
"""The Jobs page's name of the study's driver (`raycf tune <run name>`)."""


def missing(what: str) -> None:
    message = f"{what}; on Debian: apt-get install chromium chromium-driver (and pip install -e '.[test]')"
    if os.environ.get("CI"):
        pytest.fail(f"{message} -- CI must have them (.ci/run installs them)")
    pytest.skip(message)


def browser_and_driver() -> tuple[str, str]:
    browser = next((path for path in map(shutil.which, BROWSERS) if path), None)
    driver = shutil.which("chromedriver")
    if browser is None or driver is None:
        missing(f"no {' / '.join(BROWSERS)}" if browser is None else "no chromedriver")
    return browser, driver


def long_study(path: Path) -> Path:
    """The quickstart's trials (FIFO, 2 at a time below), each running far longer than the test looks."""
    text = (ROOT / "studies" / "quickstart.yaml").read_text()
    for old, new in (("type: asha", "type: fifo"), ("max_t: 30", "max_t: 100000"),
                     ("  grace_period: 3\n  reduction_factor: 3\n", ""), ("patience: 10", "patience: 100000")):
        assert old in text, old
        text = text.replace(old, new)
    path.write_text(text)
    return path


def wait_until(condition: Callable[[], object], seconds: float, what: str, output: Callable[[], str]) -> object:
    deadline = time.monotonic() + seconds
    while not (value := condition()):
        assert time.monotonic() < deadline, f"{what}: not within {seconds} s; raycf tune printed:\n{output()[-4000:]}"
        time.sleep(0.2)
    return value


def running_trials(run_dir: Path, count: int) -> dict[str, str] | None:
    """Trial id -> model of the `count` trials that started (each has a directory with params.json), None
    before they have."""
    started = {}
    for params in run_dir.glob("run_trial_*/params.json"):
        try:
            model = json.loads(params.read_text())["trial"]["model"]
        except (OSError, ValueError, KeyError):
            continue
        started["_".join(params.parent.name.split("_")[2:4])] = model  # run_trial_<id>_<number>_<values>
    return started if len(started) >= count else None


LISTEN = "0A"
"""A listening socket's state in /proc/net/tcp."""
COMPONENTS = (  # (README's name, how its process's program (and script) name reads), the first match wins
    ("dashboard agent", ("dashboard/agent.py", "ray::DashboardAgent")),
    ("dashboard", ("dashboard/dashboard.py", "ray-dashboard-")),
    ("runtime env agent", ("runtime_env/agent/main.py", "ray::RuntimeEnvAgent")), ("GCS", ("gcs_server",)),
    ("raylet", ("raylet",)), ("autoscaler monitor", ("autoscaler/_private/monitor.py",)),
    ("raycf (the driver)", ("-m raycf",)), ("worker", ("ray::",)),
)


ALWAYS_OPEN = {("dashboard", "127.0.0.1"), ("GCS", "all interfaces"), ("raylet", "all interfaces"),
               ("raycf (the driver)", "all interfaces"), ("worker", "all interfaces")}
"""What a running study always has open, on those interfaces."""


def interface(address: str) -> str:
    """/proc/net/tcp's hex local address as README's Security table names it."""
    host = address.split(":")[0]
    if set(host) == {"0"}:
        return "all interfaces"
    if host in ("0100007F", "00000000000000000000000001000000"):
        return "127.0.0.1"
    return "the node's IP"


def fd_target(fd: Path) -> str | None:
    """What a file descriptor points at (`socket:[inode]`), None once it is closed."""
    try:
        return os.readlink(fd)
    except OSError:
        return None


def listening(pids: list[int]) -> set[tuple[str, str]]:
    """(component, interface) of every TCP socket these processes listen on."""
    sockets = {}
    for table in ("tcp", "tcp6"):
        for row in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
            fields = row.split()
            if fields[3] == LISTEN:
                sockets[fields[9]] = interface(fields[1])
    seen = set()
    for pid in pids:
        try:
            words = Path(f"/proc/{pid}/cmdline").read_text().split("\0")
            fds = list(Path(f"/proc/{pid}/fd").iterdir())
        except OSError:  # the process has ended
            continue
        command = " ".join(words[:3])  # the program, and a Python's script or module
        inodes = [link.removeprefix("socket:[").rstrip("]") for link in map(fd_target, fds) if link]
        component = next((name for name, marks in COMPONENTS if any(mark in command for mark in marks)),
                         command.strip()[:80])
        seen |= {(component, sockets[inode]) for inode in inodes if inode in sockets}
    return seen


def security_table() -> set[tuple[str, str]]:
    """README's table of what a study opens: (component, interface)."""
    text = (ROOT / "README.md").read_text()
    start = text.index("### Security")
    rows = re.findall(r"^\| ([^|]+?) \| `([^|`]+)` \|", text[start:text.index("\n### ", start)], re.MULTILINE)
    return {(component, where) for component, where in rows if component != "component"}


def session_processes(session: int) -> list[int]:
    """Processes of this session id (the study's driver, its local Ray, and Ray's workers)."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == session:  # after "pid (comm)": state, ppid, pgrp, session
            pids.append(int(stat.parent.name))
    return pids


def stop(study: subprocess.Popen) -> None:
    """Ctrl-C the study (Tune saves its state, the driver shuts down its local Ray), then harder; then make
    sure nothing of its Ray is left (`ray stop` would stop every Ray on the machine)."""
    for sig, grace in ((signal.SIGINT, 45), (signal.SIGTERM, 15), (signal.SIGKILL, 10)):
        try:
            os.killpg(study.pid, sig)
        except ProcessLookupError:
            pass
        try:
            study.wait(grace)
            break
        except subprocess.TimeoutExpired:
            continue
    deadline = time.monotonic() + 30
    while (left := session_processes(study.pid)) and time.monotonic() < deadline:
        time.sleep(0.5)
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert not left, f"the study's Ray outlived its driver by 30 s: {left}"


def test_the_dashboard_shows_a_studys_trials_after_signing_in_and_its_ports_are_readmes(tmp_path: Path) -> None:
    """The dashboard, as above; and every TCP port the study's processes listen on, on the interface README's
    Security table gives its component."""
    browser, chromedriver = browser_and_driver()
    try:
        from selenium import webdriver
        from selenium.common.exceptions import TimeoutException
        from selenium.webdriver.chrome.service import Service
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support import expected_conditions as when
        from selenium.webdriver.support.ui import WebDriverWait
    except ImportError:
        missing("no selenium")
    artifacts = Path(os.environ.get("RAYCF_TEST_ARTIFACTS") or tmp_path)
    artifacts.mkdir(parents=True, exist_ok=True)
    # A local Ray as a user gets one: token auth (Ray's default), the token in ~/.ray/auth_token.
    env = {key: value for key, value in os.environ.items() if key != "RAY_ADDRESS" and not key.startswith("RAY_AUTH")}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    study = subprocess.Popen([sys.executable, "-m", "raycf", "tune", str(long_study(tmp_path / "long.yaml")),
                              "--storage", str(tmp_path / "runs"), "--name", "dashboard", "--max-concurrent", "2",
                              "--dashboard-host", "127.0.0.1"],
                             cwd=ROOT, env=env, start_new_session=True, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, bufsize=1)
    lines: list[str] = []

    def read() -> None:  # all along, so that the pipe never fills and stalls the study
        for line in study.stdout:
            lines.append(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()

    def output() -> str:
        return "".join(lines)

    def printed_url() -> tuple[str, str] | None:
        """The "Ray dashboard: URL" line and the one under it (the token hint)."""
        assert study.poll() is None, f"raycf tune exited {study.returncode}:\n{output()[-4000:]}"
        seen = list(lines)
        return next(((line, hint) for line, hint in zip(seen, seen[1:]) if line.startswith("Ray dashboard: ")), None)

    driver = None
    try:
        line, hint = wait_until(printed_url, 120, "the dashboard's URL", output)
        url = line.removeprefix("Ray dashboard: ").strip()
        assert url.startswith("http://127.0.0.1:"), line
        assert "ray get-auth-token" in hint and "sign-in" in hint, f"no token hint under the URL:\n{output()[-4000:]}"
        token = subprocess.run([str(BIN / "ray"), "get-auth-token"], env=env, capture_output=True, text=True,
                               timeout=60, check=False)
        assert token.returncode == 0 and token.stdout.strip(), f"ray get-auth-token: {token.stdout}{token.stderr}"

        options = webdriver.ChromeOptions()
        options.binary_location = browser
        for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1600,1000"):
            options.add_argument(argument)  # --no-sandbox: CI runs as root
        driver = webdriver.Chrome(options=options, service=Service(chromedriver))
        wait = WebDriverWait(driver, 45)
        driver.get(url)
        try:
            dialog = wait.until(when.visibility_of_element_located(
                (By.XPATH, f"//*[@role='dialog'][.//*[normalize-space()='{SIGN_IN}']]")))
        except TimeoutException:
            raise AssertionError(f"{url} showed no '{SIGN_IN}' sign-in page") from None
        dialog.find_element(By.CSS_SELECTOR, "input[type=password]").send_keys(token.stdout.strip())
        WebDriverWait(dialog, 10).until(when.element_to_be_clickable(
            (By.XPATH, ".//button[normalize-space()='Submit']"))).click()
        try:
            wait.until(when.invisibility_of_element_located((By.XPATH, "//*[@role='dialog']")))
        except TimeoutException:
            raise AssertionError("the sign-in page stayed after submitting `ray get-auth-token`'s token") from None

        wait.until(when.element_to_be_clickable((By.XPATH, "//a[normalize-space()='Jobs']"))).click()
        job = (By.XPATH, f"//tr[td[normalize-space()='{JOB_NAME}']]")
        try:
            wait.until(when.visibility_of_element_located(job))
        except TimeoutException:
            raise AssertionError(f"no job named {JOB_NAME!r} on {driver.current_url}; it shows:\n"
                                 f"{driver.find_element(By.TAG_NAME, 'body').text[:3000]}") from None

        trials = wait_until(lambda: running_trials(tmp_path / "runs" / "dashboard", 2), 120, "two running trials",
                            output)
        wait.until(when.element_to_be_clickable((By.XPATH, "//a[normalize-space()='Actors']"))).click()
        for trial_id, model in trials.items():  # the repr: `trial <id> <model> <searched values>`
            named = f"trial {trial_id} {model}"  # then its searched values, if the model has any
            row = (By.XPATH, f"//tr[td[normalize-space()='{named}' or starts-with(normalize-space(), '{named} ')]"
                             " and td[.//*[normalize-space()='ALIVE']]]")
            try:
                WebDriverWait(driver, 90).until(when.visibility_of_element_located(row))
            except TimeoutException:
                raise AssertionError(f"no ALIVE actor 'trial {trial_id} {model} ...' on {driver.current_url} within "
                                     f"90 s; it shows:\n{driver.find_element(By.TAG_NAME, 'body').text[:3000]}\n"
                                     f"raycf tune printed:\n{output()[-3000:]}") from None
        assert "#/actors" in driver.current_url, driver.current_url
        # Nothing listens that README does not list, on the interface it says (some of Ray's helpers, the
        # dashboard agent's HTTP server and the autoscaler's metrics, open their ports late or not at all).
        table, opened = security_table(), set()
        for _ in range(10):
            opened |= listening(session_processes(study.pid))
            time.sleep(1)
        assert opened <= table and opened >= ALWAYS_OPEN, f"listening: {sorted(opened)}; README: {sorted(table)}"
        assert study.poll() is None, f"raycf tune exited {study.returncode}:\n{output()[-4000:]}"
        screenshot = artifacts / "dashboard-actors.png"
        assert driver.save_screenshot(str(screenshot)), screenshot
        print(f"dashboard screenshot: {screenshot}")
    except BaseException:
        if driver is not None:
            try:  # what the browser showed; a dead browser must not hide the failure itself
                driver.save_screenshot(str(artifacts / "dashboard-failure.png"))
                (artifacts / "dashboard-failure.html").write_text(driver.page_source)
                print(f"dashboard at the failure: {artifacts / 'dashboard-failure.png'}")
            except Exception:
                pass
        raise
    finally:
        if driver is not None:
            driver.quit()
        stop(study)
        reader.join(10)
