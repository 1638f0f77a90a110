"""Drives a real headless Chromium over the DevTools protocol.

    python3 drive.py BROWSER URL STEP...

Opens URL, waits for its load event, then evaluates each STEP (a
JavaScript expression; a promise is awaited) in the page, in order, and
prints their values as one JSON list. A step that throws ends the run with
exit 1 and the exception on stderr. Used by tests/it/process.rs for what
`--dump-dom` cannot do: click, and read the address bar.
"""
import asyncio
import json
import re
import subprocess
import sys
import tempfile
import threading
import urllib.request

import websockets


def start(browser):
    profile = tempfile.mkdtemp()
    proc = subprocess.Popen(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
         "--no-first-run", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--remote-debugging-port=0", f"--user-data-dir={profile}", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    for line in proc.stderr:
        found = re.search(r"DevTools listening on ws://[^:]+:(\d+)/", line)
        if found:
            # Keep draining, so the browser never blocks on a full pipe.
            threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()
            return proc, found.group(1)
    raise RuntimeError("the browser did not start its DevTools endpoint")


async def drive(port, url, steps):
    targets = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list"))
    page = next(t for t in targets if t["type"] == "page")
    async with websockets.connect(page["webSocketDebuggerUrl"], max_size=None) as ws:
        next_id = 0
        events = []

        async def call(method, **params):
            nonlocal next_id
            next_id += 1
            await ws.send(json.dumps({"id": next_id, "method": method, "params": params}))
            while True:
                message = json.loads(await ws.recv())
                if message.get("id") == next_id:
                    if "error" in message:
                        raise RuntimeError(f"{method}: {message['error']}")
                    return message["result"]
                events.append(message.get("method"))

        await call("Page.enable")
        await call("Page.navigate", url=url)
        while "Page.loadEventFired" not in events:
            events.append(json.loads(await ws.recv()).get("method"))
        results = []
        for step in steps:
            answer = await call("Runtime.evaluate", expression=step, awaitPromise=True,
                                returnByValue=True)
            if "exceptionDetails" in answer:
                raise RuntimeError(f"{step}: {answer['exceptionDetails']}")
            results.append(answer["result"].get("value"))
        return results


def main():
    browser, url, steps = sys.argv[1], sys.argv[2], sys.argv[3:]
    proc, port = start(browser)
    try:
        results = asyncio.run(asyncio.wait_for(drive(port, url, steps), 60))
        print(json.dumps(results))
    except Exception as error:  # noqa: BLE001 - the test reads the reason
        print(f"drive.py: {error}", file=sys.stderr)
        sys.exit(1)
    finally:
        proc.kill()
        proc.wait()


if __name__ == "__main__":
    main()
