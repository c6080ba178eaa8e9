"""The gate's section of metrics.json and report.md: its checks, how sure each is, and the images they rest on."""

from __future__ import annotations


def gate_block(ev: dict) -> dict:
    """metrics.json's ``gate``: the checks, thresholds, candidate and baseline metrics (support and intervals in the
    candidate's ``uncertainty``), the paired comparison with the last blessed model, or why there was none."""
    return {"split": ev.get("eval_split"), "examples": ev.get("eval_examples"), "checks": ev.get("checks"),
            "thresholds": ev.get("thresholds"), "candidate": ev.get("candidate") or {}, "baseline": ev.get("baseline"),
            "baseline_model_uri": ev.get("baseline_model_uri"), "baseline_refused": ev.get("baseline_refused"),
            "comparison": ev.get("comparison"),
            "uncertainty": (ev.get("candidate") or {}).get("uncertainty")}


def _f(v, d=3):
    return "-" if v is None else f"{v:.{d}f}"


def gate_md(gate: dict, class_names: list[str]) -> list[str]:
    """The checks table, then the support and interval of every class the gate judged."""
    md = ["| check | value | threshold | passed | certainty | detail |", "|---|---|---|---|---|---|"]
    for c in gate.get("checks") or []:
        md.append(f"| {c['check']} | {_f(c['value'], 4)} | {_f(c['threshold'], 4)} | {'yes' if c['passed'] else 'NO'} "
                  f"| {c.get('certainty', '-')} | {c['detail']} |")
    refused = gate.get("baseline_refused")
    if refused:
        md += ["", f"Baseline: {refused['reason']}."]
    u = gate.get("uncertainty")
    if not u:
        return md
    cand = gate.get("candidate") or {}
    ba, ci = cand.get("balanced_accuracy"), u.get("balanced_accuracy_interval")
    md += ["", f"The gate judged {sum(u['per_class_support'])} images: balanced accuracy {_f(ba)}"
           + (f", {u['confidence']:.0%} interval [{_f(ci[0])}, {_f(ci[1])}] ({u['method']})." if ci else ".")]
    small = [class_names[c] for c in u.get("classes_too_small") or []]
    if small:
        md += ["", f"Too few images to judge: {', '.join(small)} (fewer than {u['min_support']} a class in the gate's "
               "split; one image moves such a class's recall by more than 0.2). Their recall checks rest on the point "
               "value; add validation images (a val/ folder) to judge them."]
    # the last blessed model on the same images, side by side (a retrain's gate: the newest span's validation images)
    base = (gate.get("baseline") or {}).get("per_class_recall")
    if base:
        md += ["", f"Side by side with the last blessed model (`{gate.get('baseline_model_uri')}`), on the same images: "
               f"balanced accuracy {_f((gate.get('baseline') or {}).get('balanced_accuracy'))} then, {_f(ba)} now."]
    md += ["", "| class | gate images | recall | interval |" + (" last blessed recall | change |" if base else ""),
           "|---|---|---|---|" + ("---|---|" if base else "")]
    recalls = cand.get("per_class_recall") or []
    for c, (n, iv) in enumerate(zip(u["per_class_support"], u["per_class_recall_interval"])):
        r = recalls[c] if c < len(recalls) else None
        row = f"| {class_names[c]} | {n} | {_f(r)} | {'-' if not iv else f'[{_f(iv[0])}, {_f(iv[1])}]'} |"
        if base:
            b = base[c] if c < len(base) else None
            row += f" {_f(b)} | {'-' if r is None or b is None else f'{r - b:+.3f}'} |"
        md.append(row)
    return md
