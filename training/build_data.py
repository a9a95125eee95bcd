#!/usr/bin/env python3
"""Builds triage's labelled prompt set from the raw public sources plus our own prompts.

Reads ../shared/data/raw (or --raw) in place and writes the labelled rows to --out (default
training/work/data.jsonl, which git ignores: it holds upstream prompts and is never committed).

Each output row: {"text", "context", "tier", "source", "group", "split", "weight"}.
- tier follows TIERS.md. A source's suggested tier is only a prior: the mapping below was fixed
  where a read of every source against TIERS.md found it wrong (training/audit/AUDIT.md), and
  rows read one by one (training/audit/labels.jsonl) override the mapping.
- group keeps related rows (duplicates, a UMWP variant and its original) on one side of a split.
- split is train / val / test (random, by group) or heldout (whole sources never trained on).

--pool-out (default training/work/pool.jsonl) gets the rows the per-source caps left out, at most
POOL_CAP per source and only from groups on the train side of the split, with split "pool":
unlabelled transfer data for distillation (`triage-train train --pool`), never trained on by
label.

Standard library only, so it runs anywhere python3 does.
"""

import argparse
import ast
import collections
import csv
import glob
import gzip
import hashlib
import json
import os
import random
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
TIERS = ("easy", "medium", "hard", "needs_info")

# Whole sources kept out of training, for cross-source evaluation (at least one per tier).
HELDOUT = {"olympiadbench", "humaneval", "self_instruct", "nq_open"}

# Most rows taken from one source, so no source's style dominates a tier.
CAP = {
    "gsm8k": 1800,
    "routellm/mmlu": 3000,
    "umwp": 1600,
    "in3": 1300,
    "nq_open": 3000,
    "college_math": 700,
}

# Most rows per source in the pool of rows the caps left out.
POOL_CAP = 3000


def literal(value):
    """Fields stored as Python literals in strings ("[{'input': ...}]")."""
    if isinstance(value, str):
        try:
            return ast.literal_eval(value)
        except (ValueError, SyntaxError):
            return value
    return value


def read_jsonl(path):
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            line = line.strip()
            if line:
                yield line_no, json.loads(line)


def norm_key(text):
    """Normalised text for deduplication: case, spacing and punctuation do not matter."""
    t = re.sub(r"[^\w]+", " ", text.lower())
    return re.sub(r"\s+", " ", t).strip()


def load_overrides():
    """Rows read one by one in the audit: (source, key[, variant]) -> tier."""
    path = os.path.join(HERE, "audit", "labels.jsonl")
    out = {}
    if not os.path.exists(path):
        return out
    for _, row in read_jsonl(path):
        if row.get("label") in TIERS:
            out[(row["source"], str(row["key"]), row.get("variant", ""))] = row["label"]
    return out


class Builder:
    def __init__(self, raw, seed):
        self.raw = raw
        self.rows = []
        self.pool = []
        self.rng = random.Random(seed)
        self.pool_rng = random.Random(seed + 1)
        self.overrides = load_overrides()
        self.used_overrides = 0

    def add(self, source, key, text, tier, group=None, context="", variant="", weight=1.0):
        override = self.overrides.get((source, str(key), variant))
        if override:
            self.used_overrides += 1
            tier = override
        if tier is None or not text or not text.strip():
            return
        assert tier in TIERS, tier
        self.rows.append(
            {
                "text": text.strip(),
                "context": context,
                "tier": tier,
                "source": source,
                "key": str(key),
                "group": group or norm_key(text),
                "weight": weight,
            }
        )

    def path(self, *parts):
        return os.path.join(self.raw, *parts)

    # ---- sources -----------------------------------------------------------------------

    def nq_open(self):
        for name in sorted(glob.glob(self.path("nq_open", "*.jsonl"))):
            base = os.path.basename(name)
            for line_no, row in read_jsonl(name):
                q = row["question"]
                # Real search queries are lowercase with no question mark; most get the
                # form of a typed question so that style does not mark the tier.
                if self.rng.random() < 0.7:
                    q = q[:1].upper() + q[1:]
                    if re.match(r"(who|what|when|where|which|why|how|is|are|do|does|did|can)\b", q, re.I):
                        q += "?"
                self.add("nq_open", f"{base}:{line_no}", q, "easy")

    def svamp(self):
        for row in json.load(open(self.path("svamp", "SVAMP.json"), encoding="utf-8")):
            text = f"{row['Body'].strip()} {row['Question'].strip()}"
            ops = len(re.findall(r"[-+*/]\s", row["Equation"] + " "))
            self.add("svamp", row["ID"], text, "easy" if ops <= 1 else "medium")

    def gsm8k(self):
        for name in ("train.jsonl", "test.jsonl"):
            for line_no, row in read_jsonl(self.path("gsm8k", name)):
                # Audit: 30/31 medium, whatever the number of calculation steps.
                self.add("gsm8k", f"{name}:{line_no}", row["question"], "medium")

    # Audit (training/audit/AUDIT.md): passage and case subjects need reading and weighing.
    MMLU_PASSAGE = {
        "high_school_us_history", "high_school_world_history", "high_school_european_history",
        "professional_law", "professional_medicine", "moral_scenarios",
    }
    # Subjects whose questions are often calculations.
    MMLU_CALC = {
        "abstract_algebra", "college_mathematics", "high_school_mathematics",
        "elementary_mathematics", "college_physics", "high_school_physics", "college_chemistry",
        "high_school_chemistry", "high_school_statistics", "econometrics", "formal_logic",
        "college_computer_science", "high_school_computer_science", "machine_learning",
        "electrical_engineering", "professional_accounting", "college_medicine",
    }
    FIGURE = re.compile(r"figure|diagram|pedigree|shown below|table below", re.I)

    def mmlu(self):
        for name in sorted(glob.glob(self.path("routellm", "mmlu", "responses", "*.csv"))):
            base = os.path.basename(name)
            subject = base[len("mmlu_"):-len(".csv")]
            with open(name, encoding="utf-8", newline="") as f:
                for i, row in enumerate(csv.DictReader(f)):
                    text = re.sub(r"\s*Answer:\s*$", "", row["prompt"]).strip()
                    mixtral = row["mistralai/Mixtral-8x7B-Instruct-v0.1"] == "True"
                    gpt4 = row["gpt-4-1106-preview"] == "True"
                    if not (gpt4 or mixtral) or self.FIGURE.search(text):
                        continue  # mostly label noise, or a figure that is not there
                    stem = re.split(r"\n[A-D]\. ", text)[0]
                    if subject in self.MMLU_PASSAGE:
                        tier = "medium"
                    elif subject in self.MMLU_CALC:
                        short = len(stem.split()) <= 15 and "```" not in stem
                        tier = "easy" if short else "medium"
                    else:
                        tier = "easy"
                    # The lettered choices are a style of this source: drop them from some rows.
                    if self.rng.random() < 0.3:
                        text = stem.strip()
                    self.add("routellm/mmlu", f"{base}:{i}", text, tier, weight=0.5)

    def math(self):
        for line_no, row in read_jsonl(self.path("math", "test_1000.jsonl")):
            level = int(row["level"].split()[-1]) if row["level"].split()[-1].isdigit() else 3
            weight = 1.0
            if level == 1:
                tier, weight = "easy", 0.5
            elif level <= 4:
                tier = "medium"
            elif row["type"] in ("Intermediate Algebra", "Precalculus", "Geometry"):
                tier = "hard"
            elif row["type"] == "Number Theory":
                tier, weight = "hard", 0.5
            else:
                tier = "medium"
            self.add("math", f"test_1000.jsonl:{line_no}", row["problem"], tier, weight=weight)

    def college_math(self):
        for line_no, row in read_jsonl(self.path("college_math", "test_cc_by_only.jsonl")):
            self.add("college_math", f"test_cc_by_only.jsonl:{line_no}", row["question"], "medium")

    def olympiadbench(self):
        for _, row in read_jsonl(self.path("olympiadbench", "test.jsonl")):
            ctx = literal(row.get("context"))
            text = row["question"]
            if isinstance(ctx, str) and ctx not in ("None", ""):
                text = ctx + "\n\n" + text
            # The ARML relay prefix ("Let $T=...$.") is a pure style token.
            text = re.sub(r"^Let \$T\s*=[^$]*\$\.?\s*", "", text)
            if int(row["id"]) < 2231:
                self.add("olympiadbench", row["id"], text, "hard")
            else:
                self.add("olympiadbench", row["id"], text, "medium", weight=0.7)

    BBH_EASY = {
        "boolean_expressions", "disambiguation_qa", "hyperbaton", "logical_deduction_three_objects",
        "movie_recommendation", "object_counting", "reasoning_about_colored_objects", "ruin_names",
        "snarks", "sports_understanding",
    }

    def bbh(self):
        # Audit: no BBH task is hard (0/54); templates are uniform, so few rows and low weight.
        for name in sorted(glob.glob(self.path("bbh", "*.json"))):
            task = os.path.basename(name)[:-5]
            data = json.load(open(name, encoding="utf-8"))
            examples = list(enumerate(data["examples"]))
            self.rng.shuffle(examples)
            for i, ex in examples[:40]:
                text = ex["input"]
                tier = "easy" if task in self.BBH_EASY else "medium"
                if task == "navigate" and text.count("Take ") + text.count("Turn ") <= 2:
                    tier = "easy"
                if task == "word_sorting" and len(text.split("List:")[-1].split()) <= 3:
                    tier = "easy"
                self.add("bbh", f"{task}.json#{i}", text, tier, weight=0.5)

    def humaneval(self):
        with gzip.open(self.path("humaneval", "HumanEval.jsonl.gz"), "rt", encoding="utf-8") as f:
            for line in f:
                row = json.loads(line)
                text = "Complete this function:\n\n" + row["prompt"]
                body = [l for l in row["canonical_solution"].splitlines() if l.strip()]
                self.add("humaneval", row["task_id"], text, "easy" if len(body) <= 2 else "medium")

    MBPP_MEDIUM = re.compile(
        r"sort|dp|number of ways|recurs|binomial|bit|perrin|sequence|subarray|substring|partition|arrange",
        re.I)

    def mbpp(self):
        for _, row in read_jsonl(self.path("mbpp", "mbpp_test.jsonl")):
            tier = "medium" if self.MBPP_MEDIUM.search(row["text"]) else "easy"
            self.add("mbpp", row["task_id"], row["text"], tier)

    def self_instruct(self):
        for name in ("seed_tasks.jsonl", "user_oriented_instructions.jsonl"):
            for _, row in read_jsonl(self.path("self_instruct", name)):
                instances = literal(row["instances"])
                inp = ""
                if isinstance(instances, list) and instances and isinstance(instances[0], dict):
                    inp = (instances[0].get("input") or "").strip()
                instr = row["instruction"].strip()
                group = "self_instruct:" + row["id"]
                if inp:
                    self.add("self_instruct", row["id"], instr + "\n\n" + inp, "easy",
                             group=group, variant="with_input", weight=0.7)
                    self.add("self_instruct", row["id"], instr, "needs_info",
                             group=group, variant="instruction_only")
                else:
                    long_work = re.search(r"plan|template|review|essay", instr, re.I)
                    self.add("self_instruct", row["id"], instr, "medium" if long_work else "easy",
                             group=group, variant="with_input")

    FIRST_REQUEST = re.compile(
        r"[Mm]y first (suggestion )?(request|sentence|command|question|message)")
    STARTS_GAME = re.compile(r"begin|start|first question|introduce yourself|reply me|let's", re.I)

    def awesome(self):
        with open(self.path("awesome_chatgpt_prompts", "prompts.csv"), encoding="utf-8", newline="") as f:
            for i, row in enumerate(csv.DictReader(f)):
                text = row["prompt"]
                if self.FIRST_REQUEST.search(text):
                    tier = "medium"
                elif self.STARTS_GAME.search(text):
                    tier = "easy"
                else:
                    tier = "needs_info"  # a persona set up with no task yet
                # "I want you to act as" opens 179 of 217 rows: vary it so it marks no tier.
                r = self.rng.random()
                if r < 0.25:
                    text = re.sub(r"^I want you to act as an? ", "Act as a ", text)
                elif r < 0.5:
                    text = re.sub(r"^I want you to act as ", "You are ", text)
                self.add("awesome_chatgpt_prompts", f"prompts.csv:{i}", text, tier, weight=0.5)

    def arena_hard(self):
        for _, row in read_jsonl(self.path("arena_hard", "question.jsonl")):
            turns = literal(row["turns"])
            text = turns[0]["content"] if isinstance(turns, list) else str(turns)
            # Every row was read in the audit; the default is only for rows it missed.
            self.add("arena_hard", row["question_id"], text, "medium",
                     group="arena:" + row["cluster"])

    IN3_ABSENT = re.compile(r"specified|given|attached|this (file|code|text|document)", re.I)
    IN3_MEDIUM = re.compile(r"write|summar|explain|script|report|plan", re.I)

    def in3(self):
        for name in ("train.jsonl", "test.jsonl"):
            for line_no, row in read_jsonl(self.path("in3", name)):
                # Audit: vague rows are needs_info in only 1/26; label by the work instead.
                task = row["task"]
                vague = str(row["vague"]) == "True"
                if self.IN3_ABSENT.search(task):
                    tier = "needs_info"
                elif self.IN3_MEDIUM.search(task):
                    tier = "medium"
                else:
                    tier = "easy"
                self.add("in3", f"{name}:{line_no}", task, tier, weight=0.5 if vague else 1.0)

    def umwp(self):
        rows = list(read_jsonl(self.path("umwp", "StandardDataset.jsonl")))
        by_id = {str(r["id"]): r for _, r in rows}
        for _, row in rows:
            if str(row["answerable"]) == "True":
                if row.get("source") not in ("SVAMP", "GSM8K"):
                    # Originals from other sets: the answerable twins of the variants below.
                    self.add("umwp", row["id"], row["question"], "medium")
                continue  # GSM8K/SVAMP originals are already in under their own source
            cat = str(row["category"])
            if cat not in ("1", "2", "4", "5"):
                continue  # unrealistic conditions are false premises, not missing information
            rel = literal(row.get("relevant_ids"))
            group = None
            if isinstance(rel, list) and rel and str(rel[0]) in by_id:
                group = norm_key(by_id[str(rel[0])]["question"])
            self.add("umwp", row["id"], row["question"], "needs_info", group=group)

    def own(self):
        """Prompts written for triage (training/prompts/*.jsonl)."""
        for name in sorted(glob.glob(os.path.join(HERE, "prompts", "*.jsonl"))):
            base = os.path.basename(name)[:-6]
            for line_no, row in read_jsonl(name):
                if "messages" in row:
                    msgs = row["messages"]
                    last = max(i for i, m in enumerate(msgs) if m["role"] == "user")
                    ctx = "\n".join(
                        f"{m['role']}: {m['content'].strip()}"
                        for i, m in enumerate(msgs) if i != last and m["content"].strip()
                    )
                    text = msgs[last]["content"]
                else:
                    text, ctx = row["text"], ""
                # Rows of one pair (the same request with and without its material) share a
                # group, so they land on the same side of every split.
                group = "own:" + str(row.get("pair") or row.get("id", line_no))
                self.add("own/" + base, row.get("id", line_no), text, row["tier"],
                         group=group, context=ctx, weight=2.0)

    # ---- assembly ----------------------------------------------------------------------

    def build(self):
        for step in (self.nq_open, self.svamp, self.gsm8k, self.mmlu, self.math, self.college_math,
                     self.olympiadbench, self.bbh, self.humaneval, self.mbpp, self.self_instruct,
                     self.awesome, self.arena_hard, self.in3, self.umwp, self.own):
            before = len(self.rows)
            step()
            print(f"{step.__name__:>14}: {len(self.rows) - before} rows", file=sys.stderr)
        self.dedupe()
        self.cap()
        self.augment()
        self.split()
        return self.rows

    # A request whose material (text, code, list, passage) follows the instruction line.
    REFERS = re.compile(r"\b(following|below|this|these|given|attached|here|above)\b", re.I)
    # Openers that carry no work; added to some rows of every tier so that they mark none.
    # (The evaluation's style check uses different ones.)
    OPENERS = ("Hello! I need some help.", "Hey, could you help me with something?",
               "Good morning.", "Hi there, thanks in advance!", "Quick one:", "Hola, una pregunta:",
               "Please help me out here.", "I'm stuck on this.")
    PERSONAS = ("Act as an experienced consultant.", "You are a helpful assistant.",
                "Pretend you are my tutor.", "As an expert,")

    def augment(self):
        """Variants that teach the work rather than the wording.

        - needs_info twins: an instruction line that refers to material after it ("Sort the
          following words", "why does this crash?" + code), with that material removed.
        - openers and personas on a few rows of every tier, so politeness and role-play
          framing are not mistaken for a tier.
        - lowercase, unpunctuated copies of short rows of every tier (search-box style).
        """
        extra = []
        casing = []
        for r in self.rows:
            if r["source"] in HELDOUT or r["context"]:
                continue
            text = r["text"]
            head, sep, rest = text.partition("\n")
            if (sep and r["tier"] != "needs_info" and len(head) <= 300 and len(rest.strip()) >= 40
                    and self.REFERS.search(head) and self.rng.random() < 0.5):
                extra.append(dict(r, text=head.strip().rstrip(":") + (":" if head.rstrip().endswith(":") else ""),
                                  tier="needs_info", source=r["source"] + "+stripped",
                                  key=r["key"] + "+stripped", weight=1.0))
            # Search-box style: all lowercase, no closing "?" or ".". Typed that way in every
            # tier, so it must not mark one (short queries were read as needs_info).
            if len(text) <= 200 and "\n" not in text and self.rng.random() < 0.12:
                low = text.lower().rstrip(" ?.!")
                if low and low != text:
                    casing.append(dict(r, text=low, source=r["source"] + "+lower",
                                       key=r["key"] + "+lower"))
            roll = self.rng.random()
            if roll < 0.06:
                extra.append(dict(r, text=self.rng.choice(self.OPENERS) + " " + text,
                                  source=r["source"] + "+opener", key=r["key"] + "+opener"))
            elif roll < 0.09:
                extra.append(dict(r, text=self.rng.choice(self.PERSONAS) + " " + text,
                                  source=r["source"] + "+persona", key=r["key"] + "+persona"))
        # One variant per distinct text (many MMLU stems share their first line), and a cap per
        # source so no source's phrasing dominates the twins.
        seen = {norm_key(r["text"]) for r in self.rows}
        per_source = collections.Counter()
        kept = []
        for r in extra:
            k = norm_key(r["text"])
            if k in seen or per_source[r["source"]] >= 150:
                continue
            seen.add(k)
            per_source[r["source"]] += 1
            kept.append(r)
        # Casing variants share their original's normalised key, so they are kept apart from
        # the check above; same cap per source.
        per_source = collections.Counter()
        for r in casing:
            if per_source[r["source"]] < 150:
                per_source[r["source"]] += 1
                kept.append(r)
        print(f"augment: {len(kept)} variants", file=sys.stderr)
        self.rows.extend(kept)

    def dedupe(self):
        """One row per normalised (text, context); a text seen with two tiers keeps neither."""
        seen = {}
        tiers = collections.defaultdict(set)
        for r in self.rows:
            k = (norm_key(r["text"]), norm_key(r["context"]))
            tiers[k].add(r["tier"])
            seen.setdefault(k, r)
        kept = [r for k, r in seen.items() if len(tiers[k]) == 1]
        print(f"dedupe: {len(self.rows)} -> {len(kept)} rows "
              f"({sum(len(t) > 1 for t in tiers.values())} conflicting texts dropped)", file=sys.stderr)
        # Rows sharing a normalised text share a group across sources.
        self.rows = kept

    def cap(self):
        by_source = collections.defaultdict(list)
        for r in self.rows:
            by_source[r["source"].split(":")[0]].append(r)
        out = []
        for source, rows in sorted(by_source.items()):
            limit = CAP.get(source)
            if limit and len(rows) > limit:
                kept = self.rng.sample(rows, limit)
                ids = {id(r) for r in kept}
                # A held-out source's rows stay out of training in every form.
                left = [r for r in rows if id(r) not in ids and source not in HELDOUT
                        and split_of(r["group"]) == "train"]
                if len(left) > POOL_CAP:
                    left = self.pool_rng.sample(left, POOL_CAP)
                for r in left:
                    self.pool.append(dict(r, split="pool"))
                rows = kept
            out.extend(rows)
        self.rows = out

    def split(self):
        for r in self.rows:
            if r["source"] in HELDOUT:
                r["split"] = "heldout"
                continue
            r["split"] = split_of(r["group"])


def split_of(group):
    """train, val or test for a group: a hash, so related rows land together."""
    h = int(hashlib.sha256(group.encode()).hexdigest()[:8], 16) % 100
    return "train" if h < 80 else ("val" if h < 90 else "test")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--raw", default=os.path.join(HERE, "..", "..", "shared", "data", "raw"),
                    help="directory of the raw sources (read only)")
    ap.add_argument("--out", default=os.path.join(HERE, "work", "data.jsonl"))
    ap.add_argument("--pool-out", default=None,
                    help="where to write the rows the caps left out (default: pool.jsonl beside --out)")
    ap.add_argument("--seed", type=int, default=17)
    args = ap.parse_args()
    if not os.path.isdir(args.raw):
        sys.exit(f"build_data: raw data directory not found: {args.raw} (pass --raw)")
    b = Builder(args.raw, args.seed)
    rows = b.build()
    b.rng.shuffle(rows)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    counts = collections.Counter((r["split"], r["tier"]) for r in rows)
    print(f"wrote {len(rows)} rows to {args.out}; audit overrides applied: {b.used_overrides}",
          file=sys.stderr)
    for split in ("train", "val", "test", "heldout"):
        print(f"  {split:>8}: " + "  ".join(f"{t}={counts[(split, t)]}" for t in TIERS), file=sys.stderr)
    pool_out = args.pool_out or os.path.join(os.path.dirname(os.path.abspath(args.out)), "pool.jsonl")
    with open(pool_out, "w", encoding="utf-8") as f:
        for r in b.pool:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    by_source = collections.Counter(r["source"].split(":")[0] for r in b.pool)
    print(f"wrote {len(b.pool)} pool rows to {pool_out}: "
          + ", ".join(f"{k}={v}" for k, v in sorted(by_source.items())), file=sys.stderr)


if __name__ == "__main__":
    main()
