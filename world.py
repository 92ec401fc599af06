"""The built-in synthetic "instructional video" world: no download needed to run every task.

It stands in for HowTo100M (pre-training) and MSR-VTT, YouCook2, COIN and CrossTask (downstream), written in
exactly the real file formats of docs/data_formats.md, quirks included, so the readers in readers.py load it like the
real releases. Run it with

    python world.py --out data/world --seed 0 --size default

How the world works
- Concepts: actions, objects, places and recipe styles. Each has a fixed random 512-d vector (actions and objects
  come in visual clusters, so some steps look alike) and one to three phrasings, some words shared by two concepts,
  so text -> concept is not one-to-one.
- Tasks (recipes, repairs, chores) are ordered steps; a step is an action + an object (+ a place).
- Videos are instances of tasks: steps of a few seconds with background in between. The feature of second t is the
  sum of what is on screen (the step's action and object, the place, the style, a few clutter objects of the task,
  a per-video camera vector with slow drift) plus noise; every concept is rendered with a per-video change of
  appearance and is sometimes occluded; rows are L2-normalised and stored as float16, like S3D output.
- HowTo100M-like narration: several phrasings per step, timing jitter (sometimes badly mistimed), talk about steps
  that are not on screen and filler, cut into ASR clips of a few seconds that overlap slightly.

Why pre-training matters here (the point of the paper). As in real life, the pre-training corpus is much larger
than any downstream set and its narration covers every concept and every phrasing, while the downstream training
sets are small and fixed and do NOT cover everything their test sets use: a share of actions and objects
("held-out concepts") never appears in the MSR-VTT- and YouCook2-like training videos or captions, and some
phrasings of the other concepts ("reserved synonyms") never appear in their training captions; test captions use
both freely. A model fine-tuned from scratch cannot know what those words mean; a pre-trained one has seen them
said next to the matching video. Chance and simple baselines still stay far from perfect: noise, clutter,
look-alike steps, repeated steps across tasks, captions that name only part of a clip, mistimed narration, and
multiple-choice distractors that differ from the answer in one slot (action or object).

Same seed and size => byte-identical files (fixed numpy Generators, sorted JSON keys, no timestamps).
"""
import argparse
import csv
import io
import json
import os
import shutil
from dataclasses import dataclass, field

import numpy as np

from common import cli

DIM = 512  # S3D feature size
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]  # ids 0..4

# Lexicon: per domain, comma-separated concepts, each "phrasing/phrasing" (the first is the canonical one).
DOMAINS = {
    "food": dict(
        p=0.6, cat1="Food and Entertaining", cat2=["Recipes", "Drinks", "Baking"], goals=["make", "cook", "prepare"],
        places="kitchen/kitchen area,counter/worktop,stove/hob,table/dining table,grill/barbecue pit",
        actions="cut/chop,slice/carve,dice/cube,peel/skin,wash/rinse,pour/tip,stir/mix,whisk/beat,fry/saute,"
        "boil/simmer,bake/roast,grill/sear,season/salt,add/put in,spread/smear,knead/work,roll out/flatten,"
        "drain/strain,blend/puree,grate/shred,melt/soften,squeeze/press,sprinkle/scatter,serve/plate",
        objects="onion/shallot,garlic/garlic clove,tomato/cherry tomato,potato/spud,carrot/parsnip,pepper/capsicum,"
        "chicken/poultry,beef/steak,pork/ham,fish/salmon,shrimp/prawn,egg/yolk,flour/cornflour,sugar/sweetener,"
        "butter/margarine,milk/cream,cheese/cheddar,rice/risotto rice,pasta/noodles,bread/loaf,dough/batter,"
        "sauce/gravy,oil/olive oil,stock/broth,lemon/lime,apple/pear,banana/plantain,mushroom/fungi,spinach/kale,"
        "lettuce/salad leaves,beans/lentils,corn/sweetcorn,tofu/bean curd,chocolate/cocoa,honey/syrup,"
        "vinegar/dressing,ice/ice cubes,coffee/espresso,tea/green tea,yeast/sourdough starter"),
    "repair": dict(
        p=0.25, cat1="Cars & Other Vehicles", cat2=["Car Maintenance", "Bicycles", "Woodworking"],
        goals=["replace", "fix", "install", "build"],
        places="garage/car port,workshop/shed,driveway/parking spot,workbench/bench",
        actions="tighten/screw in,loosen/unscrew,remove/take off,attach/fit,sand/smooth,paint/spray paint,drill/bore,"
        "measure/size up,mark/outline,glue/stick,clamp/hold down,saw/trim,lift/jack up,scrub/degrease,"
        "inflate/pump up,solder/fuse",
        objects="tire/wheel,brake pad/brake shoe,bolt/nut,screw/wood screw,battery/car battery,"
        "spark plug/ignition plug,chain/bike chain,pedal/crank arm,board/plank,shelf/bracket,door/door panel,"
        "hinge/pivot,pipe/tube,wire/cable,circuit board/pcb,air filter/filter,headlight/headlamp,wiper/wiper blade,"
        "drawer/cabinet,bumper/fender"),
    "home": dict(
        p=0.15, cat1="Home and Garden", cat2=["Gardening", "Cleaning", "Crafts"], goals=["clean", "decorate", "grow"],
        places="garden/flower bed,backyard/yard,bathroom/washroom,living room/lounge,laundry room/utility room",
        actions="dig/shovel,plant/sow,water/spray,prune/trim,wipe/dust,sweep/brush,fold/crease,tie/knot,hang/mount,"
        "fill/load,vacuum/hoover,iron/press",
        objects="seeds/seedlings,soil/compost,flower/rose,hedge/bush,lawn/grass,window/glass pane,floor/tiles,"
        "sink/basin,carpet/rug,paper/card,ribbon/string,frame/picture frame,curtain/blind,shirt/t shirt,"
        "towel/cloth,sheet/bedsheet"),
}
STYLES = "spicy/hot,vegan/plant based,quick/easy,classic/traditional,homemade/diy,italian/tuscan,asian/oriental," \
         "budget/cheap,fancy/gourmet,healthy/light"

# Text templates. Narration (HowTo100M-like ASR), captions (MSR-VTT-like), step sentences (YouCook2-like).
INTRO = ["hey guys welcome back to my channel today we are going to {task}", "in this video i will show you how "
         "to {task}", "today i want to show you my {s} way to {task}", "so today we {task}"]
STEP_TALK = ["now {a} the {o}", "next we {a} the {o}", "so you want to {a} the {o}", "go ahead and {a} your {o}",
             "i am going to {a} the {o} in the {p}", "let me {a} this {o}", "then {a} the {o} like this",
             "you can {a} the {o} with your hands", "{a} the {o} for a bit", "we need to {a} the {o} now",
             "this is the {o} and i will {a} it", "make sure you {a} the {o} properly"]
OFF_TALK = ["later we will {a} the {o}", "last time i forgot to {a} the {o}", "some people like to {a} the {o} "
            "first", "do not {a} the {o} yet", "my friend always tells me to {a} the {o}"]
FILLER = ["so yeah", "this is really important", "as you can see", "okay", "let me show you", "do not forget to "
          "subscribe", "it looks amazing", "this part is simple", "i have been doing this for years", "you can get "
          "this at any store", "alright", "um so", "take your time with this", "that looks good", "just like that"]
OUTRO = ["thanks for watching see you next time", "and that is how you {task}", "leave a comment below bye"]
CAPTION = ["a person shows how to {a} the {o}", "someone is about to {a} the {o} in the {p}",
           "a man tries to {a} some {o}", "a woman explains how to {a} {o}", "a person begins to {a} the {o}",
           "video of someone who will {a} the {o}", "a person in a {p} starts to {a} the {o}",
           "a {s} video where someone will {a} the {o}", "a person works with the {o} in the {p}",
           "someone wants to {a} the {o}", "a person will {a} the {o} and then {a2} the {o2}",
           "someone is going to {a} the {o} before they {a2} the {o2}"]
SENTENCE = ["{a} the {o}", "{a} the {o} in the {p}", "{a} some {o}", "{a} the {o} and set aside",
            "{a} the {o} carefully", "{a} the {o} until ready"]

SIZES = {  # counts; lengths in seconds
    "tiny": dict(tasks=16, pretrain=30, pre_len=(40, 90), msr_train=40, msr_test=50, yc_train=6, yc_test=6,
                 coin_tasks=4, coin_videos=8, ct_tasks=3, ct_videos=34, ct_val=2),
    "default": dict(tasks=120, pretrain=1000, pre_len=(60, 200), msr_train=800, msr_test=1000, yc_train=70,
                    yc_test=60, coin_tasks=20, coin_videos=8, ct_tasks=10, ct_videos=45, ct_val=5),
}
HELD_OBJECTS, HELD_ACTIONS, RESERVE = 0.2, 0.15, 0.3  # shares held out of downstream training captions
ID_CHARS = np.array(list("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"))


@dataclass
class Concept:
    kind: str  # action | object | place | style
    dom: str  # domain ("" for styles)
    words: list  # phrasings
    held: bool = False  # never in downstream training videos / captions
    reserved: set = field(default_factory=set)  # phrasings never in downstream training captions

    def say(self, rng, train):
        ok = [w for w in self.words if not (train and w in self.reserved)]
        return ok[rng.integers(len(ok))]


@dataclass
class Task:
    tid: int  # numeric id (HowTo100M / CrossTask style)
    name: str
    dom: str
    style: int  # concept index
    place: int
    steps: list  # [(action, object, place)] concept indices
    seen: bool  # built from non-held-out concepts only (usable for downstream training)


class World:
    """Concepts, their vectors and the tasks; everything drawn from one Generator."""

    def __init__(self, rng, n_tasks):
        self.c, self.by = [], {}  # concepts; (kind, dom) -> [index]
        for dom, d in DOMAINS.items():
            for kind in ("action", "object", "place"):
                for item in d[kind + "s" if kind != "place" else "places"].split(","):
                    self._add(Concept(kind, dom, item.split("/")))
        for item in STYLES.split(","):
            self._add(Concept("style", "", item.split("/")))
        # vectors: actions and objects come in visual clusters of 3-4 within their domain (look-alike steps)
        n = len(self.c)
        own = rng.standard_normal((n, DIM))
        self.cluster = np.arange(n)  # cluster id of each concept (singletons for places and styles)
        for (kind, dom), idx in sorted(self.by.items()):
            if kind in ("action", "object"):
                for k, i in enumerate(rng.permutation(idx)):
                    self.cluster[i] = idx[0] + k % -(-len(idx) // 4)
        clusters = rng.standard_normal((n, DIM))
        clusters /= np.linalg.norm(clusters, axis=1, keepdims=True)
        mix = np.array([0.8 if c.kind in ("action", "object") else 0.0 for c in self.c])[:, None]
        v = own / np.linalg.norm(own, axis=1, keepdims=True) * np.sqrt(1 - mix ** 2) + mix * clusters[self.cluster]
        self.vec = (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)  # (n, 512)
        self.hands = _unit(rng.standard_normal(DIM)).astype(np.float32)  # "someone is doing something"
        # held-out concepts and reserved synonyms
        for (kind, dom), idx in sorted(self.by.items()):
            share = {"object": HELD_OBJECTS, "action": HELD_ACTIONS}.get(kind, 0.0)
            for i in rng.permutation(idx)[:int(round(share * len(idx)))]:
                self.c[i].held = True
        for c in self.c:
            if c.kind in ("action", "object") and len(c.words) > 1 and rng.random() < RESERVE:
                c.reserved = {c.words[-1]}
        self.tasks = [self._task(rng, i, i % 2 == 0) for i in range(n_tasks)]

    def _add(self, c):
        self.by.setdefault((c.kind, c.dom), []).append(len(self.c))
        self.c.append(c)

    def _task(self, rng, i, seen):
        names = {t.name for t in getattr(self, "tasks", [])}
        doms = list(DOMAINS)
        dom = doms[rng.choice(len(doms), p=[DOMAINS[d]["p"] for d in doms])]
        acts, objs = self.by[("action", dom)], self.by[("object", dom)]
        if seen:
            acts, objs = [a for a in acts if not self.c[a].held], [o for o in objs if not self.c[o].held]
        places = self.by[("place", dom)]
        place, style = int(rng.choice(places)), int(rng.choice(self.by[("style", "")]))
        main = [int(o) for o in rng.choice(objs, rng.integers(3, 6), replace=False)]
        steps = []
        for _ in range(rng.integers(4, 9)):
            p = int(rng.choice(places)) if rng.random() < 0.2 else place
            steps.append((int(rng.choice(acts)), int(rng.choice(main)), p))
        if not seen and not any(self.c[a].held or self.c[o].held for a, o, _ in steps):
            k = rng.integers(len(steps))  # an unseen task shows at least one held-out concept
            held = [o for o in objs if self.c[o].held]
            steps[k] = (steps[k][0], int(rng.choice(held)), steps[k][2])
        goal = DOMAINS[dom]["goals"][rng.integers(3)]
        obj, sty = self.c[main[0]].words[0], self.c[style].words[0]
        name = f"{goal} {sty} {obj}" if dom == "food" else f"{goal} {obj} the {sty} way"
        while name in names:
            name += " again"
        tid = 100000 + 1000 * i + int(rng.integers(1000))
        return Task(tid, name, dom, style, place, steps, seen)

    def words(self, a, o, p, s, rng, train, a2=None, o2=None):
        """Surface phrasings for the template slots."""
        out = dict(a=self.c[a].say(rng, train), o=self.c[o].say(rng, train), p=self.c[p].say(rng, train),
                   s=self.c[s].say(rng, train))
        if a2 is not None:
            out.update(a2=self.c[a2].say(rng, train), o2=self.c[o2].say(rng, train))
        return out

    def step_text(self, step):
        """Canonical short step name (COIN labels, CrossTask steps)."""
        return f"{self.c[step[0]].words[0]} {self.c[step[1]].words[0]}"

    # ---- video features ----
    def render(self, rng, T, segs, task, clutter=3):
        """Per-second features (T, 512) float16, L2-normalised rows. segs: [(start, end, (a, o, p))] seconds."""
        if getattr(self, "video_log", None) is not None:  # synth(video=True) draws these clips again as frames
            self.video_log.append((T, segs, task))
        ids = sorted({task.place, task.style} | {c for _, _, st in segs for c in st} |
                     {o for _, o, _ in task.steps})
        loc = {c: k for k, c in enumerate(ids)}
        app = rng.standard_normal((len(ids), DIM), dtype=np.float32) * (0.7 / np.sqrt(DIM))
        V = self.vec[ids] + app  # per-video appearance of each concept (K, 512)
        M = np.zeros((T, len(ids)), np.float32)  # weight of each concept at each second (T, K)
        M[:, loc[task.place]] += 0.5
        M[:, loc[task.style]] += 0.3
        objs = sorted({o for _, o, _ in task.steps})
        for o in rng.permutation(objs)[:clutter]:  # clutter: other objects of the task lying around
            M[:, loc[int(o)]] += 0.3
        H = np.zeros((T, 1), np.float32)
        for s, e, (a, o, p) in segs:
            i0, i1 = int(s), min(T, int(np.ceil(e)))
            if i1 <= i0:
                continue
            seen = rng.random((i1 - i0, 2)) > 0.15  # occlusion of action / object
            M[i0:i1, loc[a]] += 0.9 * seen[:, 0]
            M[i0:i1, loc[o]] += 1.0 * seen[:, 1]
            if p != task.place:
                M[i0:i1, loc[p]] += 0.5
                M[i0:i1, loc[task.place]] -= 0.5
            H[i0:i1] = 0.4
        x = H * self.hands  # (T, 512)
        for k in range(len(ids)):  # elementwise sum (no BLAS: identical bytes on any machine)
            x += M[:, k:k + 1] * V[k]
        cam = _unit(rng.standard_normal(DIM, dtype=np.float32)) * 0.6
        drift = np.cumsum(rng.standard_normal((T, DIM), dtype=np.float32) * (0.06 / np.sqrt(DIM)), axis=0)
        x += cam + drift + rng.standard_normal((T, DIM), dtype=np.float32) * (1.1 / np.sqrt(DIM))
        x /= np.sqrt((x * x).sum(1, keepdims=True))
        return x.astype(np.float16)

    # ---- video frames (All-in-One): the same concepts, drawn ----
    def looks(self):
        """Per concept a visible signature, from its vector (so look-alike concepts look alike) and its index:
        colour (3,), shape (objects), angle (actions: the hand's stroke and the motion), stripes (places)."""
        if not hasattr(self, "_looks"):
            col = 128 + 110 * np.tanh(self.vec[:, :3] * 20)  # (n, 3); cluster mates share 80% of the vector
            k = np.array([self.by[(c.kind, c.dom)].index(i) for i, c in enumerate(self.c)])
            n = np.array([len(self.by[(c.kind, c.dom)]) for c in self.c])
            self._looks = dict(col=col.astype(np.float32), shape=k % len(SHAPES), angle=np.pi * k / n,
                               freq=0.3 + 0.5 * ((k * 7) % 5) / 4)
        return self._looks

    def render_frames(self, rng, T, segs, task, size=32):
        """One RGB frame a second, (T, size, size, 3) uint8: the place as a striped background, the style as a
        border, clutter objects in the corners; during a step its object (shape + colour) in the middle, moving
        along its action's direction, and the action's coloured hand stroke; occlusion, camera drift, noise.
        `rng` is the frame stream alone: the features never depend on it."""
        L, S = self.looks(), size
        yy, xx = (np.mgrid[0:S, 0:S].astype(np.float32) - (S - 1) / 2) / (S / 2)  # (S, S) in [-1, 1]
        jit = lambda c: L["col"][c] + rng.normal(0, 12, 3)  # per-video appearance

        def background(p):
            a, f = L["angle"][p] * 2, L["freq"][p] * 12
            return jit(p) * (1 + 0.25 * np.sin(f * (xx * np.cos(a) + yy * np.sin(a))))[..., None]

        base = background(task.place)
        border = (np.abs(xx) > 1 - 4 / S) | (np.abs(yy) > 1 - 4 / S)
        base[border] = jit(task.style)
        objs = sorted({o for _, o, _ in task.steps})
        corners = [(-0.7, -0.7), (0.7, -0.7), (-0.7, 0.7), (0.7, 0.7)]
        for o, (cx, cy) in zip(rng.permutation(objs)[:3], corners):  # clutter lying around
            base[SHAPES[L["shape"][o]](xx - cx, yy - cy, 0.18)] = jit(o)
        out = np.repeat(base[None], T, 0)  # (T, S, S, 3)
        for s, e, (a, o, p) in segs:
            i0, i1 = int(s), min(T, int(np.ceil(e)))
            seen = rng.random((max(0, i1 - i0), 2)) > 0.15  # occlusion of action / object
            bg = background(p) if p != task.place else None
            ca, co, ang = jit(a), jit(o), L["angle"][a]
            for i in range(i0, i1):
                if bg is not None:
                    out[i][~border] = bg[~border]
                d = 0.25 * ((i - i0) % 3 - 1)  # the action's motion: back and forth along its angle
                cx, cy = d * np.cos(ang), d * np.sin(ang)
                if seen[i - i0, 1]:
                    out[i][SHAPES[L["shape"][o]](xx - cx, yy - cy, 0.4)] = co
                if seen[i - i0, 0]:
                    along = (xx - cx) * np.cos(ang) + (yy - cy) * np.sin(ang)
                    across = -(xx - cx) * np.sin(ang) + (yy - cy) * np.cos(ang)
                    out[i][(np.abs(across) < 0.12) & (along > 0.45) & (along < 0.95)] = ca
        drift = np.cumsum(rng.normal(0, 3, (T, 1, 1, 3)), 0) + rng.normal(0, 10, 3)  # camera
        out = out + drift + rng.normal(0, 6, out.shape)
        return np.clip(np.rint(out), 0, 255).astype(np.uint8)


SHAPES = [  # masks of the object shapes at (dx, dy) from the centre, radius r (frame units)
    lambda x, y, r: x * x + y * y < r * r,                                   # disc
    lambda x, y, r: (np.abs(x) < r * 0.85) & (np.abs(y) < r * 0.85),         # square
    lambda x, y, r: (y < r * 0.7) & (y > -r) & (np.abs(x) < (y + r) * 0.6),  # triangle
    lambda x, y, r: (np.abs(x) + np.abs(y)) < r,                             # diamond
    lambda x, y, r: ((np.abs(x) < r * 0.3) | (np.abs(y) < r * 0.3)) & (np.abs(x) < r) & (np.abs(y) < r),  # cross
    lambda x, y, r: (x * x + y * y < r * r) & (x * x + y * y > (0.5 * r) ** 2),  # ring
]


def _unit(v):
    return v / np.linalg.norm(v)


def yt_ids(rng, n, taken):
    """YouTube-like 11-character ids with - and _; the first starts with _, the second with -, the third has _."""
    out = []
    while len(out) < n:
        ch = rng.choice(ID_CHARS, 11)
        if len(out) < 2:
            ch[0] = "_-"[len(out)]
        elif len(out) == 2:
            ch[5] = "_"
        vid = "".join(ch)
        if vid.lower() not in taken:
            taken.add(vid.lower())
            out.append(vid)
    return out


def timeline(rng, steps, dur=(4, 12), gap=(1, 6), lead=(1, 8), tail=(2, 8), max_len=None, min_len=0):
    """Place steps on a time axis with background gaps -> (segs [(start, end, step)], T seconds)."""
    t, segs = rng.uniform(*lead), []
    for st in steps:
        d = rng.uniform(*dur)
        segs.append((t, t + d, st))
        t += d + rng.uniform(*gap)
    T = max(min_len, int(np.ceil(segs[-1][1] + rng.uniform(*tail))))
    if max_len and T > max_len:
        T = max_len
        segs = [(s, min(e, T), st) for s, e, st in segs if s < T - 1]
    return segs, T


def instance(rng, task, drop=0.1, repeat=0.1):
    """Steps of one video of a task: some steps skipped, some repeated, order kept."""
    steps = [st for st in task.steps if rng.random() > drop] or task.steps[:1]
    if rng.random() < repeat:
        k = rng.integers(len(steps))
        steps.insert(k, steps[k])
    return steps


# ---------------------------------------------------------------- HowTo100M-like pre-training corpus
def narrate(rng, w, task, segs, T):
    """ASR narration of one video -> {"start", "end", "text"} of overlapping clips of a few seconds."""
    sty = w.c[task.style].say(rng, False)
    talk = [(rng.uniform(0, 3), INTRO[rng.integers(len(INTRO))].format(task=task.name, s=sty))]
    others = w.by[("action", task.dom)], w.by[("object", task.dom)]
    for s, e, (a, o, p) in segs:
        for _ in range(rng.integers(1, 3) if rng.random() < 0.9 else 0):  # 1-2 phrasings, sometimes silent
            t = rng.uniform(s, max(s, e - 2)) + rng.normal(0, 1.5)  # jitter
            if rng.random() < 0.15:  # badly mistimed
                t += rng.choice([-1, 1]) * rng.uniform(8, 25)
            talk.append((t, STEP_TALK[rng.integers(len(STEP_TALK))].format(**w.words(a, o, p, task.style, rng,
                                                                                        False))))
        if rng.random() < 0.2:  # talk about a step that is not on screen
            a2, o2 = int(rng.choice(others[0])), int(rng.choice(others[1]))
            talk.append((rng.uniform(s, e), OFF_TALK[rng.integers(len(OFF_TALK))].format(
                **w.words(a2, o2, p, task.style, rng, False))))
        if rng.random() < 0.4:
            talk.append((e + rng.uniform(0, 3), FILLER[rng.integers(len(FILLER))]))
    talk.append((T - rng.uniform(4, 8), OUTRO[rng.integers(len(OUTRO))].format(task=task.name)))
    words, cur = [], 0.0  # (time, word)
    for t, text in sorted(talk, key=lambda x: x[0]):
        cur = max(float(t), cur + 0.2)
        for wd in text.split():
            if cur < T - 0.5:
                words.append((cur, wd))
            cur += rng.uniform(0.3, 0.5)
    cap = {"start": [], "end": [], "text": []}
    i = 0
    while i < len(words):  # ASR clips: 4-10 words, cut at pauses, each overlapping the next a little
        j = i + 1
        while j < len(words) and j - i < 10 and words[j][0] - words[j - 1][0] < 1.5:
            j += 1
        if j - i > 3 and j < len(words) and rng.random() < 0.5:
            j -= int(rng.integers(0, 3))
        last = words[j - 1][0] + 0.45
        end = words[j][0] + rng.uniform(0.1, 0.6) if j < len(words) and words[j][0] < last + 1.0 else last
        cap["start"].append(round(words[i][0], 2))
        cap["end"].append(round(min(end, float(T)), 2))
        cap["text"].append(" ".join(wd for _, wd in words[i:j]))
        i = j
    return cap


def write_howto100m(d, rng, w, cfg, taken):
    os.makedirs(f"{d}/feats")
    vids = yt_ids(rng, cfg["pretrain"], taken)
    order = rng.permutation(len(w.tasks))  # every task appears (so every concept is narrated)
    caps, rows, texts = {}, [], []
    for i, vid in enumerate(vids):
        task = w.tasks[order[i % len(order)]]
        segs, T = timeline(rng, instance(rng, task), dur=(5, 20), gap=(2, 10), lead=(5, 20), tail=(5, 15),
                           max_len=cfg["pre_len"][1], min_len=cfg["pre_len"][0])
        np.save(f"{d}/feats/{vid}.npy", w.render(rng, T, segs, task))
        caps[vid] = narrate(rng, w, task, segs, T)
        texts += caps[vid]["text"]
        dom = DOMAINS[task.dom]
        rows.append([vid, dom["cat1"], dom["cat2"][task.tid % 3], int(rng.integers(1, 200)), task.tid])
    _json(f"{d}/raw_caption.json", caps, compact=True)
    _csv(f"{d}/HowTo100M_v1.csv", ["video_id", "category_1", "category_2", "rank", "task_id"], rows)
    return texts, len(vids)


# ---------------------------------------------------------------- MSR-VTT-like retrieval and multiple choice
def write_msrvtt(d, rng, w, cfg, taken):
    os.makedirs(f"{d}/feats")
    seen = [t for t in w.tasks if t.seen]
    held_steps = [(t, k) for t in w.tasks for k, (a, o, _) in enumerate(t.steps) if w.c[a].held or w.c[o].held]
    n_tr, n_te = cfg["msr_train"], cfg["msr_test"]
    videos, sents, clips, texts = [], [], [], []
    for n in range(n_tr + n_te):
        train = n < n_tr
        if not train and rng.random() < 0.35:  # a third of the test clips show a held-out concept
            task, k = held_steps[rng.integers(len(held_steps))]
        else:
            task = (seen if train else w.tasks)[rng.integers(len(seen) if train else len(w.tasks))]
            k = int(rng.integers(len(task.steps)))
        steps = task.steps[k:k + (2 if rng.random() < 0.4 else 1)]
        segs, T = timeline(rng, steps, dur=(4, 12), gap=(1, 4), lead=(0, 4), tail=(1, 4), max_len=30, min_len=10)
        np.save(f"{d}/feats/video{n}.npy", w.render(rng, T, segs, task))
        caps = [caption(rng, w, task, steps, train) for _ in range(20)]
        clips.append((task, steps, caps))
        ytid = "".join(rng.choice(ID_CHARS, 11))
        st = round(float(rng.uniform(0, 300)), 2)
        videos.append({"category": int(rng.integers(20)), "url": f"https://www.youtube.com/watch?v={ytid}",
                       "video_id": f"video{n}", "start time": st, "end time": round(st + T, 2),
                       "split": "train" if train else "test", "id": n})
        for c in caps:
            sents.append({"caption": c[0], "video_id": f"video{n}", "sen_id": len(sents)})
            texts.append(c[0])
    _json(f"{d}/MSRVTT_data.json", {"info": {"contributor": "VLM synthetic world", "version": "1.0"},
                                     "videos": videos, "sentences": sents})
    _csv(f"{d}/MSRVTT_train.9k.csv", ["video_id"], [[f"video{n}"] for n in range(n_tr)])
    _csv(f"{d}/MSRVTT_JSFUSION_test.csv", ["key", "vid_key", "video_id", "sentence"],
         [[f"ret{i}", f"msr{n}", f"video{n}", clips[n][2][0][0]] for i, n in enumerate(range(n_tr, n_tr + n_te))])
    rows = []  # multiple choice: the answer, 3 hard distractors (one slot changed), 1 caption of another clip
    for i, n in enumerate(range(n_tr, n_tr + n_te)):
        task, steps, caps = clips[n]
        text, tmpl, fill = caps[1]
        cands = [text]
        on_screen = {c for st in steps for c in st[:2]}
        while len(cands) < 4:
            slot = ["a", "o"][rng.integers(2)] if "{a}" in tmpl else "o"
            kind = "action" if slot == "a" else "object"
            true = steps[0][0 if slot == "a" else 1]
            alt = [c for c in w.by[(kind, task.dom)] if c not in on_screen]
            r = rng.random()  # hard: a concept of the same task (often in view), or one that looks alike
            if r < 0.4 and {st[0 if slot == "a" else 1] for st in task.steps} - on_screen:
                alt = sorted({st[0 if slot == "a" else 1] for st in task.steps} - on_screen)
            elif r < 0.8 and [c for c in alt if w.cluster[c] == w.cluster[true]]:
                alt = [c for c in alt if w.cluster[c] == w.cluster[true]]
            f = dict(fill, **{slot: w.c[int(rng.choice(alt))].say(rng, False)})
            if tmpl.format(**f) not in cands:
                cands.append(tmpl.format(**f))
        other = clips[n_tr + (i + 1 + rng.integers(n_te - 1)) % n_te][2][0][0]
        cands.append(other if other not in cands else other + " again")
        perm = rng.permutation(5)
        rows.append([f"mc{i}", f"msr{n}"] + [cands[p] for p in perm] + [int(np.argmax(perm == 0))])
        texts += cands
    _csv(f"{d}/MSR_MC_test.csv", ["key", "vid_key", "a1", "a2", "a3", "a4", "a5", "answer"], rows, sep="\t")
    return texts, n_tr + n_te


def caption(rng, w, task, steps, train):
    """One MSR-VTT-like caption of a clip -> (text, template, slot fillers)."""
    two = len(steps) == 2 and rng.random() < 0.5
    pool = CAPTION[-2:] if two else CAPTION[:-2]
    tmpl = pool[rng.integers(len(pool))]
    (a, o, p), (a2, o2, _) = steps[0], steps[-1]
    fill = w.words(a, o, p, task.style, rng, train, a2, o2)
    return tmpl.format(**fill), tmpl, fill


# ---------------------------------------------------------------- YouCook2-like clips with one sentence each
def write_youcook2(d, rng, w, cfg, taken):
    os.makedirs(f"{d}/feats")
    food = [t for t in w.tasks if t.dom == "food"]
    n_tr, n_te = cfg["yc_train"], cfg["yc_test"]
    db, texts, n_clips = {}, [], 0
    for i, vid in enumerate(yt_ids(rng, n_tr + n_te, taken)):
        train = i < n_tr
        pool = [t for t in food if t.seen] if train or rng.random() < 0.4 else [t for t in food if not t.seen]
        task = pool[rng.integers(len(pool))]
        segs, T = timeline(rng, instance(rng, task), dur=(5, 15), gap=(1, 8), lead=(2, 15), tail=(3, 15))
        np.save(f"{d}/feats/{vid}.npy", w.render(rng, T, segs, task))
        ann = []
        for k, (s, e, (a, o, p)) in enumerate(segs):
            sent = SENTENCE[rng.integers(len(SENTENCE))].format(**w.words(a, o, p, task.style, rng, train))
            ann.append({"segment": [int(s), int(np.ceil(e))], "id": k, "sentence": sent})
            texts.append(sent)
        if rng.random() < 0.1:  # quirk: the last segment runs past the features
            ann[-1]["segment"][1] = T + int(rng.integers(1, 4))
        n_clips += len(ann)
        db[vid] = {"duration": round(T - float(rng.uniform(0, 0.9)), 2),
                   "subset": "training" if train else "validation",
                   "recipe_type": str(100 + food.index(task)), "annotations": ann,
                   "video_url": f"https://www.youtube.com/watch?v={vid}"}
    _json(f"{d}/youcookii_annotations_trainval.json", {"database": db})
    return texts, n_clips


# ---------------------------------------------------------------- COIN-like segmentation, CrossTask-like tasks
def write_coin(d, rng, w, cfg, taken, tasks):
    os.makedirs(f"{d}/feats")
    db, texts, ids = {}, [], {}
    for j, task in enumerate(tasks):
        for st in task.steps:  # one global string id per distinct step of each task (0 = background)
            ids.setdefault((j, w.step_text(st)), str(len(ids) + 1))
        vids = yt_ids(rng, cfg["coin_videos"], taken)
        for i, vid in enumerate(vids):
            segs, T = timeline(rng, instance(rng, task), dur=(4, 15), gap=(2, 10), lead=(2, 12), tail=(2, 10))
            np.save(f"{d}/feats/{vid}.npy", w.render(rng, T, segs, task))
            ann = [{"id": ids[(j, w.step_text(st))], "segment": [round(s, 1), round(e, 1)],
                    "label": "{} the {}".format(w.c[st[0]].words[0], w.c[st[1]].words[0])} for s, e, st in segs]
            if rng.random() < 0.1:
                ann[-1]["segment"][1] = round(T + float(rng.uniform(0.5, 3)), 1)  # quirk: past the features
            texts += [a["label"] for a in ann]
            dur = round(T - float(rng.uniform(0, 0.9)), 2)
            db[vid] = {"duration": dur, "class": task.name, "video_url": f"https://www.youtube.com/watch?v={vid}",
                       "start": 0.0, "end": dur, "annotation": ann, "recipe_type": j,
                       "subset": "testing" if i >= cfg["coin_videos"] * 3 // 4 else "training"}
    _json(f"{d}/COIN.json", {"database": db})
    return texts, len(db)


def write_crosstask(d, rng, w, cfg, taken, tasks):
    os.makedirs(f"{d}/feats")
    os.makedirs(f"{d}/annotations")
    cards, rows, val, texts = [], [], [], []
    for task in tasks:
        names = list(dict.fromkeys(w.step_text(st) for st in task.steps))  # distinct steps, in order
        url = "http://www.wikihow.com/" + task.name.title().replace(" ", "-")
        cards.append(f"{task.tid}\n{task.name}\n{url}\n{len(names)}\n{','.join(names)}\n\n")
        texts += [task.name] + names
        for i, vid in enumerate(yt_ids(rng, cfg["ct_videos"], taken)):
            steps = instance(rng, task, drop=0.15, repeat=0.0)
            if len(steps) > 2 and rng.random() < 0.1:  # order is not always the task's order
                k = rng.integers(len(steps) - 1)
                steps[k], steps[k + 1] = steps[k + 1], steps[k]
            segs, T = timeline(rng, steps, dur=(3, 10), gap=(2, 12), lead=(3, 15), tail=(3, 12))
            np.save(f"{d}/feats/{vid}.npy", w.render(rng, T, segs, task))
            ann = [[names.index(w.step_text(st)) + 1, f"{s:.2f}", f"{e:.2f}"] for s, e, st in segs]
            _csv(f"{d}/annotations/{task.tid}_{vid}.csv", None, ann)
            line = [task.tid, vid, f"https://www.youtube.com/watch?v={vid}"]
            rows.append(line)
            if i < cfg["ct_val"]:
                val.append(line)
    with open(f"{d}/tasks_primary.txt", "w", newline="") as f:
        f.write("".join(cards))
    _csv(f"{d}/videos.csv", None, rows)
    _csv(f"{d}/videos_val.csv", None, val)
    return texts, len(rows)


# ---------------------------------------------------------------- tokenizer, files, entry point
def build_tokenizer(texts, out, vocab_size=3000):
    """Lower-case BERT-style WordPiece tokenizer of the world's text -> DIR/tokenizer.json and DIR/vocab.txt.

    The world's vocabulary is closed, so the word-piece vocabulary is: the special tokens (ids 0..4), every
    character and its ## continuation, then whole words by frequency. (The `tokenizers` trainer numbers tokens in
    a different order on every run; building the vocabulary here keeps the files byte-identical per seed.)"""
    from collections import Counter
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    norm, pre = normalizers.BertNormalizer(lowercase=True), pre_tokenizers.BertPreTokenizer()
    counts = Counter()
    for t in texts:
        counts.update(wd for wd, _ in pre.pre_tokenize_str(norm.normalize_str(t)))
    chars = sorted({ch for wd in counts for ch in wd})
    vocab = SPECIALS + chars + ["##" + ch for ch in chars]
    vocab += sorted((wd for wd in counts if wd not in set(vocab)), key=lambda wd: (-counts[wd], wd))
    vocab = vocab[:vocab_size]
    tok = Tokenizer(models.WordPiece({v: i for i, v in enumerate(vocab)}, unk_token="[UNK]",
                                     max_input_chars_per_word=100))
    tok.normalizer, tok.pre_tokenizer = norm, pre
    tok.add_special_tokens(SPECIALS)  # already in the vocabulary: keeps ids 0..4, never split, skipped by decode
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
                                                       special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    tok.decoder = decoders.WordPiece(prefix="##")
    tok.save(f"{out}/tokenizer.json")
    with open(f"{out}/vocab.txt", "w", newline="") as f:
        f.write("".join(v + "\n" for v in vocab))
    return len(vocab)


def _json(path, obj, compact=False):
    with open(path, "w", newline="") as f:
        json.dump(obj, f, sort_keys=True, separators=(",", ":") if compact else (", ", ": "))


def _csv(path, header, rows, sep=","):
    buf = io.StringIO()
    wr = csv.writer(buf, delimiter=sep, lineterminator="\n")
    if header:
        wr.writerow(header)
    wr.writerows(rows)
    with open(path, "w", newline="") as f:
        f.write(buf.getvalue())


def write_frames(path, frames):
    """frames (T, S, S, 3) uint8 -> PATH.mp4 (H.264 at 1 frame/s, near-lossless crf 10) when PyAV is installed,
    else PATH.npy. Returns the file written."""
    try:
        import av
    except ImportError:
        np.save(path + ".npy", frames)
        return path + ".npy"
    with av.open(path + ".mp4", "w", options={"fflags": "+bitexact"}) as c:
        st = c.add_stream("libx264", rate=1, options={"crf": "10", "preset": "veryfast", "threads": "1"})
        st.width, st.height, st.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        for f in frames:
            c.mux(st.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")))
        c.mux(st.encode())
    return path + ".mp4"


def write_videos(d, w, clips, vids, rng, size=32):
    """Draw the logged clips [(T, segs, task)] of one dataset as d/videos/<vid>.mp4 (or .npy)."""
    os.makedirs(f"{d}/videos", exist_ok=True)
    for vid, (T, segs, task) in zip(vids, clips):
        write_frames(f"{d}/videos/{vid}", w.render_frames(rng, T, segs, task, size))
    return len(vids)


def _video_ids(d, name, n):
    """Video ids in the order their features were drawn (HowTo100M_v1.csv keeps that order)."""
    if name == "msrvtt":
        return [f"video{i}" for i in range(n)]
    with open(f"{d}/HowTo100M_v1.csv") as f:
        return [row[0] for row in csv.reader(f)][1:]


PARTS = ["howto100m", "msrvtt", "youcook2", "coin", "crosstask", "tokenizer.json", "vocab.txt", "world.json"]


def synth(out, seed=0, size="tiny", video=False, video_pretrain=None):
    """Write the whole world under `out` (see the module docstring) and return a summary dict of counts.
    video=True also draws the MSR-VTT-like clips and the first `video_pretrain` pre-training videos (all when
    None) as frames in <dataset>/videos/ (write_frames); the features, captions and splits stay byte-identical."""
    if size not in SIZES:
        raise ValueError(f"world.synth: size must be one of {sorted(SIZES)}, got {size!r}")
    cfg = SIZES[size]
    if os.path.isdir(out) and os.listdir(out):
        if not os.path.exists(f"{out}/world.json"):
            raise FileExistsError(f"world.synth: {out} is not empty and holds no world.json; refusing to write there")
        for p in PARTS:  # rebuilding a world: remove the old one's files only
            path = f"{out}/{p}"
            shutil.rmtree(path) if os.path.isdir(path) else os.path.exists(path) and os.remove(path)
    os.makedirs(out, exist_ok=True)
    rng = lambda k: np.random.default_rng([seed, k])  # one independent stream per part
    w = World(rng(0), cfg["tasks"])
    taken = set()
    picked = [w.tasks[i] for i in rng(1).permutation(len(w.tasks))]
    coin_tasks, ct_tasks = picked[:cfg["coin_tasks"]], picked[cfg["coin_tasks"]:cfg["coin_tasks"] + cfg["ct_tasks"]]
    counts, texts, videos = {}, [], {}
    for name, fn in [("howto100m", write_howto100m), ("msrvtt", write_msrvtt), ("youcook2", write_youcook2),
                     ("coin", lambda *a: write_coin(*a, coin_tasks)),
                     ("crosstask", lambda *a: write_crosstask(*a, ct_tasks))]:
        w.video_log = [] if video and name in ("howto100m", "msrvtt") else None
        t, n = fn(f"{out}/{name}", rng(len(counts) + 2), w, cfg, taken)
        texts += t
        counts[name] = n
        if w.video_log:  # the frames have their own random stream: the features never depend on them
            clips = w.video_log[:video_pretrain] if name == "howto100m" else w.video_log
            videos[name] = write_videos(f"{out}/{name}", w, clips, _video_ids(f"{out}/{name}", name, n),
                                        rng(100 + len(videos)))
    counts["vocab"] = build_tokenizer(texts, out)
    held = sorted(wd for c in w.c if c.held for wd in c.words)
    reserved = sorted(wd for c in w.c if not c.held for wd in c.reserved)
    summary = {"seed": seed, "size": size, "counts": counts, "tasks": len(w.tasks), "concepts": len(w.c),
               "held_out_words": held, "reserved_synonyms": reserved}
    if video:
        summary["videos"] = videos
    _json(f"{out}/world.json", summary)
    return summary


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description="Write the synthetic instructional-video world.")
    ap.add_argument("--out", default="data/world", help="output directory")
    ap.add_argument("--seed", type=int, default=0, help="random seed (same seed + size => same bytes)")
    ap.add_argument("--size", default="default", choices=sorted(SIZES), help="tiny (tests) or default (quick start)")
    ap.add_argument("--video", action="store_true", help="also draw video frames (.mp4, or .npy without PyAV)")
    ap.add_argument("--video_pretrain", type=int, default=None, help="with --video: pre-training videos to draw "
                    "(default all)")
    args = ap.parse_args()
    cli(lambda: print(json.dumps(synth(args.out, args.seed, args.size, args.video, args.video_pretrain)["counts"])),
        errors=(FileExistsError,))
