"""Take docs/ui.png, the README's picture of `elite ui`: the Generate tab after a generation.

Offline, with the tiny random models (so the images are noise), the sample pictures as concepts,
and Debian's chromium through playwright (the `test` and `ui` extras):

    python docs/screenshot_ui.py
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def main() -> None:
    from playwright.sync_api import expect, sync_playwright

    from elite_cli.api import Session
    from elite_cli.model.tiny import build_tiny_models
    from elite_cli.ui.server import start

    samples = REPO / "library" / "samples"
    with tempfile.TemporaryDirectory(prefix="elite-ui-shot-") as scratch:
        scratch = Path(scratch)
        models = build_tiny_models(scratch / "tiny")
        os.environ.update(ELITE_HOME=str(scratch / "home"), ELITE_OUTPUT_DIR=str(scratch / "out"), ELITE_DEVICE="cpu",
                          HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", ELITE_BASE_MODEL=str(models.base_model),
                          ELITE_IMAGE_ENCODER=str(models.image_encoder), ELITE_GLOBAL_MAPPER=str(models.global_mapper),
                          ELITE_LOCAL_MAPPER=str(models.local_mapper))
        with Session() as setup:
            for name in ("chelsea", "astronaut", "coffee"):
                setup.add_concept(samples / f"{name}.png", samples / f"{name}_mask.png", name=name,
                                  tags=["samples"])
        running = start(Session(), port=0)
        try:
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path="/usr/bin/chromium",
                                                     args=["--no-sandbox", "--disable-gpu", "--no-first-run"])
                page = browser.new_page(viewport={"width": 1280, "height": 860})
                page.set_default_timeout(300_000)
                expect.set_options(timeout=300_000)
                page.goto(running.url)
                expect(page.locator("#picker")).to_contain_text("<chelsea>")
                prompt = page.locator("#prompt textarea")
                # A click in the gallery puts the concept at the end of the prompt (on the server).
                page.locator("#picker").get_by_text("<chelsea>").click()
                expect(prompt).to_have_value("<chelsea>")
                prompt.fill("<chelsea> and")
                prompt.press("Tab")
                page.locator("#picker").get_by_text("<coffee>").click()
                expect(prompt).to_have_value("<chelsea> and <coffee>")
                prompt.fill("<chelsea> and <coffee> on a beach, oil painting")
                for element, value in (("#count", 2), ("#seed", 42), ("#steps", 4)):
                    box = page.locator(f"{element} input[type=number]").first
                    box.fill(str(value))
                    box.press("Tab")
                page.locator("#generate").click()
                expect(page.locator("#run-info")).to_contain_text("Made 2 images")
                page.mouse.move(0, 0)
                page.evaluate("window.scrollTo(0, 0)")
                target = REPO / "docs" / "ui.png"
                page.screenshot(path=str(target))
                browser.close()
                print(f"wrote {target}")
        finally:
            running.stop()


if __name__ == "__main__":
    main()
