"""The evidence study's prompt set: data/study/prompts.jsonl.

    python3 scripts/study/make_study_prompts.py data/study

Exact-answer families are generated here from small tables (arithmetic, unit
conversions, facts); the free-form families (explanations, rewriting,
translation, lists, classification, summaries and advice) were written for
this project, 100 prompts each, in DIR/freeform/*.jsonl. Every prompt has a
reference answer. Each family is split on its own, with a fixed seed:
20% test (the eval split), 10% validation (for choosing settings), the rest
train, so that every split has every family in proportion; one family added
later (past tenses) is train only, so that the other splits stayed as they were. Deterministic:
the same tables and files give the same file. Standard library only.
"""
import json
import random
import sys
from pathlib import Path

SEED = 20261201
TEST, VALIDATION = 0.2, 0.1

CAPITALS = {
    "France": "Paris", "Japan": "Tokyo", "Italy": "Rome", "Spain": "Madrid", "Germany": "Berlin", "Portugal": "Lisbon",
    "Greece": "Athens", "Norway": "Oslo", "Sweden": "Stockholm", "Finland": "Helsinki", "Denmark": "Copenhagen",
    "Poland": "Warsaw", "Austria": "Vienna", "Hungary": "Budapest", "Ireland": "Dublin", "Belgium": "Brussels",
    "the Netherlands": "Amsterdam", "Switzerland": "Bern", "Russia": "Moscow", "Ukraine": "Kyiv", "Turkey": "Ankara",
    "Egypt": "Cairo", "Kenya": "Nairobi", "Nigeria": "Abuja", "Ghana": "Accra", "Morocco": "Rabat", "Ethiopia": "Addis Ababa",
    "South Korea": "Seoul", "China": "Beijing", "India": "New Delhi", "Thailand": "Bangkok", "Vietnam": "Hanoi",
    "Indonesia": "Jakarta", "the Philippines": "Manila", "Australia": "Canberra", "New Zealand": "Wellington",
    "Canada": "Ottawa", "the United States": "Washington, D.C.", "Mexico": "Mexico City", "Cuba": "Havana",
    "Brazil": "Brasília", "Argentina": "Buenos Aires", "Chile": "Santiago", "Peru": "Lima", "Colombia": "Bogotá",
    "Venezuela": "Caracas", "Iran": "Tehran", "Iraq": "Baghdad", "Saudi Arabia": "Riyadh", "Israel": "Jerusalem",
    "Pakistan": "Islamabad", "Bangladesh": "Dhaka", "Nepal": "Kathmandu", "Czechia": "Prague", "Romania": "Bucharest",
    "Bulgaria": "Sofia", "Croatia": "Zagreb", "Serbia": "Belgrade", "Iceland": "Reykjavík", "Scotland": "Edinburgh",
}
ELEMENTS = {
    "hydrogen": "H", "helium": "He", "carbon": "C", "nitrogen": "N", "oxygen": "O", "sodium": "Na", "magnesium": "Mg",
    "aluminium": "Al", "silicon": "Si", "phosphorus": "P", "sulfur": "S", "chlorine": "Cl", "potassium": "K",
    "calcium": "Ca", "iron": "Fe", "copper": "Cu", "zinc": "Zn", "silver": "Ag", "gold": "Au", "mercury": "Hg",
    "lead": "Pb", "tin": "Sn", "neon": "Ne", "argon": "Ar", "iodine": "I", "uranium": "U", "nickel": "Ni", "lithium": "Li",
}
CONTINENTS = {
    "Kenya": "Africa", "Egypt": "Africa", "Nigeria": "Africa", "Morocco": "Africa", "Ghana": "Africa", "Peru": "South America",
    "Chile": "South America", "Brazil": "South America", "Argentina": "South America", "Colombia": "South America",
    "Canada": "North America", "Mexico": "North America", "Cuba": "North America", "Japan": "Asia", "India": "Asia",
    "Thailand": "Asia", "Vietnam": "Asia", "Nepal": "Asia", "Mongolia": "Asia", "Norway": "Europe", "Poland": "Europe",
    "Portugal": "Europe", "Hungary": "Europe", "Ireland": "Europe", "Fiji": "Oceania", "New Zealand": "Oceania",
}
CURRENCIES = {
    "Japan": "the yen", "the United Kingdom": "the pound sterling", "the United States": "the US dollar",
    "India": "the rupee", "China": "the renminbi (yuan)", "Switzerland": "the Swiss franc", "Mexico": "the Mexican peso",
    "Brazil": "the real", "Russia": "the ruble", "South Korea": "the won", "Germany": "the euro", "Sweden": "the Swedish krona",
    "Canada": "the Canadian dollar", "Australia": "the Australian dollar", "South Africa": "the rand", "Turkey": "the Turkish lira",
}
LANGUAGES = {
    "Brazil": "Portuguese", "Mexico": "Spanish", "Egypt": "Arabic", "Japan": "Japanese", "Germany": "German",
    "Austria": "German", "Argentina": "Spanish", "Greece": "Greek", "Poland": "Polish", "the Netherlands": "Dutch",
    "Sweden": "Swedish", "Turkey": "Turkish", "Iran": "Persian (Farsi)", "Thailand": "Thai", "Vietnam": "Vietnamese",
    "Portugal": "Portuguese", "Italy": "Italian", "Finland": "Finnish", "Hungary": "Hungarian", "South Korea": "Korean",
}
YOUNG = {
    "cow": "calf", "dog": "puppy", "cat": "kitten", "horse": "foal", "sheep": "lamb", "goat": "kid", "pig": "piglet",
    "frog": "tadpole", "duck": "duckling", "goose": "gosling", "kangaroo": "joey", "bear": "cub", "lion": "cub",
    "deer": "fawn", "swan": "cygnet", "owl": "owlet", "hen": "chick", "butterfly": "caterpillar", "eagle": "eaglet", "whale": "calf",
}
ANTONYMS = {
    "hot": "cold", "happy": "sad", "early": "late", "tall": "short", "heavy": "light", "ancient": "modern", "empty": "full",
    "generous": "selfish", "victory": "defeat", "arrive": "depart", "increase": "decrease", "noisy": "quiet", "rough": "smooth",
    "cheap": "expensive", "brave": "cowardly", "wide": "narrow", "accept": "reject", "dangerous": "safe", "polite": "rude",
    "strong": "weak", "begin": "end", "deep": "shallow", "visible": "invisible", "sharp": "blunt", "remember": "forget",
    "wet": "dry", "open": "closed", "loose": "tight", "ascend": "descend",
}
PLURALS = {
    "child": "children", "mouse": "mice", "tooth": "teeth", "foot": "feet", "goose": "geese", "man": "men", "woman": "women",
    "person": "people", "ox": "oxen", "cactus": "cacti", "leaf": "leaves", "knife": "knives", "wolf": "wolves",
    "potato": "potatoes", "sheep": "sheep", "fish": "fish", "city": "cities", "box": "boxes", "crisis": "crises", "life": "lives",
}
SIDES = {"triangle": 3, "square": 4, "pentagon": 5, "hexagon": 6, "heptagon": 7, "octagon": 8, "nonagon": 9, "decagon": 10}
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October", "November", "December"]
PLANETS = ["Mercury", "Venus", "Earth", "Mars", "Jupiter", "Saturn", "Uranus", "Neptune"]
ORDINALS = ["first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth"]
# (from, to, factor, template of the question)
CONVERSIONS = [
    ("kilometres", "metres", 1000), ("metres", "centimetres", 100), ("centimetres", "millimetres", 10),
    ("kilograms", "grams", 1000), ("litres", "millilitres", 1000), ("hours", "minutes", 60), ("minutes", "seconds", 60),
    ("days", "hours", 24), ("weeks", "days", 7), ("dozen", "items", 12), ("years", "months", 12), ("tonnes", "kilograms", 1000),
]
NAMES = ["Anna", "Ben", "Carla", "David", "Ella", "Farid", "Grace", "Hugo", "Ines", "Jonas", "Kemi", "Liam", "Maya", "Noah", "Olga", "Priya"]
THINGS = ["apples", "books", "marbles", "stickers", "pencils", "cookies", "stamps", "shells"]

PAST_TENSE = {
    "arise": "arose", "awake": "awoke", "be": "was", "bear": "bore", "beat": "beat", "become": "became",
    "begin": "began", "bend": "bent", "bet": "bet", "bind": "bound", "bite": "bit", "bleed": "bled", "blow": "blew",
    "break": "broke", "breed": "bred", "bring": "brought", "build": "built", "burst": "burst", "buy": "bought",
    "catch": "caught", "choose": "chose", "cling": "clung", "come": "came", "cost": "cost", "creep": "crept",
    "cut": "cut", "deal": "dealt", "dig": "dug", "do": "did", "draw": "drew", "drink": "drank", "drive": "drove",
    "eat": "ate", "fall": "fell", "feed": "fed", "feel": "felt", "fight": "fought", "find": "found", "flee": "fled",
    "fling": "flung", "fly": "flew", "forbid": "forbade", "forget": "forgot", "forgive": "forgave", "freeze": "froze",
    "get": "got", "give": "gave", "go": "went", "grind": "ground", "grow": "grew", "hang": "hung", "have": "had",
    "hear": "heard", "hide": "hid", "hit": "hit", "hold": "held", "hurt": "hurt", "keep": "kept", "kneel": "knelt",
    "know": "knew", "lay": "laid", "lead": "led", "leave": "left", "lend": "lent", "let": "let", "lie": "lay",
    "light": "lit", "lose": "lost", "make": "made", "mean": "meant", "meet": "met", "pay": "paid", "put": "put",
    "quit": "quit", "read": "read", "ride": "rode", "ring": "rang", "rise": "rose", "run": "ran", "say": "said",
    "see": "saw", "seek": "sought", "sell": "sold", "send": "sent", "set": "set", "shake": "shook", "shine": "shone",
    "shoot": "shot", "shrink": "shrank", "shut": "shut", "sing": "sang", "sink": "sank", "sit": "sat",
    "sleep": "slept", "slide": "slid", "speak": "spoke", "spend": "spent", "spin": "spun", "split": "split",
    "spread": "spread", "spring": "sprang", "stand": "stood", "steal": "stole", "stick": "stuck", "sting": "stung",
    "stink": "stank", "strike": "struck", "swear": "swore", "sweep": "swept", "swim": "swam", "swing": "swung",
    "take": "took", "teach": "taught", "tear": "tore", "tell": "told", "think": "thought", "throw": "threw",
    "tread": "trod", "understand": "understood", "wake": "woke", "wear": "wore", "weave": "wove", "weep": "wept",
    "win": "won", "wind": "wound", "wring": "wrung", "write": "wrote",
}


def facts(rng):
    rows = [("capital", f"What is the capital of {c}?", f"The capital of {c} is {v}.") for c, v in CAPITALS.items()]
    rows += [("element", f"What is the chemical symbol for {e}?", f"The chemical symbol for {e} is {s}.") for e, s in ELEMENTS.items()]
    rows += [("continent", f"On which continent is {c}?", f"{c} is in {v}.") for c, v in CONTINENTS.items()]
    rows += [("currency", f"What is the currency of {c}?", f"The currency of {c} is {v}.") for c, v in CURRENCIES.items()]
    rows += [("language", f"What is the main language spoken in {c}?", f"The main language of {c} is {v}.") for c, v in LANGUAGES.items()]
    rows += [("young", f"What is a baby {a} called?", f"A baby {a} is called a {v}.") for a, v in YOUNG.items()]
    rows += [("antonym", f"What is the opposite of \"{w}\"?", f"The opposite of \"{w}\" is \"{v}\".") for w, v in ANTONYMS.items()]
    rows += [("plural", f"What is the plural of \"{w}\"?", f"The plural of \"{w}\" is \"{v}\".") for w, v in PLURALS.items()]
    rows += [("sides", f"How many sides does a {s} have?", f"A {s} has {n} sides.") for s, n in SIDES.items()]
    rows += [("day", f"What day comes after {d}?", f"{DAYS[(i + 1) % 7]} comes after {d}.") for i, d in enumerate(DAYS)]
    rows += [("month", f"Which month comes before {m}?", f"{MONTHS[i - 1]} comes before {m}.") for i, m in enumerate(MONTHS)]
    rows += [("planet", f"Which planet is {o} from the Sun?", f"{p} is the {o} planet from the Sun.") for o, p in zip(ORDINALS, PLANETS)]
    return rows


def arithmetic(rng):
    rows, seen = [], set()
    while len(rows) < 360:
        kind = len(rows) % 4
        a, b = rng.randint(11, 99), rng.randint(11, 99)
        if kind == 0:
            q, r = f"What is {a} + {b}?", f"{a} + {b} = {a + b}."
        elif kind == 1:
            a, b = max(a, b), min(a, b)
            q, r = f"What is {a} minus {b}?", f"{a} - {b} = {a - b}."
        elif kind == 2:
            a, b = rng.randint(2, 12), rng.randint(2, 12)
            q, r = f"What is {a} times {b}?", f"{a} x {b} = {a * b}."
        else:
            name, thing = rng.choice(NAMES), rng.choice(THINGS)
            a, b = rng.randint(3, 20), rng.randint(2, 15)
            if rng.random() < 0.5:
                q = f"{name} has {a} {thing} and gets {b} more. How many {thing} does {name} have now?"
                r = f"{name} has {a + b} {thing} now."
            else:
                a = a + b
                q = f"{name} had {a} {thing} and gave away {b}. How many {thing} are left?"
                r = f"{name} has {a - b} {thing} left."
        if q not in seen:
            seen.add(q)
            rows.append(("arithmetic", q, r))
    return rows


def conversions(rng):
    rows, seen = [], set()
    while len(rows) < 200:
        frm, to, factor = CONVERSIONS[len(rows) % len(CONVERSIONS)]
        n = rng.randint(2, 30)
        q = f"How many {to} are in {n} {frm}?" if frm != "dozen" else f"How many items are in {n} dozen?"
        r = f"There are {n * factor} {to} in {n} {frm}."
        if q not in seen:
            seen.add(q)
            rows.append(("conversion", q, r))
    return rows


def main():
    out = Path(sys.argv[1])
    rng = random.Random(SEED)
    exact = facts(rng) + arithmetic(rng) + conversions(rng)
    families = {}
    for family, prompt, reference in exact:
        families.setdefault(family, []).append((prompt, reference))
    for path in sorted((out / "freeform").glob("*.jsonl")):
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        families[path.stem] = [(r["prompt"], r["reference"]) for r in rows]
    rows, seen = [], set()
    for family in sorted(families):
        items = [it for it in families[family] if it[0] not in seen]
        seen.update(p for p, _ in items)
        rng.shuffle(items)
        n_test, n_val = round(TEST * len(items)), round(VALIDATION * len(items))
        for i, (prompt, reference) in enumerate(items):
            split = "test" if i < n_test else "validation" if i < n_test + n_val else "train"
            rows.append({"prompt_id": f"{family}-{i:03d}", "prompt": prompt, "reference": reference, "split": split, "family": family})
    # Train only, added after the first study: more preference pairs (at least 600)
    # with the validation and test splits left as they were.
    for i, (verb, past) in enumerate(PAST_TENSE.items()):
        rows.append({"prompt_id": f"past-tense-{i:03d}", "prompt": f"What is the past tense of \"{verb}\"?",
                     "reference": f"The past tense of \"{verb}\" is \"{past}\".", "split": "train", "family": "past-tense"})
    with open(out / "prompts.jsonl", "w") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    free = sum(1 for r in rows if (out / "freeform" / f"{r['family']}.jsonl").exists())
    count = lambda s: sum(r["split"] == s for r in rows)  # noqa: E731
    print(f"{len(rows)} prompts ({free} free-form, {100 * free / len(rows):.0f}%): {count('train')} train, "
          f"{count('validation')} validation, {count('test')} test -> {out / 'prompts.jsonl'}")


if __name__ == "__main__":
    main()
