"""An operator watching the console's Live page in Debian's Chromium until stopped.

For benchmarks that measure what an open console costs: signs in as an
operator (made with ``lifeline operators add`` beforehand), opens the Live
page, which then receives its server-sent updates, and stays until killed.
Prints ``watching`` once the first update has arrived.

    python loadtests/console_watcher.py http://127.0.0.1:8090 NAME  (password on stdin)
"""

from __future__ import annotations

import asyncio
import os
import sys


async def watch(console: str, name: str, password: str) -> None:
    from playwright.async_api import async_playwright

    chromium = os.environ.get("LIFELINE_CHROMIUM", "/usr/bin/chromium")
    async with async_playwright() as p:
        browser = await p.chromium.launch(
            executable_path=chromium, args=["--headless=new", "--no-sandbox", "--disable-gpu"]
        )
        page = await browser.new_page(viewport={"width": 1366, "height": 860})
        await page.goto(f"{console}/login")
        await page.fill("#name", name)
        await page.fill("#password", password)
        await page.click("button[type=submit]")
        await page.wait_for_url(f"{console}/")
        await page.wait_for_function(
            "() => Number(document.querySelector('main').dataset.updates) >= 1"
        )
        print("watching", flush=True)
        await asyncio.Event().wait()  # until the process is stopped


if __name__ == "__main__":
    asyncio.run(watch(sys.argv[1], sys.argv[2], sys.stdin.readline().rstrip("\n")))
