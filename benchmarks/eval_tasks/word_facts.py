"""word_facts: a four-choice task of everyday word knowledge, written for lora-train (no download).

    lora-eval model=smollm2_135m eval.include_path=benchmarks/eval_tasks eval.tasks=[word_facts]

Five kinds of question, each choice drawn from the other answers of its own kind so that every wrong choice is a
plausible word: opposites, capitals, the young of animals, irregular plurals, the colour of things. 227 questions;
chance is 25%. lm-eval calls `load`; the rows are built here, deterministically, from the tables below.
"""

from __future__ import annotations

import random

OPPOSITES = dict(pair.split("-") for pair in """hot-cold big-small up-down fast-slow happy-sad light-dark open-closed
early-late full-empty hard-soft high-low long-short old-young rich-poor strong-weak thick-thin wet-dry clean-dirty
loud-quiet heavy-light inside-outside push-pull win-lose buy-sell remember-forget arrive-leave ask-answer begin-end
true-false above-below north-south day-night friend-enemy love-hate laugh-cry first-last sweet-sour wide-narrow
deep-shallow brave-afraid cheap-expensive sharp-blunt smooth-rough tall-short awake-asleep alive-dead accept-refuse
increase-decrease maximum-minimum entrance-exit question-answer before-after more-less always-never empty-full
good-bad hungry-full near-far young-old black-white left-right war-peace safe-dangerous easy-difficult
guilty-innocent
""".split())
CAPITALS = dict(pair.split(":") for pair in """France:Paris Germany:Berlin Italy:Rome Spain:Madrid Japan:Tokyo
China:Beijing Russia:Moscow Egypt:Cairo Greece:Athens Portugal:Lisbon Ireland:Dublin Norway:Oslo Sweden:Stockholm
Finland:Helsinki Denmark:Copenhagen Poland:Warsaw Austria:Vienna Hungary:Budapest Belgium:Brussels
Netherlands:Amsterdam Canada:Ottawa Mexico:Mexico_City Argentina:Buenos_Aires Peru:Lima Chile:Santiago
Colombia:Bogota Kenya:Nairobi Thailand:Bangkok Vietnam:Hanoi India:New_Delhi Turkey:Ankara Iran:Tehran
Iraq:Baghdad Cuba:Havana Australia:Canberra England:London Scotland:Edinburgh Switzerland:Bern
Czechia:Prague Ukraine:Kyiv Nigeria:Abuja Ethiopia:Addis_Ababa Indonesia:Jakarta Philippines:Manila
South_Korea:Seoul Brazil:Brasilia Venezuela:Caracas Morocco:Rabat Israel:Jerusalem Romania:Bucharest
Bulgaria:Sofia Serbia:Belgrade Croatia:Zagreb Iceland:Reykjavik Pakistan:Islamabad Afghanistan:Kabul Syria:Damascus
Lebanon:Beirut Jordan:Amman Saudi_Arabia:Riyadh""".split())
YOUNG = dict(pair.split(":") for pair in """dog:puppy cat:kitten cow:calf horse:foal sheep:lamb goat:kid pig:piglet
frog:tadpole duck:duckling goose:gosling swan:cygnet bear:cub lion:cub kangaroo:joey deer:fawn owl:owlet
eagle:eaglet hen:chick butterfly:caterpillar rabbit:kit seal:pup whale:calf fox:kit tiger:cub elephant:calf
chicken:chick turkey:poult hare:leveret""".split())
PLURALS = dict(pair.split(":") for pair in """mouse:mice child:children foot:feet tooth:teeth goose:geese man:men
woman:women person:people ox:oxen cactus:cacti fungus:fungi knife:knives leaf:leaves wolf:wolves life:lives
half:halves loaf:loaves shelf:shelves thief:thieves crisis:crises analysis:analyses phenomenon:phenomena
criterion:criteria datum:data die:dice louse:lice sheep:sheep fish:fish deer:deer potato:potatoes
hero:heroes tomato:tomatoes box:boxes city:cities baby:babies""".split())
COLOURS = dict(pair.split(":") for pair in """grass:green snow:white coal:black the_sky:blue a_banana:yellow blood:red
a_lemon:yellow milk:white an_orange:orange a_tomato:red a_carrot:orange chocolate:brown a_crow:black
an_emerald:green a_ruby:red a_sapphire:blue a_lime:green a_plum:purple an_eggplant:purple a_flamingo:pink
charcoal:black ivory:white the_sun:yellow a_pumpkin:orange a_strawberry:red an_elephant:grey a_polar_bear:white
a_fire_truck:red a_cucumber:green soot:black a_raven:black a_cloud:white a_canary:yellow a_leaf:green
a_cherry:red an_avocado:green a_pearl:white a_blueberry:blue a_violet:purple""".split())

KINDS = [
    ("What is the opposite of {q}?", OPPOSITES),
    ("What is the capital of {q}?", CAPITALS),
    ("What is a young {q} called?", YOUNG),
    ("What is the plural of {q}?", PLURALS),
    ("What colour is {q}?", COLOURS),
]


def rows(seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for question, table in KINDS:
        answers = sorted(set(table.values()))
        for q, a in table.items():
            wrong = rng.sample([x for x in answers if x != a and x != q], 3)
            choices = wrong + [a]
            rng.shuffle(choices)
            out.append({"question": question.format(q=q.replace("_", " ")),
                        "choices": [c.replace("_", " ") for c in choices], "label": choices.index(a)})
    return out


def load(**_metadata):
    from datasets import Dataset, DatasetDict

    return DatasetDict({"test": Dataset.from_list(rows())})
