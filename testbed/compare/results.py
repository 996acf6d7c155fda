"""`testbed results`: docs/results.md from compare directories, with the paper's claims checked against them.

Each compare directory is one comparison (one fleet) as `testbed compare` left it: compare.json (every figure),
scenario.yaml (what it ran), compare_plan.json (what it meant to run) and accuracy_vs_time.png. The page puts,
per comparison, the paper-shaped error table, the costs, the paired differences and the plot (copied next to
the page, so that docs/ holds everything it shows), then each of the paper's claims with a verdict computed
from those figures; two comparisons that differ only in `backbone.pretrained` add the SSL premise (error of a
pretrained start less that of a random one). Nothing here measures anything: every number is read from
compare.json or derived from its figures.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import yaml

from testbed.compare.figures import CENTRALIZED, DEPTH_AWARE, FINISHED
from testbed.compare.metrics import TARGET_MARGIN, TARGET_STRATEGY, mean_ci, targets, time_to_target
from testbed.compare.tables import cell, exit_label, interval
from testbed.errors import UserError

COMPARE_FILE, SCENARIO_FILE, PLAN_FILE, PLOT_FILE = ("compare.json", "scenario.yaml", "compare_plan.json",
                                                     "accuracy_vs_time.png")
NAIVE = "fedavg_hetero_naive"  # claim (d)'s reference: heterogeneous depths averaged with no regard to depth

@dataclass(frozen=True)
class PaperFigures:
    """What the paper reports that a comparison here can be set beside."""

    backbone: str  # the backbone it fine-tunes
    exits: tuple[int, ...]  # the transformer layers its exits follow
    speaker_corpus: str  # its speaker identification task: corpus,
    speakers: int  # number of speakers (closed set),
    speaker_accuracy: float  # and accuracy (a fraction)
    claim: str  # its central claim, which claims (a) to (d) below make checkable

    @property
    def speaker_error(self) -> float:
        return 1 - self.speaker_accuracy


# The paper's own figures (Guo et al., Interspeech 2026, the method this testbed emulates; README.md, first
# paragraph): wav2vec 2.0 Base with exits after layers 3, 6, 9 and 12; speaker identification on VoxCeleb1
# (1,251 speakers) at 82.7 % accuracy (17.3 % error); depth-aware layer-wise aggregation matching homogeneous
# FedAvg in accuracy at a fraction of its time. Only these are known here: the page quotes nothing else of it.
PAPER = PaperFigures(
    backbone="wav2vec 2.0 Base", exits=(3, 6, 9, 12), speaker_corpus="VoxCeleb1", speakers=1251,
    speaker_accuracy=0.827,
    claim="depth-aware layer-wise aggregation matches homogeneous FedAvg (fedavg_full) in accuracy at a "
          "fraction of its time")

TIME_FRACTION = 0.5  # (a): depth_aware reaches the target in at most this share of fedavg_full's time
ROUND_FRACTION = 0.6  # (b): depth_aware's mean round time at most this share of fedavg_full's
ERROR_MARGIN = 0.02  # (c): final error at most 2 points (as a fraction) above fedavg_full's
EPSILON = 1e-9  # float slack at a boundary: 1 - accuracy differences land a few ulps off 0.02

CLAIMS = {
    "a": f"{DEPTH_AWARE} reaches {TARGET_STRATEGY}'s target accuracy ({TARGET_STRATEGY}'s final accuracy minus "
         f"{TARGET_MARGIN * 100:.0f} points, per task) in at most {TIME_FRACTION}x {TARGET_STRATEGY}'s time, "
         "in every seed",
    "b": f"{DEPTH_AWARE}'s mean round time is at most {ROUND_FRACTION}x {TARGET_STRATEGY}'s",
    "c": f"{DEPTH_AWARE}'s final error is within {ERROR_MARGIN * 100:.0f} points of {TARGET_STRATEGY}'s, or "
         "better, on every task",
    "d": f"{DEPTH_AWARE} is not worse than {NAIVE} (final error, every task)",
}

# each claim in a few words, for the statement that sums the verdicts up
SHORT = {"a": f"the target in at most {TIME_FRACTION}x the time", "b": f"rounds at most {ROUND_FRACTION}x as long",
         "c": f"error within {ERROR_MARGIN * 100:.0f} points of {TARGET_STRATEGY}'s", "d": f"not worse than {NAIVE}"}

HOLDS, FAILS, UNKNOWN = "holds", "does not hold", "cannot be judged"


@dataclass(frozen=True)
class Compare:
    """One compare directory, read and checked."""

    given: str  # the path as the command line gave it
    figures: dict  # compare.json
    scenario: dict  # scenario.yaml, as plain data
    plan: dict | None  # compare_plan.json; None when absent or unreadable (only the missing-run check uses it)

    @property
    def name(self) -> str:
        return str(self.figures["scenario"])

    @property
    def pretrained(self) -> bool:
        return bool((self.scenario.get("backbone") or {}).get("pretrained", True))


@dataclass(frozen=True)
class Verdict:
    claim: str  # "a" to "d"
    verdict: str  # HOLDS, FAILS or UNKNOWN
    numbers: str  # the figures it rests on, or why it cannot be judged


# --- reading ---------------------------------------------------------------------------------------------------

# compare.json's top-level fields this page reads, and their JSON types
EXPECTED = {"scenario": str, "exits": list, "task_exits": dict, "targets": dict, "runs": list, "strategies": dict,
            "paired": list, "per_run": dict}


def _read_json(path: Path) -> object:
    try:
        return json.loads(path.read_text())
    except OSError as error:
        raise UserError(f"{path}: cannot be read ({error.strerror or error})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise UserError(f"{path}: is not valid JSON ({error}); `testbed compare --resume {path.parent}` "
                        "writes it again from the runs") from None


def read_compare(given: str) -> Compare:
    """A compare directory's compare.json, scenario.yaml and (if readable) compare_plan.json; a UserError
    names the path and what was expected of it."""
    directory = Path(given)
    if not (directory / COMPARE_FILE).is_file():
        what = "no such directory" if not directory.exists() else f"no {COMPARE_FILE} in it"
        raise UserError(f"{given}: not a compare directory ({what}; expected a directory written by "
                        f"`testbed compare`, holding {COMPARE_FILE} and {SCENARIO_FILE})")
    figures = _read_json(directory / COMPARE_FILE)
    wrong = ([name for name, kind in EXPECTED.items() if not isinstance(figures.get(name), kind)]
             if isinstance(figures, dict) else ["everything (not a JSON object)"])
    if wrong:
        raise UserError(f"{directory / COMPARE_FILE}: invalid: lacks or mistypes {', '.join(wrong)} (expected "
                        f"what `testbed compare` writes; `testbed compare --resume {given}` writes it again)")
    assert isinstance(figures, dict)  # for mypy: checked just above
    fields = {"label": str, "strategy": str, "seed": int, "status": str}
    if not all(isinstance(r, dict) and all(isinstance(r.get(k), kind) for k, kind in fields.items())
               for r in figures["runs"]):
        raise UserError(f"{directory / COMPARE_FILE}: invalid: a run in `runs` lacks or mistypes label, strategy, "
                        f"seed or status (`testbed compare --resume {given}` writes it again)")
    return Compare(given, figures, _read_scenario(directory / SCENARIO_FILE), _read_plan(directory / PLAN_FILE))


def _read_scenario(path: Path) -> dict:
    try:
        scenario = yaml.safe_load(path.read_text())
    except OSError as error:
        raise UserError(f"{path}: cannot be read ({error.strerror or error}); a compare directory holds the "
                        "resolved scenario its runs ran") from None
    except yaml.YAMLError as error:
        raise UserError(f"{path}: is not valid YAML ({str(error).splitlines()[0]})") from None
    if not isinstance(scenario, dict):
        raise UserError(f"{path}: is not a scenario (expected a YAML mapping)")
    return scenario


def _read_plan(path: Path) -> dict | None:
    try:
        plan = json.loads(path.read_text())
    except (OSError, ValueError):  # only the missing-run warning needs it: without it, that check is skipped
        return None
    return plan if isinstance(plan, dict) else None


# --- runs and labels -------------------------------------------------------------------------------------------

def finished_runs(figures: dict, strategy: str) -> dict[int, dict]:
    """seed -> per-run figures of the strategy's finished runs."""
    return {run["seed"]: figures["per_run"][run["label"]] for run in figures["runs"]
            if run["strategy"] == strategy and run["label"] in figures["per_run"]
            and figures["per_run"][run["label"]].get("status") == FINISHED}


def seeds_of(figures: dict) -> list[int]:
    return sorted({run["seed"] for run in figures["runs"]})


def _flat(data: dict, prefix: str = "") -> dict[str, object]:
    """{"backbone.pretrained": False, ...}: nested mappings to dotted keys (lists stay whole values)."""
    flat: dict[str, object] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


SHOWN = ("name", "seed", "rounds", "time_budget_s", "backbone.name", "backbone.pretrained")  # always in a label


def label(compare: Compare, compares: list[Compare]) -> str:
    """The scenario's name and what tells this comparison apart: seeds, rounds, time budget, backbone,
    and any other scenario field in which it differs from a comparison of the same name."""
    scenario = _flat(compare.scenario)
    seeds = seeds_of(compare.figures)
    parts = [compare.name, f"{len(seeds)} seed{'s' * (len(seeds) != 1)} ({', '.join(map(str, seeds))})",
             f"{scenario.get('rounds')} round{'s' * (scenario.get('rounds') != 1)}"]
    if scenario.get("time_budget_s") is not None:
        parts.append(f"time budget {scenario['time_budget_s']} emulated s")
    parts.append(f"backbone {scenario.get('backbone.name')}"
                 + ("" if compare.pretrained else ", `backbone.pretrained: false` (random init)"))
    namesakes = [_flat(c.scenario) for c in compares if c is not compare and c.name == compare.name]
    differing = sorted(key for key, value in scenario.items()
                       if key not in SHOWN and any(other.get(key) != value for other in namesakes))
    parts += [f"`{key}: {json.dumps(scenario[key])}`" for key in differing]
    return " · ".join(parts)


# --- tables ----------------------------------------------------------------------------------------------------

def _header(first: str, columns: list[str]) -> list[str]:
    return [f"| {first} | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]


def _exits(layers: Iterable[int | None]) -> str:
    return " ".join("-" if layer is None else f"L{layer}" for layer in layers) or "-"


def _paper_error(task: str) -> str:
    """The paper's figure for a task, where it gives one (speaker identification only)."""
    if task != "speaker":
        return "-"
    return f"{PAPER.speaker_error * 100:.1f} ({PAPER.speaker_corpus}, {PAPER.speakers:,} speakers)"


def error_lines(figures: dict) -> list[str]:
    """The paper-shaped table: error at each task's exit (mean ± std over seeds, n), then at each run's best
    exit, with the paper's figure beside ours."""
    strategies = figures["strategies"]
    lines = ["### Error at each task's exit", "",
             "Error (1 - accuracy, %) after the last round, mean ± std over the finished runs (n). A task's exit "
             "is its preferred exit in the scenario, else the deepest (`auto`: the one the rule picked per run, "
             "listed). Best exit: each run at its most accurate exit at its last evaluation (which one is "
             f"listed). Paper: {PAPER.backbone}, exits after layers {', '.join(map(str, PAPER.exits))}.", ""]
    lines += _header("task (exit)", [*strategies, "paper"])
    for task, rule in sorted(figures["task_exits"].items()):
        cells = [f"{cell(s.get('error', {}).get(task), 100)} (n={s.get('runs', 0)})" for s in strategies.values()]
        lines.append(f"| {task} ({exit_label(rule)}) | " + " | ".join(cells) + f" | {_paper_error(task)} |")
        if not isinstance(rule, int):
            cells = [_exits(s.get("exits", {}).get(task, [])) for s in strategies.values()]
            lines.append(f"| {task}: exits picked | " + " | ".join(cells) + " | - |")
    for task in sorted(figures["task_exits"]):
        cells = [f"{cell(s.get('best_error', {}).get(task), 100)} ({_exits(s.get('best_exits', {}).get(task, []))})"
                 for s in strategies.values()]
        lines.append(f"| {task}: best exit | " + " | ".join(cells) + " | - |")
    return lines


def _times(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _mean(pair: list[float] | None) -> float | None:
    return pair[0] if pair else None


def _reach(reach: dict | None) -> str:
    if not reach or not reach.get("runs"):
        return "-"
    return f"{cell(reach.get('seconds'))} ({reach['reached']}/{reach['runs']} reached)"


def cost_lines(figures: dict) -> list[str]:
    """Round time, time to target, client compute and memory relative to full depth, bytes moved; each
    relative to fedavg_full too where it is compared."""
    strategies = figures["strategies"]
    full = strategies.get(TARGET_STRATEGY)

    def versus(summary: dict, *path: str) -> str:
        value: object = summary.get("vs_" + TARGET_STRATEGY) or {}
        for key in path:
            value = value.get(key) if isinstance(value, dict) else None
        return _times(value if isinstance(value, (int, float)) else None)

    def bytes_versus(summary: dict) -> str:
        ours, theirs = _mean(summary.get("bytes")), _mean(full.get("bytes")) if full else None
        return _times(ours / theirs if ours is not None and theirs else None)

    rows: list[tuple[str, list[str]]] = [
        ("mean round time, emulated s", [cell(s.get("mean_round_s"), 1, 2) for s in strategies.values()])]
    if full:
        rows.append((f"mean round time vs {TARGET_STRATEGY}", [versus(s, "mean_round_s") for s in strategies.values()]))
    for task, target in sorted(figures["targets"].items()):
        if target is None:
            continue
        rows.append((f"time to {target:.1%}, {task}, emulated s",
                     [_reach(s.get("time_to_target", {}).get(task)) for s in strategies.values()]))
        if full:
            rows.append((f"time to {target:.1%}, {task}, vs {TARGET_STRATEGY}",
                         [versus(s, "time_to_target", task) for s in strategies.values()]))
    rows += [("client compute vs full depth, %", [cell(s.get("compute_vs_full"), 100, 0) for s in strategies.values()]),
             ("client peak memory vs full depth, %",
              [cell(s.get("memory_vs_full"), 100, 0) for s in strategies.values()]),
             ("bytes moved, MB", [cell(s.get("bytes"), 1e-6) for s in strategies.values()])]
    if full:
        rows.append((f"bytes moved vs {TARGET_STRATEGY}", [bytes_versus(s) for s in strategies.values()]))
    note = (f" `{CENTRALIZED}` counts host wall seconds, not emulated ones, and moves no bytes."
            if CENTRALIZED in strategies else "")
    lines = ["### Cost", "",
             "Mean ± std over the finished runs. Times: emulated seconds of training (evaluation excluded); target: "
             f"{figures.get('target_rule') or 'none (no fedavg_full run, no --target)'}. Client compute: host CPU "
             "seconds per trained clip relative to a full-depth update's; peak memory: mean peak resident memory "
             f"per update relative to a full-depth update's.{note}", ""]
    lines += _header("", list(strategies))
    lines += [f"| {name} | " + " | ".join(cells) + " |" for name, cells in rows]
    return lines


def paired_lines(figures: dict) -> list[str]:
    """The paired differences as compare.json holds them: error in points at each task's exit, round time ratio."""
    tasks = sorted(figures["task_exits"])
    lines = ["### Paired differences, seed by seed", ""]
    if not figures["paired"]:
        return [*lines, "None: this comparison has no pair of strategies to set side by side (it needs "
                        f"{TARGET_STRATEGY}, or {DEPTH_AWARE} with another depth-aware strategy)."]
    lines += ["Each strategy's run against the other's of the same seed: final error difference in points "
              "(negative: fewer errors) and mean round time ratio; mean, 95 % Student's t interval (none for "
              "one seed) and n, the seeds both finished.", ""]
    lines += _header("pair", [f"{task} error, points" for task in tasks] + ["mean round time ratio"])
    for pair in figures["paired"]:
        cells = [interval(pair.get("error", {}).get(task), 100, "", True) for task in tasks]
        cells.append(interval(pair.get("round_time_ratio"), 1, "x", False))
        lines.append(f"| {pair['strategy']} vs {pair['against']} | " + " | ".join(cells) + " |")
    return lines


# --- the paper's claims ----------------------------------------------------------------------------------------

def combine(verdicts: Iterable[str]) -> str:
    """One verdict from its parts: any part that does not hold decides; all must hold to hold."""
    parts = list(verdicts)
    if FAILS in parts:
        return FAILS
    return HOLDS if parts and all(part == HOLDS for part in parts) else UNKNOWN


def _missing(figures: dict, *strategies: str) -> str | None:
    """Why a claim over `strategies` cannot be judged here, or None when each has a finished run."""
    absent = [name for name in strategies if name not in figures["strategies"]]
    if absent:
        return f"{' and '.join(absent)} not compared"
    empty = [name for name in strategies if not finished_runs(figures, name)]
    return f"no finished run of {' and '.join(empty)}" if empty else None


def _seed_reach(ours: dict | None, theirs: dict | None, task: str, target: float) -> tuple[str, str]:
    """(verdict, numbers) of claim (a) for one seed and task, in emulated seconds of training. A run that never
    reached the target still bounds it: fedavg_full's time to it exceeds its whole training, and depth_aware's
    exceeds its own, so one that trained long enough without reaching it does not hold."""
    if ours is None or theirs is None:
        return UNKNOWN, f"{DEPTH_AWARE if ours is None else TARGET_STRATEGY} not finished"
    mine = time_to_target(ours["tasks"][task]["series"], target)
    full = time_to_target(theirs["tasks"][task]["series"], target)
    mine_text = f"{mine:.0f} s" if mine is not None else f"not reached in its {ours['rounds_emulated_s']:.0f} s"
    full_text = f"{full:.0f} s" if full is not None else f"not reached in its {theirs['rounds_emulated_s']:.0f} s"
    text = f"{mine_text} vs {full_text}"
    if mine is not None and full is not None:
        verdict = HOLDS if mine <= TIME_FRACTION * full + EPSILON else FAILS
        return verdict, text + (f" ({mine / full:.2f}x)" if full else "")
    if mine is not None:  # fedavg_full's time to it is beyond its whole training
        return (HOLDS if mine <= TIME_FRACTION * theirs["rounds_emulated_s"] + EPSILON else UNKNOWN), text
    if full is not None and ours["rounds_emulated_s"] >= TIME_FRACTION * full - EPSILON:
        return FAILS, text  # depth_aware trained past half of fedavg_full's time without reaching it
    return UNKNOWN, text


def claim_time_to_target(figures: dict) -> Verdict:
    """(a): per seed and task, depth_aware's time to fedavg_full's target at most half fedavg_full's. The target
    is derived here (fedavg_full's mean final accuracy minus 2 points), whatever --target the comparison had."""
    why = _missing(figures, DEPTH_AWARE, TARGET_STRATEGY)
    if why:
        return Verdict("a", UNKNOWN, why)
    ours, theirs = finished_runs(figures, DEPTH_AWARE), finished_runs(figures, TARGET_STRATEGY)
    tasks = sorted(figures["task_exits"])
    goal = targets({TARGET_STRATEGY: list(theirs.values())}, tasks, None)
    # every seed either strategy was run with: one without a finished run of both cannot be judged
    seeds = sorted({run["seed"] for run in figures["runs"] if run["strategy"] in (DEPTH_AWARE, TARGET_STRATEGY)})
    verdicts, numbers = [], []
    for task in tasks:
        target = goal[task]
        if target is None:
            verdicts.append(UNKNOWN)
            numbers.append(f"{task}: no target ({TARGET_STRATEGY}'s final accuracy not above "
                           f"{TARGET_MARGIN * 100:.0f} points)")
            continue
        reached = {seed: _seed_reach(ours.get(seed), theirs.get(seed), task, target) for seed in seeds}
        verdicts += [verdict for verdict, _ in reached.values()]
        numbers.append(f"{task} (target {target:.1%}): "
                       + "; ".join(f"s{seed} {text}" for seed, (_, text) in reached.items()))
    return Verdict("a", combine(verdicts), ". ".join(numbers))


def claim_round_time(figures: dict) -> Verdict:
    """(b): the ratio of mean round times (means over seeds), with the paired ratio beside it."""
    why = _missing(figures, DEPTH_AWARE, TARGET_STRATEGY)
    ours = _mean(figures["strategies"].get(DEPTH_AWARE, {}).get("mean_round_s"))
    theirs = _mean(figures["strategies"].get(TARGET_STRATEGY, {}).get("mean_round_s"))
    if why or ours is None or not theirs:
        return Verdict("b", UNKNOWN, why or "no mean round time")
    ratio = ours / theirs
    paired = _pair(figures, TARGET_STRATEGY)
    seed_by_seed = f"; seed by seed {interval(paired.get('round_time_ratio'), 1, 'x', False)}" if paired else ""
    return Verdict("b", HOLDS if ratio <= ROUND_FRACTION + EPSILON else FAILS,
                   f"{ours:.1f} s vs {theirs:.1f} s a round: {ratio:.2f}x{seed_by_seed}")


def _pair(figures: dict, against: str) -> dict | None:
    return next((pair for pair in figures["paired"]
                 if pair.get("strategy") == DEPTH_AWARE and pair.get("against") == against), None)


def margin_verdict(stats: dict | None, margin: float) -> str:
    """Whether a paired error difference (depth_aware minus the other, a fraction) stays at or below `margin`:
    by its 95 % interval when it has one (an interval across the margin cannot be judged), else by its mean
    (one seed)."""
    if not stats:
        return UNKNOWN
    if stats.get("ci"):
        low, high = stats["ci"]
        return HOLDS if high <= margin + EPSILON else FAILS if low > margin + EPSILON else UNKNOWN
    return HOLDS if stats["mean"] <= margin + EPSILON else FAILS


def _error_claim(figures: dict, claim: str, against: str, margin: float) -> Verdict:
    why = _missing(figures, DEPTH_AWARE, against)
    if why:
        return Verdict(claim, UNKNOWN, why)
    pair = _pair(figures, against) or {}
    verdicts, numbers = [], []
    for task in sorted(figures["task_exits"]):
        stats = (pair.get("error") or {}).get(task)
        verdicts.append(margin_verdict(stats, margin))
        reason = "" if stats else " (no seed both finished with an evaluation)"
        spans = " (the interval spans the margin)" if stats and verdicts[-1] == UNKNOWN else ""
        numbers.append(f"{task} {interval(stats, 100, '', True)} points{reason}{spans}")
    return Verdict(claim, combine(verdicts), f"{DEPTH_AWARE} minus {against}, at each task's exit: "
                   + "; ".join(numbers) + f" (margin {margin * 100:+.0f} points)")


def claims(figures: dict) -> list[Verdict]:
    """The four claims checked on one comparison's figures."""
    return [claim_time_to_target(figures), claim_round_time(figures),
            _error_claim(figures, "c", TARGET_STRATEGY, ERROR_MARGIN), _error_claim(figures, "d", NAIVE, 0.0)]


def claim_lines(verdicts: list[Verdict]) -> list[str]:
    lines = ["### The paper's claims, checked", "",
             "Each verdict is computed from this comparison's figures above (times in emulated seconds of training; "
             "error differences in points).", ""]
    return lines + [f"- ({v.claim}) {CLAIMS[v.claim]}: **{v.verdict}**. {v.numbers}." for v in verdicts]


def statement_lines(compare: Compare, verdicts: list[Verdict]) -> list[str]:
    """A plain statement of what matches the paper in shape and what does not, from the verdicts and our
    speaker error beside the paper's."""
    by_verdict = {kind: [v.claim for v in verdicts if v.verdict == kind] for kind in (HOLDS, FAILS, UNKNOWN)}
    words = {HOLDS: "As in the paper", FAILS: "Not as in the paper", UNKNOWN: "Not judged here"}
    headline = combine(v.verdict for v in verdicts if v.claim in ("a", "b", "c"))
    parts = [f"The paper's claim, {DEPTH_AWARE} as accurate as {TARGET_STRATEGY} (c) in a fraction of its time "
             f"(a, b), {headline} here."]
    parts += [f"{words[kind]}: " + "; ".join(f"({c}) {SHORT[c]}" for c in found) + "."
              for kind, found in by_verdict.items() if found]
    strategies = compare.figures["strategies"]
    speaker = [f"{name} {cell(s['error']['speaker'], 100)} %" for name, s in strategies.items()
               if (s.get("error") or {}).get("speaker")]
    source = (compare.scenario.get("data") or {}).get("source", "builtin")
    corpus = (f"the built-in corpus has {_builtin_speakers()} speakers, not {PAPER.speakers:,}" if source == "builtin"
              else f"the corpus here is `data.source: {source}`, not {PAPER.speaker_corpus}")
    backbone = (compare.scenario.get("backbone") or {}).get("name")
    scale = (f"{corpus}, and the backbone is `{backbone}` with exits after layers "
             f"{', '.join(map(str, compare.figures['exits']))} (the paper: {PAPER.backbone}, "
             f"{', '.join(map(str, PAPER.exits))}), so only the shape compares, not the level")
    if speaker:
        parts.append(f"Speaker identification error here: {', '.join(speaker)}, against the paper's "
                     f"{PAPER.speaker_error * 100:.1f} % on {PAPER.speaker_corpus}; {scale}.")
    else:
        parts.append(f"No speaker error here to set beside the paper's {PAPER.speaker_error * 100:.1f} %; {scale}.")
    return ["### Against the paper", "", " ".join(parts)]


def _builtin_speakers() -> int:
    from testbed.data.synth import CORPUS_DEFAULTS

    speakers = CORPUS_DEFAULTS["n_speakers"]
    assert isinstance(speakers, int)  # for mypy: the defaults mix types
    return speakers


# --- the SSL premise -------------------------------------------------------------------------------------------

def premise_pairs(compares: list[Compare]) -> list[tuple[Compare, Compare]]:
    """(pretrained, random-init) comparisons whose scenarios are the same but for `backbone.pretrained` (and name)."""
    def rest(compare: Compare) -> dict:
        flat = _flat(compare.scenario)
        return {k: v for k, v in flat.items() if k not in ("name", "backbone.pretrained")}

    return [(a, b) for a in compares if a.pretrained for b in compares if not b.pretrained and rest(a) == rest(b)]


def premise_differences(pretrained: dict, random: dict) -> dict[str, dict[str, dict | None]]:
    """strategy -> task -> paired error difference, pretrained minus random init (a fraction; mean, 95 % interval,
    n), seed by seed over the seeds both finished, at each task's exit; for each strategy in both."""
    tasks = sorted(set(pretrained["task_exits"]) & set(random["task_exits"]))
    result: dict[str, dict[str, dict | None]] = {}
    for name in (s for s in pretrained["strategies"] if s in random["strategies"]):
        ours, theirs = finished_runs(pretrained, name), finished_runs(random, name)
        seeds = sorted(set(ours) & set(theirs))

        def error(run: dict, task: str) -> float | None:
            final = run["tasks"].get(task, {}).get("final")
            return None if final is None else 1 - final

        result[name] = {task: mean_ci(a - b for seed in seeds if (a := error(ours[seed], task)) is not None
                                      and (b := error(theirs[seed], task)) is not None) for task in tasks}
    return result


def premise_lines(compares: list[Compare], labels: dict[int, str]) -> list[str]:
    pairs = premise_pairs(compares)
    if not pairs:
        return []
    lines = ["## The SSL premise", "",
             "The method fine-tunes a self-supervised backbone. Here the same comparison was run from the "
             "pretrained backbone and from random weights (`backbone.pretrained: false`); each cell is the final "
             "error of the pretrained start minus the random one's, in points at each task's exit (negative: "
             "pretraining helps), seed by seed: mean, 95 % interval and n, the seeds both finished.", ""]
    for pretrained, random in pairs:
        differences = premise_differences(pretrained.figures, random.figures)
        tasks = sorted(set(pretrained.figures["task_exits"]) & set(random.figures["task_exits"]))
        lines += [f"Pretrained: {labels[id(pretrained)]} (`{pretrained.given}`); random init: "
                  f"{labels[id(random)]} (`{random.given}`).", ""]
        lines += _header("strategy", [f"{task} error, points" for task in tasks])
        lines += [f"| {name} | " + " | ".join(interval(by_task[task], 100, "", True) for task in tasks) + " |"
                  for name, by_task in differences.items()]
        lines.append("")
    return lines


# --- the page --------------------------------------------------------------------------------------------------

def _code(run: dict) -> str:
    """The code version that made a run (testbed/version.py), as compare.json records it."""
    return str(run.get("code") or "unknown (not recorded)")


def warnings(compare: Compare) -> list[str]:
    """What may make a comparison's figures not what it meant to measure: runs not finished, planned runs
    missing, runs made by different code versions."""
    runs = compare.figures["runs"]
    found = []
    unfinished = [f"{r['label']} {r['status']}" for r in runs if r.get("status") != FINISHED]
    if unfinished:
        found.append(f"runs not finished: {', '.join(unfinished)}")
    if compare.plan and isinstance(compare.plan.get("strategies"), list) and isinstance(compare.plan.get("seeds"), list):
        made = {r["label"] for r in runs}
        missing = [f"{s}-s{seed}" for seed in compare.plan["seeds"] for s in compare.plan["strategies"]
                   if f"{s}-s{seed}" not in made]
        if missing:
            found.append(f"planned runs missing: {', '.join(missing)}")
    codes = sorted({_code(r) for r in runs})
    if len(codes) > 1:
        found.append(f"runs made by {len(codes)} code versions ({'; '.join(codes)})")
    return [f"**Warning** ({compare.given}): {text}." for text in found]


def header_lines(compares: list[Compare], command: str) -> list[str]:
    codes = sorted({_code(r) for c in compares for r in c.figures["runs"]})
    lines = ["# Results", "",
             f"Generated by `{command}` from the compare directories below; regenerate it the same way rather "
             "than edit it. Every figure comes from each comparison's compare.json.", "",
             f"Code version{'s' * (len(codes) > 1)} of the runs: {'; '.join(codes) or 'none recorded'}.", ""]
    alerts = [line for c in compares for line in warnings(c)]
    if len(codes) > 1:
        alerts.append("**Warning**: the comparisons on this page were made by different code versions.")
    if alerts:
        lines += [*alerts, ""]
    lines += ["## The paper", "",
              f"Its claim: {PAPER.claim}. Its figures known here: {PAPER.backbone} with exits after layers "
              f"{', '.join(map(str, PAPER.exits))}; speaker identification on {PAPER.speaker_corpus} "
              f"({PAPER.speakers:,} speakers) at {PAPER.speaker_accuracy * 100:.1f} % accuracy, "
              f"{PAPER.speaker_error * 100:.1f} % error. The claims checked per comparison:", ""]
    lines += [f"- ({key}) {text}." for key, text in CLAIMS.items()]
    return [*lines, ""]


def compare_lines(compare: Compare, title: str, image: str | None) -> list[str]:
    verdicts = claims(compare.figures)
    lines = [f"## {title}", "", f"Compare directory: `{compare.given}`.", ""]
    for section in (error_lines(compare.figures), cost_lines(compare.figures), paired_lines(compare.figures)):
        lines += [*section, ""]
    lines += ["### Accuracy against time", ""]
    lines += [f"![accuracy against time, {compare.name}]({image})" if image else
              f"No plot: {PLOT_FILE} is missing from the compare directory.", ""]
    lines += [*claim_lines(verdicts), "", *statement_lines(compare, verdicts), ""]
    return lines


def render(compares: list[Compare], command: str, images: dict[int, str | None]) -> str:
    """The whole page; `images` maps id(compare) to its plot's file name beside the page (None: no plot)."""
    labels = {id(c): label(c, compares) for c in compares}
    lines = header_lines(compares, command)
    for compare in compares:
        lines += compare_lines(compare, labels[id(compare)], images[id(compare)])
    lines += premise_lines(compares, labels)
    return "\n".join(lines).rstrip("\n") + "\n"


def image_names(compares: list[Compare]) -> dict[int, str | None]:
    """results-<compare directory name>.png per comparison with a plot; a repeated name gets -2, -3, ..."""
    names: dict[int, str | None] = {}
    taken: set[str] = set()
    for compare in compares:
        if not (Path(compare.given) / PLOT_FILE).is_file():
            names[id(compare)] = None
            continue
        stem = f"results-{Path(compare.given).resolve().name}"
        name, count = f"{stem}.png", 1
        while name in taken:
            count += 1
            name = f"{stem}-{count}.png"
        taken.add(name)
        names[id(compare)] = name
    return names


def _replace(target: Path, write) -> None:
    """Write `target` through a temporary file beside it, then rename it over: a reader never sees it half
    written, and an error leaves what was there (the name carries the pid: two writers do not share it)."""
    temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        write(temporary)
        os.replace(temporary, target)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def write_results(directories: list[str], out: str, command: str) -> Path:
    """Read every compare directory (any bad one: a UserError, nothing written), then the plots beside `out`,
    then the page itself, each replaced whole."""
    if not directories:
        raise UserError("give at least one compare directory")
    resolved = [Path(d).resolve() for d in directories]
    repeated = sorted({d for d, r in zip(directories, resolved) if resolved.count(r) > 1})
    if repeated:
        raise UserError(f"{', '.join(repeated)}: given more than once (each compare directory once)")
    compares = [read_compare(directory) for directory in directories]
    target = Path(out)
    if target.is_dir():
        raise UserError(f"--out {out}: is a directory (expected the page's file name, e.g. docs/results.md)")
    images = image_names(compares)
    text = render(compares, command, images)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        for compare in compares:
            if images[id(compare)]:
                _replace(target.parent / str(images[id(compare)]),
                         lambda path, c=compare: shutil.copyfile(Path(c.given) / PLOT_FILE, path))
        _replace(target, lambda path: path.write_text(text))
    except OSError as error:
        raise UserError(f"--out {out}: cannot be written ({error.strerror or error})") from None
    return target
