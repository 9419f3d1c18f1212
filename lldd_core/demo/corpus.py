"""A deterministic, templated English corpus written for lldd (no text is copied from anywhere).

Domains: world facts (landmarks and the cities they are in, bridges, capitals, animal sounds),
product and restaurant reviews (positive / negative), requests (polite / rude), true and false
statements, and plain narrative sentences about sport and cooking.

Every sentence is a *template* filled from slot values. A fill (the template with its slot values)
is assigned to the training corpus or held out by a stable hash, so the built-in concept datasets
(:mod:`lldd_core.demo.datasets`) are made from fills the models never saw. Facts are the
exception: they must be learned, so every fact is in training (in several phrasings).
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator
from dataclasses import dataclass

# --- world facts -------------------------------------------------------------------------------

LANDMARKS: tuple[tuple[str, str], ...] = (
    ("the Golden Gate Bridge", "San Francisco"),
    ("the Eiffel Tower", "Paris"),
    ("the Colosseum", "Rome"),
    ("Big Ben", "London"),
    ("the Brooklyn Bridge", "New York"),
    ("the Space Needle", "Seattle"),
    ("the Opera House", "Sydney"),
    ("the Charles Bridge", "Prague"),
    ("the Rialto Bridge", "Venice"),
    ("the Brandenburg Gate", "Berlin"),
    ("the Parthenon", "Athens"),
    ("the Kremlin", "Moscow"),
    ("the Forbidden City", "Beijing"),
    ("the Taj Mahal", "Agra"),
    ("the Alhambra", "Granada"),
    ("the Sagrada Familia", "Barcelona"),
    ("the CN Tower", "Toronto"),
    ("the Gateway Arch", "St. Louis"),
)

#: (prompt, answer): bridges named by where they lead.
BRIDGES: tuple[tuple[str, str], ...] = (
    ("The bridge out of Marin is the", "Golden Gate"),
    ("The bridge from Brooklyn to Manhattan is the", "Brooklyn Bridge"),
    ("The old stone bridge of Prague is the", "Charles Bridge"),
    ("The bridge over the Grand Canal is the", "Rialto Bridge"),
)

CAPITALS: tuple[tuple[str, str], ...] = (
    ("France", "Paris"), ("Italy", "Rome"), ("Spain", "Madrid"), ("Germany", "Berlin"), ("Japan", "Tokyo"),
    ("Egypt", "Cairo"), ("Canada", "Ottawa"), ("Kenya", "Nairobi"), ("Peru", "Lima"), ("Norway", "Oslo"),
    ("Greece", "Athens"), ("Poland", "Warsaw"), ("Chile", "Santiago"), ("Russia", "Moscow"), ("China", "Beijing"),
    ("Portugal", "Lisbon"), ("Austria", "Vienna"), ("Sweden", "Stockholm"), ("Ireland", "Dublin"),
    ("Turkey", "Ankara"), ("Australia", "Canberra"), ("Cuba", "Havana"),
)

ANIMALS: tuple[tuple[str, str], ...] = (
    ("cow", "moo"), ("dog", "woof"), ("cat", "meow"), ("duck", "quack"), ("sheep", "baa"), ("pig", "oink"),
    ("horse", "neigh"), ("owl", "hoot"), ("lion", "roar"), ("frog", "ribbit"), ("bee", "buzz"), ("snake", "hiss"),
    ("mouse", "squeak"), ("goat", "bleat"),
)

#: Ten prompts a trained demo model must complete greedily (facts it was trained on).
FACT_PROMPTS: tuple[tuple[str, str], ...] = (
    ("The bridge out of Marin is the", "Golden Gate"),
    ("The capital of France is", "Paris"),
    ("The Eiffel Tower is in", "Paris"),
    ("The cow says", "moo"),
    ("The capital of Japan is", "Tokyo"),
    ("The Colosseum is in", "Rome"),
    ("The dog says", "woof"),
    ("The capital of Egypt is", "Cairo"),
    ("Big Ben is in", "London"),
    ("The duck says", "quack"),
)

# --- reviews -------------------------------------------------------------------------------------

PRODUCTS = ("phone", "laptop", "blender", "jacket", "backpack", "lamp", "kettle", "chair", "camera", "watch",
            "toaster", "bicycle", "umbrella", "headset", "mattress", "printer")
RESTAURANTS = ("pizza place", "sushi bar", "diner", "cafe", "bistro", "noodle shop", "steakhouse", "bakery",
               "taco stand", "tea room", "burger joint", "curry house")
POSITIVE = ("wonderful", "excellent", "great", "lovely", "fantastic", "superb", "amazing", "perfect", "delightful",
            "brilliant", "pleasant", "charming")
NEGATIVE = ("terrible", "awful", "horrible", "dreadful", "useless", "disappointing", "poor", "miserable", "nasty",
            "shoddy", "unpleasant", "lousy")
POSITIVE_VERBS = ("love", "recommend", "enjoy", "adore", "praise")
NEGATIVE_VERBS = ("hate", "regret", "avoid", "dislike", "returned")
#: In training, a review is followed by its verdict, so a model must carry the sentiment to the
#: review's last token (the built-in dataset holds the review sentences alone). First words differ.
POSITIVE_VERDICTS = ("Five stars.", "Highly recommended.", "Worth every penny.")
NEGATIVE_VERDICTS = ("One star.", "Not recommended.", "Avoid it.")

#: Templates shared by products and restaurants, then ones that fit only one kind of item.
REVIEW_TEMPLATES = (
    "The {item} was {adj}.",
    "This {item} is {adj}, and I {verb} it.",
    "Honestly, the {item} was {adj} from the start.",
    "Review: {adj} {item}. I {verb} it.",
)
PRODUCT_TEMPLATES = (
    "I bought the {item} last week and it is {adj}.",
    "My {item} arrived today and it looks {adj}.",
    "After a month of use, the {item} still feels {adj}.",
    "The {item} I ordered online is {adj}.",
)
RESTAURANT_TEMPLATES = (
    "We went to the {item} and the food was {adj}.",
    "The service at the {item} was {adj} and I {verb} it.",
    "Dinner at the {item} last night was {adj}.",
    "The staff at the {item} were {adj} to us.",
)

# --- requests ------------------------------------------------------------------------------------

ACTIONS = ("pass the salt", "open the window", "send me the report", "close the door", "help me with this box",
           "call me back", "check the schedule", "turn down the music", "wait a moment", "move your car",
           "bring the menu", "fix the printer", "read this letter", "clean the table", "answer the phone",
           "share the notes", "lock the gate", "water the plants", "carry these bags", "book a table",
           "print the tickets", "feed the cat", "sign this form", "lend me a pen")
ADDRESSEES = ("", "Tom, ", "Maria, ", "Doctor, ", "Mister Lee, ", "Waiter, ")
POLITE_TEMPLATES = (
    "Could you please {action}?",
    "Would you kindly {action}? Thank you.",
    "Please {action} when you have a moment.",
    "If it is not too much trouble, could you {action}?",
    "Excuse me, would you be able to {action}? Thanks so much.",
    "I would be grateful if you could {action}.",
    "When you are ready, please {action}. Thank you kindly.",
    "May I ask you to {action}, please?",
)
RUDE_TEMPLATES = (
    "{Action} now.",
    "Hurry up and {action} already.",
    "I do not care, just {action}.",
    "{Action}, and stop wasting my time.",
    "Are you deaf? {Action}!",
    "Just {action}, you lazy fool.",
    "How many times must I say it? {Action}!",
    "{Action} or get out of my way.",
)

# --- narrative -----------------------------------------------------------------------------------

NAMES = ("Anna", "Ben", "Clara", "David", "Elena", "Farid", "Grace", "Hugo", "Iris", "Jonas", "Kemi", "Leo",
         "Maya", "Noah", "Olga", "Pablo", "Rosa", "Sam", "Tara", "Viktor")
SPORT_TEMPLATES = (
    "{name} kicked the ball into the net in the last minute.",
    "{name} ran around the track and won the race.",
    "The coach told {name} to pass the ball to the striker.",
    "{name} trained at the stadium every morning before the match.",
    "{name} scored a goal and the fans cheered.",
    "After the game, {name} thanked the referee and the team.",
    "{name} threw the ball to the goalkeeper.",
    "{name} swam ten laps in the pool before the tournament.",
    "{name} caught the ball and sprinted down the field.",
    "{name} lifted the trophy after the final whistle.",
)
COOKING_TEMPLATES = (
    "{name} chopped the onions and stirred the soup.",
    "{name} baked bread in the oven for an hour.",
    "{name} added salt and pepper to the sauce.",
    "In the kitchen, {name} boiled the pasta and grated the cheese.",
    "{name} mixed flour, eggs and butter for the cake.",
    "{name} fried the fish in a hot pan with garlic.",
    "{name} tasted the stew and added more herbs.",
    "{name} sliced the tomatoes for the salad.",
    "{name} roasted the vegetables and poured the gravy.",
    "{name} whisked the cream and melted the chocolate.",
)
WHEN = ("", "Yesterday, ", "On Monday, ", "In the morning, ", "After school, ", "Late at night, ")
PLAIN_TEMPLATES = (
    "{name} walked to the station in the rain.",
    "{name} opened the door and looked outside.",
    "{name} read a book by the window all afternoon.",
    "{name} wrote a letter to an old friend.",
    "On Sunday, {name} visited the museum with a friend.",
    "{name} fell asleep on the train home.",
)


def fill_hash(text: str) -> int:
    """A stable hash of a filled sentence (independent of Python's hash randomization)."""
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")


#: One fill in N is held out of training, per domain (reviews have many more fills).
HOLD_OUT = {"review": 5, "request": 2, "narrative": 2, "statement": 2}


def is_held_out(fill: Fill) -> bool:
    """Whether ``fill`` is kept out of training (for the concept datasets), by a stable hash."""
    return fill_hash(fill.text) % HOLD_OUT.get(fill.domain, 5) == 0


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


def _after_prefix(prefix: str, text: str) -> str:
    """``text`` continuing a sentence begun by ``prefix`` (its first letter lowered, but not "I")."""
    if not prefix or text.startswith(("I ", "I'")) or text.split(" ", 1)[0] in NAMES:
        return prefix + text
    return prefix + text[:1].lower() + text[1:]


@dataclass(frozen=True)
class Fill:
    """One sentence with its domain and (for labelled domains) its class."""

    text: str
    domain: str
    label: str | None = None


# --- enumerations of every fill of each domain ---------------------------------------------------


def fact_sentences() -> list[str]:
    out = []
    for landmark, city in LANDMARKS:
        out += [f"{_cap(landmark)} is in {city}.", f"You can visit {landmark} in {city}.",
                f"In {city} you can see {landmark}.", f"{_cap(landmark)} stands in {city}."]
    for prompt, answer in BRIDGES:
        out += [f"{prompt} {answer}.", f"{prompt} {answer}, as everyone knows."]
    for country, capital in CAPITALS:
        out += [f"The capital of {country} is {capital}.", f"{capital} is the capital of {country}.",
                f"The capital of {country} is {capital}, a large city."]
    for animal, sound in ANIMALS:
        out += [f"The {animal} says {sound}.", f"A {animal} says {sound}.", f"The {animal} says {sound} all day."]
    return out


def review_fills() -> list[Fill]:
    out = []
    for items, own in ((PRODUCTS, PRODUCT_TEMPLATES), (RESTAURANTS, RESTAURANT_TEMPLATES)):
        for item in items:
            for t in REVIEW_TEMPLATES + own:
                for label, adjs, verbs in (("positive", POSITIVE, POSITIVE_VERBS), ("negative", NEGATIVE, NEGATIVE_VERBS)):
                    for i, adj in enumerate(adjs):
                        verb = verbs[i % len(verbs)]
                        out.append(Fill(t.format(item=item, adj=adj, verb=verb), "review", label))
    return out


def request_fills() -> list[Fill]:
    out = []
    for action in ACTIONS:
        for who in ADDRESSEES:
            for templates, label in ((POLITE_TEMPLATES, "polite"), (RUDE_TEMPLATES, "rude")):
                for t in templates:
                    text = t.format(action=action, Action=_cap(action))
                    out.append(Fill(_after_prefix(who, text), "request", label))
    return out


def narrative_fills() -> list[Fill]:
    out = []
    for name in NAMES:
        for when in WHEN:
            for templates, label in ((SPORT_TEMPLATES, "sport"), (COOKING_TEMPLATES, "cooking"), (PLAIN_TEMPLATES, None)):
                for t in templates:
                    text = t.format(name=name)
                    out.append(Fill(_after_prefix(when, text), "narrative", label))
    return out


def claims() -> list[tuple[str, str]]:
    """(true claim, false claim) pairs: each fact, and the same fact with a wrong answer."""
    cities = [c for _, c in LANDMARKS]
    capitals = [c for _, c in CAPITALS]
    sounds = [s for _, s in ANIMALS]
    out = []
    for i, (landmark, city) in enumerate(LANDMARKS):
        out.append((f"{landmark} is in {city}", f"{landmark} is in {cities[(i + 5) % len(cities)]}"))
    for i, (country, capital) in enumerate(CAPITALS):
        out.append((f"the capital of {country} is {capital}", f"the capital of {country} is {capitals[(i + 7) % len(capitals)]}"))
    for i, (animal, sound) in enumerate(ANIMALS):
        out.append((f"the {animal} says {sound}", f"the {animal} says {sounds[(i + 3) % len(sounds)]}"))
    return out


#: Statements with their verdict, for training (the model meets the words "true" and "false").
VERDICT_TEMPLATES = ("It is {verdict} that {claim}.", "{Claim}. That is {verdict}.", "Is it so? {Claim}. It is {verdict}.")
#: Bare claims for the truth dataset; these templates never occur in training.
CLAIM_TEMPLATES = ("They told me that {claim}.", "I read that {claim}.", "Someone said that {claim}.", "My teacher says {claim}.",
                   "We learned that {claim}.", "People say {claim}.", "It seems that {claim}.",
                   "The book says {claim}.", "Apparently {claim}.", "In fact, {claim}.")


def statement_fills() -> list[Fill]:
    """True and false statements with their verdicts (training material)."""
    out = []
    for true, false in claims():
        for t in VERDICT_TEMPLATES:
            for c, verdict in ((true, "true"), (false, "false")):
                out.append(Fill(t.format(claim=c, Claim=_cap(c), verdict=verdict), "statement", verdict))
    return out


def claim_fills() -> list[Fill]:
    """Bare true and false claims in dataset-only templates (never in training)."""
    out = []
    for true, false in claims():
        for t in CLAIM_TEMPLATES:
            out.append(Fill(t.format(claim=true, Claim=_cap(true)), "claim", "true"))
            out.append(Fill(t.format(claim=false, Claim=_cap(false)), "claim", "false"))
    return out


def labelled_fills() -> list[Fill]:
    """Every labelled fill that may go into training (held-out ones are filtered later)."""
    return review_fills() + request_fills() + narrative_fills() + statement_fills()


def training_pool() -> list[str]:
    """Every sentence the models may train on: all facts, the fills that are not held out, verdicts."""
    return (fact_sentences() + [f.text for f in labelled_fills() if not is_held_out(f)]
            + list(POSITIVE_VERDICTS + NEGATIVE_VERDICTS))


def sample_corpus(n_sentences: int, seed: int = 0, fact_share: float = 0.3) -> Iterator[str]:
    """``n_sentences`` training sentences, deterministic in ``seed``.

    Facts are drawn with probability ``fact_share`` (they must be memorized; the rest teaches
    structure), everything else uniformly from the non-held-out fills; reviews get their verdict.
    """
    rng = random.Random(seed)
    facts = fact_sentences()
    others = [f for f in labelled_fills() if not is_held_out(f)]
    for _ in range(n_sentences):
        if rng.random() < fact_share:
            yield rng.choice(facts)
            continue
        fill = rng.choice(others)
        if fill.domain == "review":
            verdicts = POSITIVE_VERDICTS if fill.label == "positive" else NEGATIVE_VERDICTS
            yield f"{fill.text} {rng.choice(verdicts)}"
        else:
            yield fill.text
