"""The checks of a stress test: pure functions of the run's events and what the script did.

Each check takes its settings (testbed/stress/spec.py), the events (events.jsonl, every launch) and
the `Facts` the runner gathered, and returns a `Verdict`: passed, and the measured figure it rests on.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from testbed.events import ENDINGS
from testbed.stress import spec


class Verdict(NamedTuple):
    passed: bool
    figure: str  # what was measured, in words and numbers


@dataclass(frozen=True)
class Facts:
    """What the runner knows besides the events."""

    deadline_s: float                  # the scenario's round deadline, emulated seconds
    rounds: int                        # rounds planned
    actions: tuple[dict, ...] = ()     # steps carried out: do, clients, seq (last event seen), round (first affected)
    processes: int = 0                 # processes of the run seen, all launches
    orphans: tuple[str, ...] = ()      # those still running after the run ("c01 (pid 123)")
    reference: dict[int, str] | None = field(default=None)  # round -> digest of an uninterrupted run
    summary: dict | None = None        # the run's summary.json (None when it wrote none)


# ---------------------------------------------------------------- event helpers
def per_round(events: list[dict], kind: str) -> dict[int, dict]:
    """The last event of `kind` for each round (a resumed run may repeat an interrupted round)."""
    return {e["round"]: e for e in events if e["kind"] == kind}


def rows_of(events: list[dict], client: str) -> dict[int, dict]:
    """Round -> the client's row in that round's round_closed (rounds it was asked in)."""
    return {index: row for index, closed in sorted(per_round(events, "round_closed").items())
            for row in closed["clients"] if row["client"] == client}


def first(events: list[dict], kind: str, after_seq: int = -1, **fields) -> dict | None:
    return next((e for e in events if e["kind"] == kind and e["seq"] > after_seq
                 and all(e.get(k) == v for k, v in fields.items())), None)


def actions_of(facts: Facts, do: str, client: str | None = None) -> list[dict]:
    return [a for a in facts.actions if a["do"] == do and (client is None or client in a.get("clients", ()))]


def _rounds_text(indices: list[int]) -> str:
    return ", ".join(map(str, indices)) or "none"


# ---------------------------------------------------------------- checks
def completed(settings: spec.Completed, events: list[dict], facts: Facts) -> Verdict:
    aggregated = {e["round"] for e in events if e["kind"] == "round_aggregated"}
    end = next((e["kind"] for e in reversed(events) if e["kind"] in ENDINGS), None)
    passed = end == "run_finished" and aggregated == set(range(1, facts.rounds + 1))
    return Verdict(passed, f"{len(aggregated)}/{facts.rounds} rounds aggregated; "
                           f"{(end or 'no end recorded').replace('_', ' ')}")


# the aggregator's handling of an update it holds (decoding, checking and screening ~30 MB takes host time,
# the longer the busier the host): a round that passed its deadline closes once the update in hand is handled
HANDLING_KINDS = ("update_received", "update_rejected", "update_discarded", "late_update")
# the kinds the checks judge by, and those none looks at (a step's trigger may still wait for any kind: spec.py)
HANDLED = frozenset({"run_started", "run_resumed", *ENDINGS, "round_started", "round_closed", "round_aggregated",
                     "evaluated", *HANDLING_KINDS, "client_ready", "client_lost", "client_rejoined",
                     *spec.REFUSAL_KINDS})
IGNORED = frozenset({"dilation_changed", "client_joined", "client_state", "client_progress", "client_skipped",
                     "client_left", "model_sent", "handshake_failed", "connection_closed"})


def waited_s(events: list[dict]) -> dict[int, tuple[float, float]]:
    """Round -> (its wall_s, how long it waited for its clients): the same, except when it closed after its
    deadline, where the time after the last update the aggregator handled past the deadline is the wait."""
    waits: dict[int, tuple[float, float]] = {}
    started: dict[int, dict] = {}  # round -> its round_started
    handled: dict[int, dict | None] = {}  # round -> the last update handled in it
    for event in events:
        kind = event["kind"]
        if kind == "round_started":
            started[event["round"]], handled[event["round"]] = event, None
        elif kind in HANDLING_KINDS and started:
            handled[max(started)] = event
        elif kind == "round_closed":
            wall, deadline = event["wall_s"], event.get("deadline_s")
            begun, last = started.get(event["round"]), handled.get(event["round"])
            if deadline is None or wall <= deadline or begun is None or last is None \
                    or last["t"] - begun["t"] <= deadline:
                waits[event["round"]] = (wall, wall)
            else:  # the deadline passed while an update was in hand: the round waited for nobody after it
                waits[event["round"]] = (wall, deadline + max(0.0, event["t"] - last["t"]))
    return waits


def round_time(settings: spec.RoundTime, events: list[dict], facts: Facts) -> Verdict:
    waits = waited_s(events)
    if not waits:
        return Verdict(False, "no round closed")
    limit = settings.max_deadlines * facts.deadline_s
    index = max(waits, key=lambda i: waits[i][1])
    wall, waited = waits[index]
    handling = f" ({wall - waited:.2f} s of it handling an update in hand after the deadline)" if wall > waited else ""
    return Verdict(waited <= limit, f"longest round {waited:.2f} s (round {index}){handling}, "
                                    f"limit {limit:.2f} s ({settings.max_deadlines:g} x deadline)")


def device_pace(closed: dict) -> float | None:
    """Emulated seconds the round's devices took, from the updates that counted: download + compute at the
    device's pace (the throttle's CPU-time target: an `overshoot` > 1 is the host starving the process,
    not the device) + upload; None when no update counted."""
    times = [row["download_s"] + row["compute_s"] / max(1.0, row.get("overshoot") or 1.0) + row["upload_s"]
             for row in closed["clients"] if row["status"] == "updated"]
    return max(times) if times else None


def round_time_recovered(settings: spec.RoundTimeRecovered, events: list[dict], facts: Facts) -> Verdict:
    if not facts.actions:
        return Verdict(False, "no step was carried out")
    affected = min(a["round"] for a in facts.actions)
    closed = per_round(events, "round_closed")
    paces = {index: pace for index, e in closed.items() if (pace := device_pace(e)) is not None}
    before = [index for index in sorted(paces) if index < affected]
    last = sorted(closed)[-settings.last:]
    if not before or not last or last[0] <= affected:
        return Verdict(False, f"too few rounds around the first action (round {affected}; "
                              f"closed: {_rounds_text(sorted(closed))}, with updates: {_rounds_text(sorted(paces))})")
    # in the last rounds the clients the script acted on must be in: a fleet that still waits for them has not
    # recovered (another client late there is the host's doing, its update time unknown: left out of the pace)
    acted = {client for a in facts.actions for client in a.get("clients", ())}
    waiting = [index for index in last if any(row["status"] != "updated" and row["client"] in acted
                                              for row in closed[index]["clients"])]
    mean_before = sum(paces[i] for i in before) / len(before)
    mean_last = sum(paces.get(i, closed[i]["wall_s"]) for i in last) / len(last)
    change = mean_last / mean_before - 1
    figure = (f"device time (download + compute at the device's pace + upload) of rounds {before[0]}-{before[-1]} "
              f"before: {mean_before:.2f} s; last {len(last)}: {mean_last:.2f} s "
              f"({change:+.0%}, allowed ±{settings.tolerance:.0%})")
    if waiting:
        figure += f"; {', '.join(sorted(acted))} not updated in rounds {_rounds_text(waiting)}"
    return Verdict(abs(change) <= settings.tolerance and not waiting, figure)


def no_round_lost(settings: spec.NoRoundLost, events: list[dict], facts: Facts) -> Verdict:
    aggregated = [e for e in events if e["kind"] == "round_aggregated"]
    problems = [f"round {r} aggregated {n} times" for r, n in Counter(e["round"] for e in aggregated).items() if n > 1]
    resumes = [e for e in events if e["kind"] == "run_resumed"]
    for resume in resumes:
        done = [e for e in aggregated if e["seq"] < resume["seq"]]
        last = max(done, key=lambda e: e["round"]) if done else None
        if last is None or resume["from_round"] != last["round"] or resume["digest"] != last["digest"]:
            problems.append(f"resumed from round {resume['from_round']}, but round "
                            f"{last['round'] if last else 0} was the last completed")
    if actions_of(facts, "kill_aggregator") and not resumes:
        problems.append("the run was not resumed")
    missing = sorted(set(range(1, facts.rounds + 1)) - {e["round"] for e in aggregated})
    if missing:
        problems.append(f"rounds {_rounds_text(missing)} never aggregated")
    kept = ", ".join(f"resumed after round {e['from_round']} with its digest" for e in resumes) or "no resume"
    return Verdict(not problems, "; ".join(problems) or f"{kept}; each of {facts.rounds} rounds aggregated once")


def state_preserved(settings: spec.StatePreserved, events: list[dict], facts: Facts) -> Verdict:
    if not facts.reference:
        return Verdict(False, "no uninterrupted reference run to compare with")
    digests = {index: e["digest"] for index, e in per_round(events, "round_aggregated").items()}
    differ = [index for index, digest in sorted(facts.reference.items()) if digests.get(index) != digest]
    extra = sorted(set(digests) - set(facts.reference))
    if differ or extra:
        shown = ", ".join(f"round {i}: {digests.get(i, 'missing')} vs {facts.reference[i]}" for i in differ[:3])
        return Verdict(False, shown or f"rounds {_rounds_text(extra)} not in the reference")
    return Verdict(True, f"{len(digests)}/{len(facts.reference)} round digests equal the uninterrupted run's "
                         f"(last {digests[max(digests)]})")


def no_orphans(settings: spec.NoOrphans, events: list[dict], facts: Facts) -> Verdict:
    figure = f"{len(facts.orphans)} of {facts.processes} processes left running"
    return Verdict(not facts.orphans and facts.processes > 0,
                   figure + (f": {', '.join(facts.orphans)}" if facts.orphans else ""))


def accuracy(settings: spec.Accuracy, events: list[dict], facts: Facts) -> Verdict:
    evaluations = per_round(events, "evaluated")
    if not evaluations:
        return Verdict(False, "no evaluation recorded")
    final = evaluations[max(evaluations)]
    tasks = final["accuracy"] if settings.task is None else {settings.task: final["accuracy"].get(settings.task)}
    parts, passed = [], True
    for task, by_exit in sorted(tasks.items()):
        values = [v for v in (by_exit or {}).values() if isinstance(v, (int, float))]
        if not values or not all(math.isfinite(v) for v in values) or len(values) != len(by_exit or {}):
            passed = False
            parts.append(f"{task}: not finite or missing ({by_exit})")
            continue
        layer, best = max(by_exit.items(), key=lambda item: item[1])
        passed &= best >= settings.min
        parts.append(f"{task} {best:.1%} (L{layer})")
    return Verdict(passed, f"round {final['round']}: {', '.join(parts)}; bound {settings.min:.1%}")


def dropped(settings: spec.Dropped, events: list[dict], facts: Facts) -> Verdict:
    floods = actions_of(facts, "flood")
    if not floods:
        return Verdict(False, "no flood in the script")
    since = min(a["seq"] for a in floods)
    # identity -> [reason, messages it stands for]: repeated drops are told once, then counted (`count`)
    drops: dict[str, list[list]] = {}
    for event in events:
        if event["kind"] == "message_dropped" and event["seq"] > since:
            drops.setdefault(event["identity"], []).append([event["reason"], event.get("count", 1)])
    sent = [item for action in floods for item in action.get("sent", [])]
    misses = []
    for item in sent:  # each attack needs a drop of its own, from its socket, with the reason its kind calls for
        reasons = drops.get(item["identity"], [])
        match = next((entry for entry in reasons if entry[1] > 0 and item["expect"] in entry[0]), None)
        if match is None:
            misses.append(f"{item['attack']}: not dropped for '{item['expect']}' "
                          f"({reasons[0][0] if reasons else 'nothing dropped from ' + item['identity']})")
        else:
            match[1] -= 1
    counted = _counted_drops(events, since)
    return Verdict(bool(sent) and not misses and counted is not None and counted[0] == counted[1],
                   f"{len(sent) - len(misses)}/{len(sent)} malformed messages dropped with their reason; "
                   + (f"run end counts {counted[0]} dropped, events show {counted[1]}" if counted
                      else "no end of the run recorded after the flood")
                   + (f"; {'; '.join(misses[:3])}" if misses else ""))


def _counted_drops(events: list[dict], since: int) -> tuple[int, int] | None:
    """(dropped_messages the run's end reports, messages the message_dropped events of that launch stand for)
    for the launch that ended after `since`; None when none did."""
    end = next((e for e in events if e["seq"] > since and e["kind"] in ENDINGS), None)
    if end is None:
        return None
    start = max(e["seq"] for e in events if e["kind"] == "run_started" and e["seq"] < end["seq"])
    return end["dropped_messages"], sum(e.get("count", 1) for e in events
                                        if e["kind"] == "message_dropped" and start < e["seq"] < end["seq"])


def depth_change(settings: spec.DepthChange, events: list[dict], facts: Facts) -> Verdict:
    slowed = actions_of(facts, "slow", settings.client)
    if not slowed:
        return Verdict(False, f"{settings.client} was not slowed by the script")
    affected = slowed[0]["round"]
    depths = {index: row["depth"] for index, row in rows_of(events, settings.client).items() if row["depth"]}
    before = [index for index in sorted(depths) if index < affected]
    if not before:
        return Verdict(False, f"{settings.client} trained no round before round {affected}")
    start = depths[before[-1]]
    window = {index: depth for index, depth in depths.items() if affected < index <= affected + settings.within}
    shallower = [index for index in sorted(window) if window[index] < start]
    after = ", ".join(f"round {i}: {d}" for i, d in sorted(window.items())) or "no round trained"
    figure = f"{settings.client}: depth {start} before (round {before[-1]}), slowed in round {affected}; {after}"
    return Verdict(bool(shallower), figure + (f" (shallower {shallower[0] - affected} round(s) later)"
                                              if shallower else f" (none shallower within {settings.within})"))


def gone(settings: spec.Gone, events: list[dict], facts: Facts) -> Verdict:
    kills = [(client, action) for action in actions_of(facts, "kill") for client in action["clients"]]
    if not kills:
        return Verdict(False, "no client was killed by the script")
    problems, notes = [], []
    for client, action in kills:
        lost = first(events, "client_lost", action["seq"], client=client)
        if lost is None:
            problems.append(f"{client} never marked lost")
            continue
        asked = [e["round"] for e in events if e["kind"] == "round_started" and e["seq"] > lost["seq"]
                 and client in e["selected"]]
        if asked:
            problems.append(f"{client} asked again in rounds {_rounds_text(asked)}")
        row = rows_of(events, client).get(action["round"])
        # under the event clock both are the round's emulated time (the run's clock stands still while liveness
        # waits in host time), and the action's t is rounded coarser than the event's: no negative lag
        notes.append(f"{client} {row['status'] if row else 'not asked'} in round {action['round']}, "
                     f"lost {max(0.0, lost['t'] - action['t']):.1f} s after the kill")
    return Verdict(not problems, "; ".join(problems) or f"{', '.join(notes)}; none asked again")


def rejoined(settings: spec.Rejoined, events: list[dict], facts: Facts) -> Verdict:
    stops = actions_of(facts, "stop", settings.client)
    if not stops:
        return Verdict(False, f"{settings.client} was not stopped by the script")
    lost = first(events, "client_lost", stops[0]["seq"], client=settings.client)
    if lost is None:
        return Verdict(False, f"{settings.client} was never marked lost while frozen")
    back = first(events, "client_rejoined", lost["seq"], client=settings.client)
    if back is None:
        return Verdict(False, f"{settings.client} lost at {lost['t']:.1f} s, never back")
    later = [index for index, row in rows_of(events, settings.client).items()
             if row["status"] == "updated" and per_round(events, "round_closed")[index]["seq"] > back["seq"]]
    figure = (f"{settings.client} frozen at {stops[0]['t']:.1f} s, lost at {lost['t']:.1f} s, back at "
              f"{back['t']:.1f} s; updated after in rounds {_rounds_text(later)}")
    return Verdict(bool(later), figure)


def late_join(settings: spec.LateJoin, events: list[dict], facts: Facts) -> Verdict:
    ready = first(events, "client_ready", client=settings.client)
    first_round = first(events, "round_started")
    if ready is None or first_round is None:
        return Verdict(False, f"{settings.client} never ready" if ready is None else "no round started")
    if ready["seq"] < first_round["seq"]:
        return Verdict(False, f"{settings.client} was ready before round 1 started (not late)")
    next_round = first(events, "round_started", ready["seq"])
    if next_round is None:
        return Verdict(False, f"{settings.client} ready at {ready['t']:.1f} s, after the last round started")
    updated = [index for index, row in rows_of(events, settings.client).items() if row["status"] == "updated"]
    asked = settings.client in next_round["selected"]
    return Verdict(asked and bool(updated),
                   f"{settings.client} ready at {ready['t']:.1f} s; round {next_round['round']} (the next) "
                   f"{'asked' if asked else 'did not ask'} it; updated in rounds {_rounds_text(updated)}")


def churn(settings: spec.Churn, events: list[dict], facts: Facts) -> Verdict:
    rows = [row for closed in per_round(events, "round_closed").values() for row in closed["clients"]]
    skipped = sum(row["status"] == "skipped" for row in rows)
    share = skipped / len(rows) if rows else 0.0
    return Verdict(bool(rows) and settings.min <= share <= settings.max,
                   f"{skipped} of {len(rows)} selections offline ({share:.1%}), "
                   f"allowed {settings.min:.0%}-{settings.max:.0%}")


def updates(settings: spec.Updates, events: list[dict], facts: Facts) -> Verdict:
    closed = per_round(events, "round_closed")
    if not closed:
        return Verdict(False, "no round closed")
    fewest = min(closed.values(), key=lambda e: e["updates"])
    return Verdict(fewest["updates"] >= settings.min,
                   f"fewest updates in a round: {fewest['updates']} (round {fewest['round']}), "
                   f"at least {settings.min} needed")


def straggles(settings: spec.Straggles, events: list[dict], facts: Facts) -> Verdict:
    changed = actions_of(facts, "link", settings.client)
    if not changed:
        return Verdict(False, f"{settings.client}'s link was not changed by the script")
    action = changed[0]
    statuses = {index: row["status"] for index, row in rows_of(events, settings.client).items()
                if index >= action["round"]}
    lost = first(events, "client_lost", action["seq"], client=settings.client)
    straggled = [index for index, status in statuses.items() if status == "straggler"]
    figure = (f"{settings.client} asked in rounds {_rounds_text(sorted(statuses))} after the change; straggler in "
              f"{_rounds_text(straggled)}; " + (f"lost at {lost['t']:.1f} s" if lost else "never lost"))
    return Verdict(bool(straggled) and lost is None and "lost" not in statuses.values(), figure)


def rejected(settings: spec.UpdatesRejected, events: list[dict], facts: Facts) -> Verdict:
    corrupted = sorted(actions_of(facts, "corrupt", settings.client) + actions_of(facts, "lie", settings.client),
                       key=lambda action: action["seq"])
    if not corrupted:
        return Verdict(False, f"{settings.client} was not corrupted (corrupt or lie) by the script")
    since = corrupted[0]["seq"]
    refused = [e for e in events if e["kind"] == "update_rejected" and e["seq"] > since]
    mine = [e for e in refused if e["client"] == settings.client]
    accepted = [e["round"] for e in events if e["kind"] == "update_received" and e["seq"] > since
                and e["client"] == settings.client]
    others = sorted({e["client"] for e in refused if e["client"] != settings.client})
    counted = (facts.summary or {}).get("rejected_updates", {}).get("total")
    checks = Counter(e["check"] for e in mine)
    figure = (f"{settings.client}: {len(mine)} updates rejected after the corruption (rounds "
              f"{_rounds_text([e['round'] for e in mine])}; {', '.join(f'{n} {c}' for c, n in checks.items())}), "
              f"accepted in rounds {_rounds_text(accepted)}; other clients rejected: {', '.join(others) or 'none'}; "
              f"summary.json counts {'no' if counted is None else counted} rejected")
    if mine:
        figure += f"; e.g. {mine[0]['reason']}"
    logged = sum(e["kind"] == "update_rejected" for e in events)  # the whole run's, as the summary's
    expected_check = settings.check is None or set(checks) == {settings.check}
    if settings.check is not None:
        figure += f"; every rejection by the {settings.check!r} check: {'yes' if expected_check else 'no'}"
    passed = bool(mine) and not accepted and not others and counted == logged and expected_check
    return Verdict(passed, figure)


def impersonation(settings: spec.Impersonation, events: list[dict], facts: Facts) -> Verdict:
    attacks = [a for a in actions_of(facts, "impersonate") if a.get("injected")]
    if not attacks:
        return Verdict(False, "no client impersonated another in the script")
    action = attacks[0]
    impostors = action["clients"]
    victim = action["injected"][impostors[0]]["impersonate"]
    since = action["seq"]
    victim_rows = {i: row["status"] for i, row in rows_of(events, victim).items() if i >= action["round"]}
    impostor_rounds = sorted({i for cid in impostors for i in rows_of(events, cid) if i >= action["round"]})
    refusals = [e for e in events if e["seq"] > since and e["kind"] in spec.REFUSAL_KINDS
                and e.get("claimed") == victim]
    refused = sum(e.get("count", 1) for e in refusals)
    forged = [e["round"] for e in events if e["kind"] == "update_received" and e["seq"] > since
              and e["client"] in impostors]
    # a victim that was asked and trained but missed the deadline (a busy host) straggled: it was not locked out
    straggled = sorted(i for i, status in victim_rows.items() if status == "straggler")
    locked_out = sorted(i for i, status in victim_rows.items() if status not in ("updated", "straggler"))
    updated = len(victim_rows) - len(locked_out) - len(straggled)
    figure = (f"{', '.join(impostors)} posing as {victim} in rounds {_rounds_text(impostor_rounds)}: {refused} "
              f"message(s) claiming {victim} refused ({', '.join(sorted({e['kind'] for e in refusals})) or 'none'}); "
              f"{victim} updated in {updated} of {len(victim_rows)} rounds asked "
              f"(locked out in {_rounds_text(locked_out)}, late in {_rounds_text(straggled)}); "
              f"impostor updates accepted in rounds {_rounds_text(forged)}")
    if refusals:
        figure += f"; e.g. {refusals[0].get('reason', '?')}"
    return Verdict(bool(impostor_rounds) and refused >= len(impostor_rounds) and updated > 0
                   and not locked_out and not forged, figure)


# Any: each check takes its own settings class, the field of spec.Checks of the same name
CheckFunction = Callable[[Any, list[dict], Facts], Verdict]
CHECKS: dict[str, CheckFunction] = {
    "completed": completed, "round_time": round_time, "round_time_recovered": round_time_recovered,
    "no_round_lost": no_round_lost, "state_preserved": state_preserved, "no_orphans": no_orphans,
    "accuracy": accuracy, "dropped": dropped, "depth_change": depth_change, "gone": gone, "rejoined": rejoined,
    "late_join": late_join, "churn": churn, "updates": updates, "straggles": straggles, "rejected": rejected,
    "impersonation": impersonation,
}


def evaluate(checks: spec.Checks, events: list[dict], facts: Facts) -> dict[str, Verdict]:
    """Each enabled check's verdict; a check that trips over a malformed event fails, naming the fault."""
    verdicts = {}
    for name, settings in checks.enabled().items():
        try:
            verdicts[name] = CHECKS[name](settings, events, facts)
        except (KeyError, TypeError, ValueError) as error:
            verdicts[name] = Verdict(False, f"could not be evaluated: {type(error).__name__}: {error}")
    return verdicts
