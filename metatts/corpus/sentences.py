"""Sentences for the demo corpus: a fixed set written for this project plus a seeded template generator.

The fixed set (``WRITTEN``) was written to cover every phoneme espeak-ng uses for American English,
including the rare ones (ʒ in "measure", ɔɪ in "noise", ʊɹ in "tour", n̩ in "button", aɪɚ in "fire"), and
to exercise the text normalizer (numbers, money, times, abbreviations) so that ``original.txt`` and
``normalized.txt`` differ the way they do in LibriTTS. Every speaker reads a seeded subset of it, so
speakers share some sentences; the rest of a speaker's sentences come from the template generator and
are (almost always) unique to them. A held-out speaker therefore says sentences the model has heard
from others and sentences it has never heard.
"""

from __future__ import annotations

import random

__all__ = ["WRITTEN", "generate_sentence", "sentences_for_speaker"]

WRITTEN: tuple[str, ...] = (
    "The judge measured the treasure in the garage with great pleasure.",
    "A noisy boy enjoyed the oysters at the royal voyage.",
    "Both thin moths flew through the thick, smooth leather.",
    "Their tour of the poor, rural district was surely worth it.",
    "The kitten hid behind the button box on the bottom shelf.",
    "Fire and ice are quiet forces in the higher mountains.",
    "Would you pour a cup of water for the thirsty workers?",
    "Zoe saw the azure sky change to orange at dusk.",
    "Chuck watched the cheerful children chase a cheap kite.",
    "The usual vision of the future is a casual illusion.",
    "Why did the yellow yacht sail toward the young island?",
    "Hugh used a huge hook to hang the heavy hammock.",
    "Eight great apes ate the grapes in the shade.",
    "Father parked the car far from the dark barn.",
    "Four horses galloped north across the morning shore.",
    "We hear the deer near the clear pier each year.",
    "Share the rare pear with the bear over there.",
    "Her first purse was a birthday surprise from her nurse.",
    "Could the good cook look for the wooden book?",
    "The loud crowd shouted about the brown house downtown.",
    "Please bring the ring and the long string to the king.",
    "The singer thinks the thing is wrong, not strong.",
    "Luke knew the blue suit would soon be too loose.",
    "A little bottle of metal polish fell in the middle of the table.",
    "The wanted painter waited, then started, then painted.",
    "Jim and Jill jogged past the gym with a jar of jam.",
    "Vivid velvet covers the vast valley every November.",
    "The rhythm of the weather changed the feather's path.",
    "Mr. Lopez paid $5.20 for three muffins on Tuesday.",
    "Dr. Chen arrived at 7:45 pm, just after the storm.",
    "The museum opened in 1999 and closed in 2019.",
    "She finished 1st, and her brother came 3rd in the race.",
    "About 40% of the 250 tickets were sold by noon.",
    "They moved to St. Paul on the 21st of June.",
    "The bridge is 1,250 feet long and 90 feet high.",
    "He owes me $12, not $120, and he knows it.",
    "Our meeting on Main St. starts at 9:30 am sharp.",
    "The train leaves at 6:15, so please don't be late!",
    "Is it true that the shop sold 3,000 pairs of shoes?",
    "In the 1980s, a loaf of bread cost about $1.10.",
    "Joy pointed at the coin in the soil by the oil pump.",
    "The cautious author taught us about the autumn frost.",
    "A thousand cows wandered around the outskirts of town.",
    "The mayor's pleasure was a leisurely measure of beige paint.",
    "Ruth threw three thick logs onto the hearth.",
    "Those brothers bathe in the smooth stream together.",
    "Which witch wished for a whistle and a wheel?",
    "Seven zebras grazed as the breeze blew across the zoo.",
    "The shy sheep shivered in the shallow shade.",
    "A genuine jewel glowed on the edge of the jar.",
    "Many villagers hurried to the harbor before the storm.",
    "The captain's anchor sank slowly into the muddy sand.",
    "Quick quizzes require quiet, quality concentration.",
    "Please put the pepper and the paper back in the pantry.",
    "The doctor's daughter danced until dawn.",
    "Eleven elephants entered the empty elevator.",
    "Our old oak tree survived a hundred harsh winters.",
    "Uncle Ulysses usually umpires the summer games.",
    "The gentle giant gave the ginger cat a gift.",
    "Kevin kept the kettle on the kitchen counter.",
    "Lovely lilies line the lane leading to the lake.",
    "Nobody noticed the narrow notch in the north wall.",
    "The radio played a rather romantic rock song.",
    "Tiny turtles tumbled toward the tide.",
    "Would you rather walk or ride the bus to work?",
    "Yesterday the young yak yawned in the yard.",
    "The annual fair features fine food and fair prices.",
    "Can you believe the view from the tower at night?",
    "Honest people rarely hurry, yet they are always on time.",
    "The early bird eats the worm, but the late one sleeps well.",
    "We should measure twice and cut the board once.",
    "Her voice was soft, but her choice was firm.",
    "The flour mill by the river ground wheat all year.",
    "A sudden shower soaked the flowers and the tourists.",
    "That hotel charges ninety dollars a night, plus tax.",
    "Do you know where the key to the cellar is?",
    "The pilot checked the engine, the fuel and the radio.",
    "I bought a pair of boots, a coat and a woolen hat.",
    "The violin, the cello and the flute played in harmony.",
    "His unusual hobby is building model ships in bottles.",
    "The ginger biscuits were crisp, sweet and warm.",
    "Every August, the fishermen repair their nets.",
    "The museum guard yawned as the clock struck twelve.",
    "Oh no, the milk boiled over again!",
    "After the thunder, the garden smelled of earth and rain.",
    "The professor wrote the equation on the board in yellow chalk.",
)

_NAMES = ("Joan", "Ruth", "Zachary", "Thelma", "Hugo", "Priya", "Oscar", "Beatrice", "Yusuf", "Chloe", "Vaughn",
          "Gemma", "Theo", "Marisol", "Dmitri", "Nora", "Jasper", "Ingrid", "Kofi", "Lucia", "Ahmed", "Sheila",
          "Quentin", "Rosa", "Wendell", "Fiona", "Boris", "Elena", "Xavier", "Maude")
_ADJECTIVES = ("quiet", "yellow", "smooth", "rough", "thick", "shiny", "ancient", "eager", "gentle", "huge", "awkward",
               "brave", "cheerful", "foggy", "noisy", "purple", "bright", "royal", "sour", "usual", "tiny", "wooden",
               "frozen", "heavy", "curious", "lazy", "golden", "rusty", "fierce", "hollow", "clever", "dusty")
_NOUNS = ("judge", "treasure", "garage", "thistle", "booth", "choir", "oyster", "fountain", "kitten", "button",
          "bottle", "whistle", "feather", "zebra", "yacht", "queen", "jungle", "lizard", "puzzle", "anchor",
          "bridge", "wolf", "squirrel", "engine", "island", "tower", "tiger", "umbrella", "ladder", "violin",
          "ghost", "knight", "cushion", "beige vase", "mirror", "pillow", "wagon", "barrel", "lantern", "parcel")
_PAST_VERBS = ("carried", "measured", "pushed", "bought", "watched", "judged", "enjoyed", "noticed", "painted",
               "borrowed", "fixed", "dropped", "thought about", "washed", "weighed", "hid", "found", "sold",
               "shared", "chose", "ignored", "admired", "dragged", "polished")
_BASE_VERBS = ("carry", "measure", "push", "buy", "watch", "enjoy", "notice", "paint", "borrow", "fix", "wash",
               "weigh", "hide", "find", "sell", "share", "choose", "polish", "move", "open")
_PLACES = ("the harbor", "the village square", "the north tower", "the old garage", "the museum", "the orchard",
           "the railway station", "the bakery", "the mountain hut", "the river bank", "the library", "the theater",
           "the zoo", "the boathouse", "the market", "the courtyard")
_PREPOSITIONS = ("near", "behind", "inside", "beyond", "beneath", "toward", "around", "opposite")
_DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
_TIMES = ("dawn", "noon", "midnight", "sunset", "breakfast", "lunch", "supper")


def _a(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


def _plural(noun: str) -> str:
    if noun.endswith(("s", "sh", "ch", "x", "z")):
        return noun + "es"
    if noun.endswith("y") and noun[-2] not in "aeiou":
        return noun[:-1] + "ies"
    if noun.endswith("f"):
        return noun[:-1] + "ves"
    return noun + "s"


def _ordinal(n: int) -> str:
    """1 -> "1st", 12 -> "12th", 23 -> "23rd" (digits, so that the normalizer has something to do)."""
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def generate_sentence(rng: random.Random) -> str:
    """One sentence from a template, with words, numbers and punctuation drawn from ``rng``."""
    c = rng.choice
    name, name2 = rng.sample(_NAMES, 2)
    adj, adj2 = rng.sample(_ADJECTIVES, 2)
    noun, noun2 = rng.sample(_NOUNS, 2)
    templates = (
        lambda: f"{name} {c(_PAST_VERBS)} the {adj} {noun} {c(_PREPOSITIONS)} {c(_PLACES)}.",
        lambda: f"Did {name} really {c(_BASE_VERBS)} {_a(adj)} {noun} on {c(_DAYS)}?",
        lambda: f"The {noun} that {name} {c(_PAST_VERBS)} was {adj}, but the {noun2} was {adj2}.",
        lambda: f"Please {c(_BASE_VERBS)} the {adj} {noun} before {c(_TIMES)}.",
        lambda: f"{rng.randint(2, 19)} {adj} {_plural(noun)} waited {c(_PREPOSITIONS)} {c(_PLACES)}.",
        lambda: f"{name} paid ${rng.randint(1, 99)}.{rng.randint(10, 99)} for {_a(adj)} {noun} at {c(_PLACES)}.",
        lambda: f"At {rng.randint(1, 12)}:{rng.choice(('05', '15', '30', '45'))}, {name} and {name2} "
                f"{c(_PAST_VERBS)} the {noun}.",
        lambda: f"Why would {name} {c(_BASE_VERBS)} the {noun} {c(_PREPOSITIONS)} the {noun2}?",
        lambda: f"What {_a(adj)} {noun}! {name} {c(_PAST_VERBS)} it {c(_PREPOSITIONS)} {c(_PLACES)}.",
        lambda: f"On the {_ordinal(rng.randint(1, 28))} of the month, {name} {c(_PAST_VERBS)} {_a(adj)} {noun}.",
        lambda: f"In {rng.randint(1950, 2023)}, {name} {c(_PAST_VERBS)} {_a(noun)} and {_a(noun2)}.",
        lambda: f"{name} says the {noun} is {adj}, and {name2} thinks it is {adj2}.",
    )
    return c(templates)()


def sentences_for_speaker(speaker: str, count: int, seed: int = 0, shared_fraction: float = 0.4) -> list[str]:
    """``count`` distinct sentences for ``speaker``: about ``shared_fraction`` of them drawn from ``WRITTEN``
    (shared with other speakers), the rest generated. Depends only on (speaker, count, seed, shared_fraction):
    a string seed is hashed with SHA-512 by ``random``, so the result does not change with PYTHONHASHSEED."""
    if count < 0 or not 0.0 <= shared_fraction <= 1.0:
        raise ValueError(f"need count >= 0 and 0 <= shared_fraction <= 1, got {count}, {shared_fraction}")
    rng = random.Random(f"metatts-demo:{seed}:{speaker}")
    shared = rng.sample(WRITTEN, min(round(count * shared_fraction), len(WRITTEN)))
    out = list(shared)
    seen = set(out)
    attempts = 0
    while len(out) < count:
        s = generate_sentence(rng)
        attempts += 1
        if s not in seen or attempts > 100 * count:
            seen.add(s)
            out.append(s)
    rng.shuffle(out)
    return out
