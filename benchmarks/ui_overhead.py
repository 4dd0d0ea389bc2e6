"""Benchmark: a generation through the web UI against the same generation through the API, in one process.

`elite ui` serves one `elite_cli.api.Session`. A click on Generate goes browser -> Gradio's
queue -> the session's worker thread -> `Session.generate` (PNG and history row) -> progress and
the image back to the page. The issue's target: the UI's second generation takes no longer than
the same generation through the API in the same process, plus 10%:

    ratio = (click on Generate until the page shows "Made ...") / (Session.generate, same settings)

Both sides use the same session, models and settings (one image, a fixed seed), alternating, after
one warm-up generation each (the UI's first generation is its warm-up: the target is about the
second). The browser is Debian's chromium driven by playwright (the `test` and `ui` extras).
Tiny models on the CPU, sized so that one generation takes seconds, as one Stable Diffusion
image does on a GPU:

    python benchmarks/ui_overhead.py                       # tiny models, CPU
    python benchmarks/ui_overhead.py --runs 5 --steps 30 --size 256
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

PROMPT = "<thing> on the beach"
CHROMIUM = "/usr/bin/chromium"
TARGET_RATIO = 1.10
SETTLE_S = 1.0
GENERATION_TIMEOUT_S = 600
# Sets window.eliteNewRun to a promise that resolves when #run-info shows a "Made ... run <id>" line
# whose id is not the one shown now (the previous run's).
WATCH_FOR_NEW_RUN = """() => {
    const shownRun = () => {
        const found = document.querySelector('#run-info').innerText.match(/Made .* run ([0-9a-f]{12})/);
        return found && found[1];
    };
    const before = shownRun();
    window.eliteNewRun = new Promise((resolve, reject) => {
        const observer = new MutationObserver(() => {
            const run = shownRun();
            if (run !== null && run !== before) { observer.disconnect(); resolve(run); }
        });
        observer.observe(document.querySelector('#run-info'), {childList: true, subtree: true, characterData: true});
        setTimeout(() => { observer.disconnect(); reject(new Error('no new "Made" line: the click missed?')); },
                   %d * 1000);
    });
}""" % GENERATION_TIMEOUT_S


def parse(argv: list[str] | None):
    from benchmarks import harness

    parser = harness.tiny_process_parser("ui_overhead", __doc__.split("\n\n")[0], runs="measured generations per side",
                                         default_runs=5, steps=25, size=256)
    return harness.parse_tiny_arguments(parser, argv)


def chromium_cpu_seconds() -> float:
    """CPU time (user + system) used so far by every chromium process of this machine."""
    import psutil

    total = 0.0
    for process in psutil.process_iter(["name", "cpu_times"]):
        if process.info["cpu_times"] is not None and "chrom" in (process.info["name"] or ""):
            total += process.info["cpu_times"].user + process.info["cpu_times"].system
    return total


def fill_number(page, element: str, value: int) -> None:
    box = page.locator(f"{element} input[type=number]").first
    box.fill(str(value))
    box.press("Tab")


def main(argv: list[str] | None = None) -> dict:
    args = parse(argv)
    from playwright.sync_api import sync_playwright

    from benchmarks import harness
    from elite_cli.api import Session
    from elite_cli.model.tiny import build_tiny_models
    from elite_cli.ui.server import start

    with tempfile.TemporaryDirectory(prefix="elite-ui-bench-") as scratch:
        scratch = Path(scratch)
        models = build_tiny_models(args.models_dir or scratch / "tiny")
        os.environ.update(ELITE_HOME=str(scratch / "home"), ELITE_OUTPUT_DIR=str(scratch / "out"), ELITE_DEVICE="cpu",
                          HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", ELITE_BASE_MODEL=str(models.base_model),
                          ELITE_IMAGE_ENCODER=str(models.image_encoder), ELITE_GLOBAL_MAPPER=str(models.global_mapper),
                          ELITE_LOCAL_MAPPER=str(models.local_mapper))
        picture, mask = harness.sample_pictures(scratch / "pictures", size=64)
        with Session() as setup:  # the concept both sides use, added once, not timed
            setup.add_concept(picture, mask, name="thing")
        running = start(Session(), port=0)
        settings = dict(seed=args.seed, steps=args.steps, width=args.size, height=args.size)

        browser_cpu = {"api": [], "ui": []}
        process_cpu = {"api": [], "ui": []}  # this process: torch's threads, Gradio's server, the session's worker

        def settle() -> None:
            # Both sides start from a quiet page: the page's last generation is followed by a refresh
            # of its history table, which must not run into the next measurement.
            time.sleep(SETTLE_S)

        def api_generation() -> float:
            settle()
            cpu_before, own_before = chromium_cpu_seconds(), time.process_time()
            started = time.perf_counter()
            running.worker.call(lambda session: session.generate(PROMPT, **settings))
            elapsed = time.perf_counter() - started
            process_cpu["api"].append(time.process_time() - own_before)
            browser_cpu["api"].append(chromium_cpu_seconds() - cpu_before)
            return elapsed

        api_times, ui_times = [], []
        try:
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=CHROMIUM, args=[
                    "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"])
                page = browser.new_page()
                page.set_default_timeout(600_000)
                page.goto(running.url)
                page.locator("#prompt textarea").fill(PROMPT)
                fill_number(page, "#seed", args.seed)
                fill_number(page, "#steps", args.steps)
                page.get_by_text("Scheduler and size").click()
                fill_number(page, "#width", args.size)
                fill_number(page, "#height", args.size)

                def ui_generation() -> float:
                    # Each run's line names its own run id: wait for a "Made" line with another one (the
                    # progress bar is drawn over the previous line meanwhile). The page is watched with a
                    # MutationObserver, which runs only when the page changes: polling on every animation
                    # frame would keep chromium drawing frames and take CPU from the generation measured.
                    page.evaluate(WATCH_FOR_NEW_RUN)
                    # A mouse click where the button is, sent as the clock starts: locator.click() would
                    # first wait for the button to hold still over two animation frames and check what
                    # receives the click (about 70 ms here, a third of the page's whole excess at 25 steps).
                    button = page.locator("#generate")
                    settle()
                    button.scroll_into_view_if_needed()
                    box = button.bounding_box()
                    cpu_before, own_before = chromium_cpu_seconds(), time.process_time()
                    started = time.perf_counter()
                    page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
                    # A promise: returns once the observer has seen the line (raises after GENERATION_TIMEOUT_S).
                    page.evaluate("window.eliteNewRun")
                    elapsed = time.perf_counter() - started
                    process_cpu["ui"].append(time.process_time() - own_before)
                    browser_cpu["ui"].append(chromium_cpu_seconds() - cpu_before)
                    page.wait_for_function("document.querySelector('#generate').disabled === false", polling=100)
                    return elapsed

                api_generation()  # warm-up: the models load here
                warmup_ui = ui_generation()
                for samples in (*browser_cpu.values(), *process_cpu.values()):
                    samples.clear()  # the CPU figures are of the measured generations only
                for _ in range(args.runs):
                    api_times.append(api_generation())
                    ui_times.append(ui_generation())
                browser.close()
        finally:
            running.stop()
    api_median, ui_median = statistics.median(api_times), statistics.median(ui_times)
    ratio = ui_median / api_median
    # Each page generation against the API generation just before it: the machine's drift between
    # pairs cancels out, so this figure varies less from run to run than the ratio of medians.
    pair_ratio = statistics.median(ui / api for api, ui in zip(api_times, ui_times))
    payload = {
        "settings": {"steps": args.steps, "size": args.size, "runs": args.runs, "images": 1},
        "api_generate_s": api_median,
        "ui_generate_s": ui_median,
        "ui_first_generation_s": warmup_ui,
        "ratio_ui_over_api": ratio,
        "pair_ratio_median": pair_ratio,
        "target": {"ratio_at_most": TARGET_RATIO, "met": ratio <= TARGET_RATIO},
        "runs": {"api_s": api_times, "ui_s": ui_times},
        "chromium_cpu_s": {"during_api": browser_cpu["api"], "during_ui": browser_cpu["ui"]},
        "server_process_cpu_s": {"during_api": process_cpu["api"], "during_ui": process_cpu["ui"]},
    }
    print(f"one image, {args.steps} steps, {args.size}x{args.size}, tiny models on the CPU (median of {args.runs}):")
    print(f"  Session.generate (API)             {api_median:8.2f} s")
    print(f"  click to result in the page (UI)   {ui_median:8.2f} s")
    print(f"  chromium CPU during a generation   {statistics.median(browser_cpu['ui']):8.2f} s (UI), "
          f"{statistics.median(browser_cpu['api']):.2f} s (API)")
    print(f"  this process's CPU (torch, server) {statistics.median(process_cpu['ui']):8.2f} s (UI), "
          f"{statistics.median(process_cpu['api']):.2f} s (API)")
    print(f"  ratio UI / API                     {ratio:8.3f}   (target <= {TARGET_RATIO}: "
          f"{'met' if ratio <= TARGET_RATIO else 'NOT met'})")
    print(f"  median of the pairs' ratios        {pair_ratio:8.3f}")
    harness.write_tiny_json("ui_overhead", args, payload)
    return payload


if __name__ == "__main__":
    main()
