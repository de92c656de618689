"""Render RELIABILITY.md from the figures of one run of the reliability suite.

    SYNCD_RELIABILITY_FIGURES=/tmp/figures.json python3 -m pytest -q tests/reliability
    python3 -m tests.reliability.render /tmp/figures.json > RELIABILITY.md

Every figure in the file comes from that one JSON file, next to the command that produced it.
The prose (what each test does, the watermark rule under clock skew, the problems found) is
here, so that a new run changes the figures and nothing else.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

SUITE = "python3 -m pytest -q tests/reliability"


def _get(doc: dict[str, Any], section: str, key: str, default: Any = "n/a") -> Any:
    return doc.get(section, {}).get("values", {}).get(key, default)


def _cmd(doc: dict[str, Any], section: str) -> str:
    return f"`{doc.get(section, {}).get('command', SUITE)}`"


def _mib(kib: Any) -> str:
    return f"{kib / 1024:.0f} MiB" if isinstance(kib, int | float) else "n/a"


def render(doc: dict[str, Any]) -> str:
    run = doc.get("run", {}).get("values", {})
    kl = "kill_loop"
    ack = _get(doc, kl, "acknowledged", {}) or {}
    fuzz = _get(doc, "fuzzing", "inputs_by_parser", {}) or {}
    lost = sum(v for v in (_get(doc, kl, "events_lost", 0), _get(doc, "broker_restart", "lost", 0),
                           _get(doc, "flood", "lost", 0)) if isinstance(v, int))
    out: list[str] = []
    w = out.append
    w("# Reliability and security of syncd\n")
    w("syncd promises that nothing acknowledged is lost, nothing is applied twice, and nobody "
      "gets in who should not. `tests/reliability/` checks it under faults, bad input and abuse, "
      "against real processes on loopback: `syncd run` as a subprocess on SQLite, mosquitto, the "
      "Shopify and Amazon SP-API simulators over HTTP. This file is generated from the figures "
      "of **one run** of "
      "that suite (`tests/reliability/render.py`); each figure names the command that produced "
      "it.\n")
    w(f"Run: {run.get('finished', 'n/a')}, {run.get('seconds', 'n/a')} s for the whole suite, "
      f"Python {run.get('python', '?')}, {run.get('cpus', '?')} CPUs, Linux "
      f"{run.get('kernel', '?')}, {run.get('mosquitto', '?')}, SQLite {run.get('sqlite', '?')}."
      "\n")
    w("Reproduce:\n")
    w("```sh\nSYNCD_RELIABILITY_FIGURES=/tmp/figures.json python3 -m pytest -q tests/reliability"
      "\npython3 -m tests.reliability.render /tmp/figures.json > RELIABILITY.md\n```\n")
    w("The suite is part of `scripts/test.sh` (hence `.ci/run`) in its bounded form. The longer "
      "soak (`SYNCD_SOAK=1`: 60 kills, a 60,000-event flood, ten times the fuzzing examples, "
      "200 schemathesis examples per operation) is `python3 -m bench.soak` (see "
      "`bench/soak.py`), which also renders this file from its own figures.\n")

    w("## The figures\n")
    w("| figure | value | command |\n|---|---|---|")
    w(f"| kills survived (SIGKILL of `syncd run` at random moments under mixed traffic) | "
      f"**{_get(doc, kl, 'kills_survived')}** of {_get(doc, kl, 'kills')} "
      f"(seed {_get(doc, kl, 'seed')}) | {_cmd(doc, kl)} |")
    w(f"| events lost (acknowledged, then missing from the ledger) | **{lost}** (kill loop "
      f"{_get(doc, kl, 'events_lost')}, broker restart {_get(doc, 'broker_restart', 'lost')}, "
      f"flood {_get(doc, 'flood', 'lost')}) | {_cmd(doc, kl)}; {_cmd(doc, 'broker_restart')}; "
      f"{_cmd(doc, 'flood')} |")
    w(f"| events doubled | **{_get(doc, kl, 'events_doubled')}** | {_cmd(doc, kl)} |")
    w(f"| bad inputs tried | **{_get(doc, 'fuzzing', 'inputs_total')}** hypothesis inputs over "
      f"{len(fuzz)} parsers (below), plus {_get(doc, 'schemathesis', 'test_cases')} "
      f"schemathesis cases | {_cmd(doc, 'fuzzing')}; {_cmd(doc, 'schemathesis')} |")
    for key in ("outage_http-503", "outage_connection-refused"):
        kind = "503s" if "503" in key else "refused connections"
        w(f"| channel outage survived ({kind}) / catch-up after it | "
          f"{_get(doc, key, 'outage_s')} s with {_get(doc, key, 'sales_during')} sales on "
          f"{_get(doc, key, 'skus')} SKUs / **{_get(doc, key, 'catch_up_s')} s**, "
          f"{_get(doc, key, 'pushes_per_sku_after')} push per SKU, "
          f"{_get(doc, key, 'coalesced')} values coalesced | {_cmd(doc, key)} |")
    w(f"| peak memory under a flood of {_get(doc, 'flood', 'events')} MQTT events "
      f"({_get(doc, 'flood', 'publishers')} tills at full speed) | "
      f"**{_mib(_get(doc, 'flood', 'peak_rss_kib'))}** RSS (idle "
      f"{_mib(_get(doc, 'flood', 'rss_kib_baseline'))}; see problem 4) | {_cmd(doc, 'flood')} |")
    w(f"| systemd exposure score | **{_get(doc, 'systemd', 'exposure')} "
      f"{_get(doc, 'systemd', 'rating')}** ({_get(doc, 'systemd', 'systemd')}) | "
      f"{_cmd(doc, 'systemd')} |")
    w(f"| secrets found in logs or answers | **{_get(doc, 'secrets', 'leaks')}** in "
      f"{_get(doc, 'secrets', 'daemon_log_lines')} daemon log lines, "
      f"{_get(doc, 'secrets', 'http_answers')} HTTP answers and "
      f"{_get(doc, 'secrets', 'in_process_log_records')} in-process log records | "
      f"{_cmd(doc, 'secrets')} |\n")

    w("### Bad inputs tried, by parser\n")
    w("| parser | inputs |\n|---|---|")
    for name, n in fuzz.items():
        w(f"| {name} | {n} |")
    checks = ", ".join(_get(doc, "schemathesis", "checks", []))
    w(f"| schemathesis on `docs/openapi.yaml` ({checks}) | "
      f"{_get(doc, 'schemathesis', 'test_cases')} |\n")
    w("Allowed outcomes: a clear error (`MalformedMessage`, `EdiError`), a dead letter, or a 4xx "
      "with a JSON error. After every refused HTTP request the ledger, the levels and the "
      "reservations are checked unchanged (no partial application); every request has a "
      "deadline (no hang).\n")

    w("## Faults\n")
    w("### SIGKILL loop (`test_kill_loop.py`)\n")
    w(f"{_get(doc, kl, 'kills')} SIGKILLs of `syncd run` (SQLite, MQTT POS on mosquitto, "
      "Shopify connector on the simulator, the HTTP API) at random moments (seeded) while a till "
      "publishes sales and counts over MQTT QoS 1 (persistent session), a back office posts "
      "receipts, clients create, collect and release holds, and Shopify delivers signed "
      "`orders/create` webhooks (some redelivered). A request whose answer was lost in a kill is "
      "sent again after the restart, as a real client would. After every kill: the ledger "
      "replayed from scratch equals the stored levels and reservations, and no `(connector, "
      "event_id)` is stored twice. After the last restart: every acknowledged message and "
      "request is in the ledger, applied sales equal distinct sales published, on-hand equals "
      "the initial count less sales and collected holds, and Shopify shows for every SKU the "
      "figure the ledger publishes.\n")
    w(f"Acknowledged during the run: {', '.join(f'{v} {k}' for k, v in ack.items())}; "
      f"{_get(doc, kl, 'ledger_rows')} ledger rows; HTTP answers lost in kills (then resent): "
      f"{_get(doc, kl, 'lost_http_answers')}; slowest restart to ready "
      f"{_get(doc, kl, 'restart_to_ready_s_max')} s; {_get(doc, kl, 'seconds')} s in all.\n")
    w("### Channel outage and throttle storm (`test_outage.py`)\n")
    w("The simulator answers 503 (or the port is closed) for a few seconds while the tills sell "
      "every SKU many times. Shopify then receives exactly one current value per SKU; the "
      "outbox never holds more than one row per SKU; `syncd_outbox_coalesced_total` counts the "
      "values that were replaced before they could be pushed.\n")
    w("| variant | outage | sales meanwhile | pushes tried meanwhile | catch-up | pushes per SKU "
      "after | coalesced | RSS before → after |\n|---|---|---|---|---|---|---|---|")
    for key in ("outage_http-503", "outage_connection-refused"):
        w(f"| {key.removeprefix('outage_')} | {_get(doc, key, 'outage_s')} s | "
          f"{_get(doc, key, 'sales_during')} | {_get(doc, key, 'calls_during_outage')} | "
          f"{_get(doc, key, 'catch_up_s')} s | {_get(doc, key, 'pushes_per_sku_after')} | "
          f"{_get(doc, key, 'coalesced')} | {_mib(_get(doc, key, 'rss_kib_before'))} → "
          f"{_mib(_get(doc, key, 'rss_kib_after'))} |")
    w("")
    ts = "throttle_storm"
    w(f"Throttle storm: another app empties the cost bucket (200 points, 50/s) every 250 ms for "
      f"{_get(doc, ts, 'storm_s')} s while sales go on: {_get(doc, ts, 'calls')} calls "
      f"({_get(doc, ts, 'calls_per_s')}/s, {_get(doc, ts, 'throttled_answers')} of them "
      f"answered `THROTTLED`), no tight loop, every figure correct "
      f"{_get(doc, ts, 'catch_up_s')} s after the storm. {_cmd(doc, ts)}\n")
    az = "amazon_throttle_storm"
    w(f"Amazon 429 storm (`test_throttle_amazon.py`): another app of the seller empties the "
      f"`patchListingsItem` bucket (5/s, burst 5) every 300 ms for {_get(doc, az, 'storm_s')} s "
      f"while the warehouse posts {_get(doc, az, 'counts_posted')} counts of "
      f"{_get(doc, az, 'skus')} SKUs: {_get(doc, az, 'patch_calls')} PATCH calls "
      f"({_get(doc, az, 'calls_per_s')}/s, {_get(doc, az, 'throttled_answers')} answered 429 "
      f"`QuotaExceeded`), no tight loop, every listing at the last count "
      f"{_get(doc, az, 'catch_up_s')} s after the storm and the outbox empty. {_cmd(doc, az)}\n")
    w("### Broker restart and flood (`test_broker.py`)\n")
    br, fl = "broker_restart", "flood"
    w(f"mosquitto restarted in the middle of {_get(doc, br, 'published')} QoS 1 sales: "
      f"{_get(doc, br, 'acknowledged')} acknowledged by the broker, all "
      f"{_get(doc, br, 'applied')} applied exactly once, {_get(doc, br, 'lost')} lost "
      f"({_get(doc, br, 'all_stored_after_s')} s from the restart to the last one stored). "
      f"{_cmd(doc, br)}\n")
    w(f"Flood: {_get(doc, fl, 'events')} single-event messages from "
      f"{_get(doc, fl, 'publishers')} tills published in {_get(doc, fl, 'publish_s')} s, all "
      f"stored after {_get(doc, fl, 'stored_after_s')} s, {_get(doc, fl, 'lost')} lost, each "
      f"applied once; peak RSS {_mib(_get(doc, fl, 'peak_rss_kib'))} (idle "
      f"{_mib(_get(doc, fl, 'rss_kib_baseline'))}). {_cmd(doc, fl)}\n")
    bm = "backlog_memory"
    w(f"Memory under a backlog (problem 4, fixed): a daemon starting with "
      f"{_get(doc, bm, 'backlog_small')} messages waiting for its session peaked "
      f"{_mib(_get(doc, bm, 'small_peak_growth_kib'))} above its idle RSS, with "
      f"{_get(doc, bm, 'backlog_big')} waiting {_mib(_get(doc, bm, 'big_peak_growth_kib'))} "
      f"above: the connector stops reading the socket at 1,000 unacknowledged messages, so the "
      f"backlog stays at the broker. {_cmd(doc, bm)}\n")
    w("### Database trouble (`test_database.py`)\n")
    dl, df = "database_locked", "disk_full"
    w(f"- **Locked by another process** (`BEGIN EXCLUSIVE` held {_get(doc, dl, 'locked_s')} s, "
      "past the 5 s `busy_timeout`): `/readyz` answers 503 with `\"database\": false`, "
      "`syncd_db_up` is 0 and `syncd_db_errors_total` grows; reads are served from memory; the "
      "write is refused with 503 `database_unavailable` and is not in the ledger; once the "
      f"lock is gone `/readyz` is 200 again after {_get(doc, dl, 'ready_again_after_s')} s and "
      f"the client's retry is applied. The refused write was answered after "
      f"{_get(doc, dl, 'write_answered_503_after_s')} s. "
      f"A SIGTERM right after such a recovery exits 0 (problem 3, fixed). {_cmd(doc, dl)}")
    w(f"- **Disk full** ({_get(doc, df, 'filesystem')} mounted for the state directory, then "
      "filled): the next commit fails, the batch is answered 503 `database_unavailable` at "
      "once and none of it is in the ledger, `/readyz` is 503, `syncd_db_up` 0; once space is "
      f"freed `/readyz` is 200 after {_get(doc, df, 'ready_again_after_s')} s and the same "
      f"batch is applied. {_cmd(doc, df)} (needs root to mount; SQLite's `max_page_count` "
      "is per connection and cannot be imposed on the daemon's connections from outside)\n")
    w("### Clock skew (`test_clock_skew.py`)\n")
    w(CLOCK_SKEW)

    w("## Bad input and abuse\n")
    w(f"- OpenAPI: `docs/openapi.yaml` describes `/healthz`, `/readyz` and every `/v1` route "
      "(bearer security scheme, the JSON error schema); a test checks it against the routes "
      f"the daemon serves. schemathesis ran {_get(doc, 'schemathesis', 'test_cases')} cases "
      f"({_get(doc, 'schemathesis', 'max_examples_per_operation')} examples per operation, "
      f"seed 8), {_get(doc, 'schemathesis', 'passed')} passed. {_cmd(doc, 'schemathesis')}")
    w(f"- `/v1` without a token, with a wrong one, or with another scheme: "
      f"{_get(doc, 'api_auth', 'refused_requests')} requests over "
      f"{_get(doc, 'api_auth', 'routes')} routes, all 401, nothing changed. Bodies over "
      f"`max_body_bytes` ({_get(doc, 'api_auth', 'body_limit_bytes')}) are 413 on every write "
      f"route, and a request without the token is refused before its body is read. "
      f"{_cmd(doc, 'api_auth')}")
    w(f"- Constant-time comparisons, checked in the code (AST): "
      f"{', '.join(f'`{c}`' for c in _get(doc, 'constant_time', 'checked', []))}. "
      f"{_cmd(doc, 'constant_time')}")
    w(f"- Webhooks: a wrong secret, no signature or another body's signature is 401 and "
      f"applies nothing; a redelivered `orders/create` (same `X-Shopify-Event-Id`, even with a "
      f"re-signed different body) reserves once. {_cmd(doc, 'webhook_replay')}")
    w("- Secrets: every daemon of the suite runs with known secrets (API token, Shopify token "
      "and webhook secret, MQTT password); their logs, every HTTP answer read, and every log "
      "record of the in-process daemons are searched for them at the end of the session; one "
      "daemon is driven into errors on purpose (Shopify refuses its token, its broker is "
      "unreachable, wrong tokens, bad signatures) and `check-config` errors name references, "
      f"never values. Found: **{_get(doc, 'secrets', 'leaks')}**.\n")

    w("## Problems found\n")
    w("All of them are fixed; each is guarded by the test it names.\n")
    w(PROBLEMS)
    return "\n".join(out) + "\n"


CLOCK_SKEW = """\
syncd trusts `occurred_at`; it never compares it with its own clock. Rule 3 (a count moves the
watermark to its `occurred_at`; a delta at or before the watermark is `stale`; a count keeps the
deltas stamped after it) then does this with a till whose clock is 10 minutes off (each case is
a test against the real engine):

- **10 min ahead, sends a count**: the watermark jumps 10 minutes into the future; every
  delta from correct clocks stamped in the next 10 minutes is `stale`: real sales are not
  deducted until real time passes the false stamp.
- **10 min ahead, sends a sale**: applied, and kept in the tail as happening 10 minutes from
  now; a correct count taken in those 10 minutes already includes that sale, but the rule
  re-applies it on top of the count: deducted twice.
- **10 min behind, sends sales after a correct count**: stamped before the watermark, so
  `stale`, never deducted (until its stamps pass the watermark).
- **10 min behind, sends a count after a correct count**: older than the watermark, `stale`,
  ignored.
- **Any skew, deltas only** (no count in the window): deltas commute, totals are right.

So a skewed till is harmless without counts and wrong by up to the skew's worth of traffic with
them. What an operator can do: keep tills on NTP, and alert on skew. A possible guard in syncd
(not built): refuse or dead-letter events stamped more than a configurable margin in the future
of the server clock, and export the observed skew per source as a metric.
"""

PROBLEMS = """\
1. **The ledger order of a batch was not its application order**: fixed. `Engine._process`
   claimed (inserted) the non-command rows of a batch first and the applied command rows
   (holds) after them, so a replay could refuse a hold when a later sale of the same batch took
   the last unit: replay ≠ state. Commands are now claimed in the same insert, in application
   order, and the rows of commands that were not applied are deleted in the same transaction;
   `test_clock_skew.py::test_replay_of_a_batch_mixing_a_hold_and_a_sale_equals_the_state`
   guards it.
2. **A write during a long database lock was not answered until the lock cleared**: fixed
   (`Engine._fail` now answers the waiting requests and `on_failure` callbacks first, then
   reloads the touched state); `test_database.py::
   test_a_write_is_refused_promptly_while_the_database_stays_locked` guards it.
3. **SIGTERM could hang after a failed commit**: fixed while this suite was written
   (8523043, 0688ca6); `test_database.py::test_shutdown_after_a_commit_failure_completes` now
   guards it. `Engine._next_batch` awaited `gather(getter, poker)` inside
   `contextlib.suppress(asyncio.CancelledError)`, which swallowed a cancellation of the engine
   task itself, so `Engine.stop()` could await it for ever.
4. **Memory under an MQTT backlog grew with the backlog**: fixed. The connector relied on the
   broker honouring its MQTT v5 Receive Maximum (1000), but mosquitto 2.0.11 (Debian 12) sends
   thousands more unacknowledged QoS 1 messages when it replays a stored session, and aiomqtt
   buffers them without bound (about +3 KB per waiting message). `connectors/mqtt_pos/_gate.py`
   now removes the paho socket from the event loop's readers at 1,000 unacknowledged messages
   and reads again at 500, so TCP flow control keeps the backlog at the broker; the connector
   also consumes while its SUBSCRIBE is pending (the SUBACK queues behind the backlog).
   `test_broker.py::test_memory_under_a_backlog_does_not_grow_with_the_backlog` guards it.
5. **`POST /v1/holds` answered 500 to a deeply nested JSON body**: fixed (`syncd.api.read_json`
   catches `RecursionError` as `syncd.wire._load` does); `test_fuzz.py::
   test_http_deeply_nested_hold_body_is_a_400` guards it.
"""


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python3 -m tests.reliability.render FIGURES.json > RELIABILITY.md",
              file=sys.stderr)
        return 2
    doc = json.loads(Path(args[0]).read_text())
    sys.stdout.write(render(doc))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
