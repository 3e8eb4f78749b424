"""`make ui-check`: notebook 06 in a real browser.

Starts JupyterLab headless on localhost, opens a smoke-sized copy of notebook 06 in Chromium (Debian's package,
driven by Playwright for Python), runs every cell, picks a preset prompt (an XSTest safe homonym) in the prober, clicks Run, waits for the
answers, checks that the rendered table names every selected system, and saves a screenshot of the prober to
figures/06_prober.png. Exits 0 when all of that worked, 1 when something failed, and 77 (SKIP_EXIT) -- saying
so -- when no Chromium is installed to run it at all.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "06_probe.ipynb"
PRESET_SET = "XSTest safe · homonyms"
SKIP_EXIT = 77  # no browser here: the Makefile may treat this, and only this, as a skip
CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome")
# Without the background-networking flags Chromium keeps trying to reach Google on a closed network.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def find_chromium() -> str | None:
    env = os.environ.get("DISPSAFE_CHROMIUM")
    for candidate in (env, *CHROMIUM_CANDIDATES, shutil.which("chromium")):
        if candidate and Path(candidate).is_file():
            return candidate
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def smoke_copy(workdir: Path) -> Path:
    """Notebook 06 with `SMOKE = True` in a cell after its parameters cell (as papermill injects it), not run."""
    import nbformat

    nb = nbformat.read(NOTEBOOK, as_version=4)
    index = next(i for i, c in enumerate(nb.cells) if "parameters" in c.get("metadata", {}).get("tags", []))
    injected = nbformat.v4.new_code_cell("SMOKE = True", metadata={"tags": ["injected-parameters"]})
    nb.cells.insert(index + 1, injected)
    out = workdir / "06_probe_ui_check.ipynb"
    nbformat.write(nb, out)
    return out


def start_lab(root: Path, port: int, token: str, env: dict[str, str]) -> subprocess.Popen:
    cmd = [
        sys.executable,
        "-m",
        "jupyterlab",
        "--no-browser",
        f"--port={port}",
        "--ip=127.0.0.1",
        f"--ServerApp.token={token}",
        f"--ServerApp.root_dir={root}",
        "--LabApp.expose_app_in_browser=True",  # window.jupyterapp: run all cells as a user's menu click does
        "--allow-root",
    ]
    log = open(root / "jupyterlab.log", "w")  # noqa: SIM115 -- closed with the process
    proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/api/status?token={token}", timeout=2)
            return proc
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError(f"JupyterLab exited early; see {root / 'jupyterlab.log'}") from None
            time.sleep(1)
    proc.terminate()
    raise RuntimeError(f"JupyterLab did not answer within 120 s; see {root / 'jupyterlab.log'}")


def drive(url: str, chromium: str, screenshot: Path, timeout_s: int) -> dict:
    """Open the notebook, run all, use the prober; returns what was checked."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1900})
        try:
            return _use_the_prober(page, url, screenshot, timeout_s)
        except Exception:
            page.screenshot(path=str(screenshot.with_name(screenshot.stem + "_failure.png")), full_page=True)
            raise
        finally:
            browser.close()


def _use_the_prober(page, url: str, screenshot: Path, timeout_s: int) -> dict:
    page.goto(url)
    page.wait_for_function("window.jupyterapp && document.querySelector('.jp-Notebook')", timeout=120_000)
    kernel = "window.jupyterapp.shell.currentWidget?.sessionContext?.session?.kernel"
    page.wait_for_function(f"!!{kernel}", timeout=120_000)  # the notebook's kernel has started
    page.evaluate("window.jupyterapp.commands.execute('notebook:run-all-cells')")
    try:  # JupyterLab asks once whether to fetch its news; answer, so the toast does not cover the widget
        page.get_by_role("button", name="No", exact=True).click(timeout=20_000)
    except Exception:  # noqa: BLE001 -- no toast this time
        pass
    prompt_box = page.locator("textarea[placeholder^='Type a prompt']")
    prompt_box.wait_for(state="visible", timeout=timeout_s * 1000)
    prober = page.locator(".widget-vbox", has=prompt_box).first
    prober.scroll_into_view_if_needed()
    preset_set = prober.locator(".widget-dropdown", has=page.locator("label", has_text="preset set"))
    labels = preset_set.locator("select").evaluate("s => Array.from(s.options).map(o => o.text)")
    labels = [label.replace("\xa0", " ") for label in labels]  # ipywidgets shows spaces as no-break spaces
    # a borderline-safe set: the screenshot shows over-refusal, and no model's answer to a harmful request
    wanted = [label for label in labels if label.startswith(PRESET_SET)]
    if not wanted:
        raise RuntimeError(f"no preset set {PRESET_SET!r} among the prober's options: {labels[:5]}")
    chosen_set = wanted[0]
    preset_set.locator("select").select_option(index=labels.index(chosen_set))
    preset = prober.locator(".widget-dropdown", has=page.locator("label", has_text="preset")).nth(1)
    page.wait_for_function(
        "el => el.options.length > 1", arg=preset.locator("select").element_handle(), timeout=30_000
    )
    preset.locator("select").select_option(index=1)
    page.wait_for_function("el => el.value.length > 0", arg=prompt_box.element_handle(), timeout=30_000)
    prompt = prompt_box.input_value()
    selected = prober.locator(".widget-select-multiple select").evaluate(
        "s => Array.from(s.selectedOptions).map(o => o.text.replace(/\u00a0/g, ' '))"
    )
    prober.locator("button", has_text="Run").first.click()
    status = prober.locator(
        ".widget-label", has_text="done"
    )  # the widget says done once the answers are shown
    status.wait_for(state="visible", timeout=timeout_s * 1000)
    page.wait_for_function(
        "([el, n]) => el.querySelectorAll('.widget-html table th').length >= n",
        arg=[prober.element_handle(), len(selected)],
        timeout=60_000,
    )
    headers = [
        h.replace("\xa0", " ").strip() for h in prober.locator(".widget-html table th").all_inner_texts()
    ]
    missing = [s for s in selected if s not in headers]
    screenshot.parent.mkdir(parents=True, exist_ok=True)
    prober.screenshot(path=str(screenshot))
    return {
        "prompt": prompt,
        "preset_set": chosen_set,
        "selected": selected,
        "headers": headers,
        "missing": missing,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--screenshot", default=str(ROOT / "figures" / "06_prober.png"))
    parser.add_argument("--timeout", type=int, default=900, help="seconds to wait for the notebook and a run")
    args = parser.parse_args(argv)
    chromium = find_chromium()
    if chromium is None:
        print("ui-check SKIPPED: no Chromium found (install Debian's `chromium` or set DISPSAFE_CHROMIUM)")
        return SKIP_EXIT
    try:
        import playwright  # noqa: F401
    except ImportError:
        print("ui-check FAILED: Playwright for Python is not installed (pip install -e '.[dev]')")
        return 1
    with tempfile.TemporaryDirectory(prefix="ui-check-") as tmp:
        work = Path(tmp)
        notebook = smoke_copy(work)
        token = os.urandom(12).hex()
        port = free_port()
        env = {
            **os.environ,
            "DISPSAFE_RESULTS": str(work / "results"),
            "DISPSAFE_FIGURES": str(work / "figures"),
        }
        env.pop("DISPSAFE_HEADLESS", None)  # the widgets must show
        lab = start_lab(work, port, token, env)
        try:
            url = f"http://127.0.0.1:{port}/lab/tree/{notebook.name}?token={token}"
            started = time.time()
            found = drive(url, chromium, Path(args.screenshot), args.timeout)
        except Exception as err:
            print(f"ui-check FAILED: {type(err).__name__}: {err}")
            print((work / "jupyterlab.log").read_text()[-3000:])
            return 1
        finally:
            lab.terminate()
            lab.wait(timeout=30)
    found["seconds"] = round(time.time() - started)
    print(json.dumps(found, indent=2, ensure_ascii=False))
    if not found["selected"] or found["missing"]:
        print(f"ui-check FAILED: systems selected but not shown: {found['missing'] or 'none selected'}")
        return 1
    print(
        f"ui-check passed: {len(found['selected'])} systems answered side by side; screenshot {args.screenshot}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
