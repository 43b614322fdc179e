"""The locust users of bench/review_load.py (run by it; not on its own).

Each simulated MD is its own signed-in user (md01, md02, …) and loops: next item → the item →
its CXR and every candidate overlay (PNG, the review page's first display size) → 3–8 s of
thinking → a decision. Every 201 is written, with the user and item, to REVIEW_LOAD_OUT
(JSON lines), so that the orchestrator can match them with the Decision rows.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import threading

from locust import HttpUser, between, events, task

# "md01:<session key>,md02:<session key>,…"
MDS = [tuple(pair.split(":")) for pair in os.environ.get("REVIEW_LOAD_MDS", "").split(",") if pair]
OUT = os.environ.get("REVIEW_LOAD_OUT", "review_load.jsonl")
THINK = tuple(float(x) for x in os.environ.get("REVIEW_LOAD_THINK", "3,8").split(","))
CHOICES = "ABCDE"

_names = itertools.cycle(MDS)
_lock = threading.Lock()
_out = open(OUT, "a", encoding="utf-8")  # noqa: SIM115 - closed when locust quits


def _record(**row) -> None:
    with _lock:
        _out.write(json.dumps(row) + "\n")
        _out.flush()


@events.quitting.add_listener
def _close(environment, **kwargs) -> None:
    _out.close()


class MD(HttpUser):
    wait_time = between(0, 0)  # the thinking is inside the task, between loading and deciding

    def on_start(self) -> None:
        with _lock:
            self.username, session = next(_names)
        # Signed in beforehand (a session made by the orchestrator): password hashing is slow
        # on purpose and is not what this benchmark measures. The sign-in page sets the CSRF
        # cookie.
        self.client.cookies.set("sessionid", session, domain="127.0.0.1")
        self.client.get("/accounts/login/", name="sign-in page")

    @task
    def review_one(self) -> None:
        with self.client.get(
            "/api/review-items/next/", name="next", catch_response=True
        ) as response:
            if response.status_code == 204:
                response.success()
                self.stop(force=False)
                return
            if response.status_code != 200:
                response.failure(f"next: {response.status_code}")
                return
            item = response.json()
        self.client.get(f"/api/review-items/{item['id']}/", name="item")
        self.client.get(item["image_url"] + "?max=512", name="image png")
        for candidate in item["candidates"]:
            self.client.get(candidate["overlay_url"] + "&max=512", name="candidate png")
        seconds = random.uniform(*THINK)
        self._sleep(seconds)
        with self.client.post(
            item["decision_url"],
            json={"choice": random.choice(CHOICES[: len(item["candidates"])]), "seconds": seconds},
            headers={"X-CSRFToken": self.client.cookies.get("csrftoken", "")},
            name="decision",
            catch_response=True,
        ) as response:
            if response.status_code == 201:
                _record(user=self.username, item=item["id"], status=201)
                response.success()
            elif response.status_code == 409:
                _record(user=self.username, item=item["id"], status=409)
                response.success()  # counted apart: the share of 409s is a result
            else:
                _record(user=self.username, item=item["id"], status=response.status_code)

    def _sleep(self, seconds: float) -> None:
        import gevent

        gevent.sleep(seconds)
