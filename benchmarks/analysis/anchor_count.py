"""Offline: anchor count (6/8/10/14) vs anchored-table error, anchors drawn from each report's stratified sample.

Reads the fidelity reports (JSON) in runs/benchmarks and writes anchor_count.json there; no measurement is run.
Usage: ``.venv/bin/python -m benchmarks.analysis.anchor_count``.
"""

from __future__ import annotations

import glob
import json
import os
import random
import statistics

from benchmarks import fidelity_measure as FM
from benchmarks import fidelity_report as FR
from benchmarks.common import OUT_DIR
from nas_ops.space import load_space
from nas_ops.spec import format_spec
from search_client.table.anchors import (
    WEIGHT_ANCHORS,
    WEIGHT_FIT_MIN,
    AnchorFitError,
    fit_anchor_map,
    pick_evenly,
    weight_contrasts,
)

DRAWS, SUB = 200, 6
KS = (6, 8, 10, 14)


def choose(sums, weights, k):
    """anchor_choices' rule on a given pool: pick_evenly(k - contrasts) then weight_contrasts(contrasts)."""
    contrasts = WEIGHT_ANCHORS if k >= WEIGHT_FIT_MIN else 0
    picked = pick_evenly(sums, k - contrasts)
    if contrasts:
        picked += weight_contrasts(sums, weights, contrasts, exclude=picked)
    return sorted(picked, key=lambda i: (sums[i], i))

def pct(xs, q):
    xs = sorted(xs); i = (len(xs) - 1) * q; lo = int(i); hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (i - lo)


def main() -> None:
    files = sorted(glob.glob(str(OUT_DIR / "fidelity_*_proxyless-mobile_*duet-op*.json")))
    seen, use, skipped = set(), [], []
    for f in files:
        name = os.path.basename(f)
        if name in seen:
            skipped.append((name, "duplicate name")); continue
        seen.add(name)
        use.append(f)
    out = {}
    for f in use:
        r = json.load(open(f)); c = r["config"]
        name = os.path.basename(f)
        if c.get("duet") != "op" or c["space"] != "proxyless-mobile" or c["backend"] not in ("torch-cpu", "ort-cpu"):
            skipped.append((name, "not a torch/ort-cpu proxyless-mobile duet-op report")); continue
        nets = {s: r["samples"][s]["networks"] for s in ("uniform", "stratified")}
        nrounds = min(len(n["rounds"]) for s in nets.values() for n in s)
        short = nrounds < 12  # 6-round reports: only the all-rounds (noise-free-ish) figures, in a side table
        q = r["network_protocol"]["aggregate_q"]; agg = "median"
        space = load_space(c["space"]).with_resolution(c["resolution"], c["resolution"])
        specs = {format_spec(s): s for s in FM.table_specs(space)}
        entries = {specs[k]: v["stored_ms"][agg] for k, v in r["table"]["entries"].items()}
        table = FM.Table(agg, entries, {})
        data = {}
        for s, rows in nets.items():
            archs = [space.architecture(list(n["choices"])) for n in rows]
            meds = [[x["raw"]["median_ms"] for x in n["rounds"]] for n in rows]
            tr = [FM.truth(m, agg, q) for m in meds]
            for n, t in zip(rows, tr):
                assert abs(t / n["measured_ms"][agg] - 1) < 1e-9, (name, t, n["measured_ms"][agg])
            data[s] = dict(sums=[table.predict_sum(a) for a in archs], w=[FM.arch_weight_mb(a) for a in archs],
                           meds=meds, truth=tr)
        # checks against the report: the anchors' sums, and the report's uniform predictions under its own map
        anc = r["table"]["anchor"]
        for n in anc["networks"]:
            ps = table.predict_sum(space.architecture(list(n["choices"])))
            assert abs(ps / n["predicted_ms"] - 1) < 1e-9, (name, ps, n["predicted_ms"])
        own = fit_anchor_map([n["predicted_ms"] for n in anc["networks"]], [n["measured_ms"] for n in anc["networks"]],
                             [n["choices"] for n in anc["networks"]],
                             [n["weight_mb"] for n in anc["networks"]] if anc["method"] == "huber-weights" else None)
        u = data["uniform"]
        rep_pred = [n["predicted_ms"][agg] for n in nets["uniform"]]
        mine = [own.apply(sm, w) for sm, w in zip(u["sums"], u["w"])]
        check = max(abs(a / b - 1) for a, b in zip(mine, rep_pred))
        st = data["stratified"]
        pool_n = len(st["sums"])
        sel = {k: choose(st["sums"], st["w"], k) for k in KS}

        def evaluate(k, anchor_meas):
            idx = sel[k]
            try:
                m = fit_anchor_map([st["sums"][i] for i in idx], anchor_meas, None, [st["w"][i] for i in idx])
            except AnchorFitError:
                return None
            pu = [m.apply(sm, w) for sm, w in zip(u["sums"], u["w"])]
            mu = FR.metrics(pu, u["truth"])
            rest = [i for i in range(pool_n) if i not in set(idx)]
            ms = FR.metrics([m.apply(st["sums"][i], st["w"][i]) for i in rest], [st["truth"][i] for i in rest])
            return dict(me=mu["mean_error"], w5=mu["within5"], tau=mu["tau"], sme=ms["mean_error"],
                        weight=m.method == "huber-weights", c=m.c_ms_per_mb, b=m.b)

        res = {}
        # all rounds (deterministic)
        for k in KS:
            res[f"k{k}_all"] = evaluate(k, [st["truth"][i] for i in sel[k]])
        # random 6 of the rounds, common random numbers across k
        rng = random.Random(f"anchor-count:{name}")
        draws = {k: [] for k in KS}
        fails = {k: 0 for k in KS}
        for _ in range(0 if short else DRAWS):
            sub = [FM.truth(rng.sample(m, SUB), agg, q) for m in st["meds"]]
            for k in KS:
                e = evaluate(k, [sub[i] for i in sel[k]])
                if e is None:
                    fails[k] += 1
                else:
                    draws[k].append(e)
        for k in ([] if short else KS):
            d = draws[k]
            res[f"k{k}_6r"] = {key: (statistics.median(x[key] for x in d), pct([x[key] for x in d], 0.1),
                                     pct([x[key] for x in d], 0.9)) for key in ("me", "w5", "tau", "sme")}
            res[f"k{k}_6r"]["weight_share"] = sum(x["weight"] for x in d) / len(d)
            res[f"k{k}_6r"]["fails"] = fails[k]
        rm = r["samples"]["uniform"]["metrics"]
        out[name] = dict(backend=c["backend"], res=c["resolution"], seed=c["seed"], rounds=nrounds, short=short,
                         report=dict(me=rm["mean_error"], w5=rm["within5"], tau=rm["tau"], method=anc["method"]),
                         own_fit_check=check, results=res,
                         pool_range=(min(st["sums"]), max(st["sums"])))
        print(name, "own-map max rel diff", f"{check:.2e}", flush=True)

    json.dump(dict(results=out, skipped=skipped), open(OUT_DIR / "anchor_count.json", "w"), indent=1)
    print("skipped:", *skipped, sep="\n  ")


if __name__ == "__main__":
    main()
