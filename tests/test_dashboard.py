"""A dashboard trigger in a real browser: headless Debian Chromium, driven by Playwright, opens
a served deployment in the Prefect UI of a real local server, starts a "Custom run", changes a
field of the config form and submits it; ``paperline serve`` runs it, and the flow run
completes with the value typed into the form (checked through the API and in the pixels)."""
from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path

import pytest

from flows import FLOWS
from prefect_helpers import (TINY_ANIMECELEB, local_prefect_server, paperline_serve, tail, wait_for_deployment,
                             write_prefect_yaml)

CHROMIUM = "/usr/bin/chromium"
# Chromium as root in a sandbox with a closed network (see shared machine notes); Playwright
# adds --headless and a fresh --user-data-dir of its own.
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"]
ARTIFACTS = Path(__file__).parent / "artifacts"
DEPLOYMENT = "animeceleb-dashboard"
NEW_RESOLUTION = 40  # the served default is TINY_ANIMECELEB's 32


def form_field(page, label: str):
    """The input of one schema-form property, by its visible label (innermost match)."""
    prop = page.locator("div.schema-form-property").filter(
        has=page.locator("span.schema-form-property__label", has_text=re.compile(rf"^{re.escape(label)}( \(Optional\))?$")))
    return prop.last.locator("input").first


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.skipif(not os.access(CHROMIUM, os.X_OK), reason="Debian chromium is not installed (the test set-up (make test) adds it)")
def test_a_custom_run_from_the_dashboard_form_completes_with_the_typed_parameter(tmp_path):
    pytest.importorskip("playwright")
    from playwright.sync_api import sync_playwright
    from prefect import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    import pandas as pd

    from tasks.animeceleb.shards import read_image

    spec = FLOWS["animeceleb"]
    data = tmp_path / "data"
    prefect_yaml = write_prefect_yaml(tmp_path / "prefect.yaml", [{
        "name": DEPLOYMENT, "entrypoint": f"flows/{spec.module.split('.')[-1]}.py:{spec.function}",
        "parameters": {"config": TINY_ANIMECELEB},
    }])
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "dashboard_custom_run_form.png"
    t0 = time.monotonic()
    with local_prefect_server(tmp_path / "prefect_home") as url, \
            paperline_serve(prefect_yaml, url, data, tmp_path / "serve.log"), \
            temporary_settings({PREFECT_API_URL: url}), get_client(sync_client=True) as client:
        dep = wait_for_deployment(client, f"{spec.name}/{DEPLOYMENT}", tmp_path / "serve.log")
        ui = url.rsplit("/api", 1)[0]

        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS)
            try:
                page = browser.new_page(viewport={"width": 1400, "height": 1600})
                page.set_default_timeout(60_000)
                page.goto(f"{ui}/deployments/deployment/{dep.id}")
                page.get_by_text(DEPLOYMENT).first.wait_for()
                page.get_by_role("button", name="Run", exact=True).click()
                page.get_by_text("Custom run", exact=True).click()
                page.wait_for_url(re.compile(rf"/deployments/deployment/{dep.id}/run"))

                resolution = form_field(page, "Resolution")
                resolution.wait_for()
                assert resolution.input_value() == str(TINY_ANIMECELEB["resolution"])  # pre-filled from the deployment
                resolution.fill(str(NEW_RESOLUTION))
                assert form_field(page, "Identities").input_value() == str(TINY_ANIMECELEB["identities"])
                page.screenshot(path=str(shot), full_page=True)
                shutil.copy(shot, tmp_path / shot.name)
                print(f"\nscreenshot of the filled custom-run form: {shot}")

                # the run is the one the browser's own request creates
                with page.expect_response(lambda r: r.request.method == "POST"
                                          and r.url.endswith(f"/deployments/{dep.id}/create_flow_run")) as created:
                    page.get_by_role("button", name="Submit", exact=True).click()
                assert created.value.ok, created.value.text()
                run_id = created.value.json()["id"]
            finally:
                browser.close()
        t_submitted = time.monotonic() - t0

        deadline = time.monotonic() + 300
        while True:
            run = client.read_flow_run(run_id)
            if run.state.is_final():
                break
            assert time.monotonic() < deadline, f"run {run.name} still {run.state.type.value}:\n" + tail(tmp_path / "serve.log")
            time.sleep(3)
        t_done = time.monotonic() - t0
    assert run.state.is_completed(), (run.state, tail(tmp_path / "serve.log"))
    assert run.deployment_id == dep.id and not run.auto_scheduled
    # the form sent the whole config, with the edited field changed and the rest as served
    sent = run.parameters["config"]
    assert sent["resolution"] == NEW_RESOLUTION
    assert {k: sent[k] for k in TINY_ANIMECELEB if k != "resolution"} == {
        k: v for k, v in TINY_ANIMECELEB.items() if k != "resolution"}
    # and the flow used it: every rendered frame is NEW_RESOLUTION² pixels
    out = data / "animeceleb"
    manifest = pd.read_parquet(out / "dataset" / "manifest.parquet")
    assert len(manifest) == 4
    for row in manifest.itertuples():
        assert read_image(out / "shards", row.shard, row.member).shape == (NEW_RESOLUTION, NEW_RESOLUTION, 3)
    print(f"submitted from the form {t_submitted:.0f}s after start; run {run.name} completed at {t_done:.0f}s")
